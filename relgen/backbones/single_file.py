"""Single original-layout checkpoints (``.safetensors``, ``.ckpt``): what they hold, and the
configs diffusers' ``from_single_file`` needs to read them with no hub.

The architecture is read from the checkpoint's keys (the text encoders differ: SD 1.x keeps
OpenAI CLIP under ``cond_stage_model.transformer.``, SD 2.x OpenCLIP-H under
``cond_stage_model.model.``, SDXL both CLIP-L and OpenCLIP-bigG under ``conditioner.embedders.``).
SD 2.x 512-base (epsilon) and 768 (v-prediction) files have identical keys, so the prediction
type is read from what a file may record: the empty ``v_pred`` tensor that v-prediction files
from model sites carry, or the safetensors ModelSpec metadata (``modelspec.prediction_type``,
``modelspec.architecture``). Without either, the backbone preset decides, and the log says so.

The published component configs of SD 1.5, SD 2.1-base, SD 2.1 and SDXL base 1.0 ship in
``relgen/backbones/data/configs/``; the CLIP tokenizer is built from OpenAI CLIP's BPE merges file,
shipped beside them (see NOTICE).
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from relgen.data._tiny_tokenizer import bytes_to_unicode
from relgen.errors import ConfigError, RelgenError

DATA = Path(__file__).resolve().parent / "data"
CONFIGS = DATA / "configs"
#: human names of the architectures in messages
ARCH_NAMES = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL"}
#: the shipped config folder for (architecture, prediction type)
PRESETS = {("sd1", "epsilon"): "sd15", ("sd2", "epsilon"): "sd21_base", ("sd2", "v_prediction"): "sd21",
           ("sdxl", "epsilon"): "sdxl"}
_FAMILY = {"sd1": "sd", "sd2": "sd", "sdxl": "sdxl"}
_UNET_IN = "model.diffusion_model.input_blocks.0.0.weight"


@dataclass
class CheckpointInfo:
    """What a single checkpoint file is: its architecture, and its prediction type where the
    file records one (``None`` otherwise), with the evidence for each in words."""

    architecture: str
    prediction_type: Optional[str]
    architecture_evidence: str
    prediction_evidence: str

    def describe(self) -> str:
        pred = self.prediction_type or "not recorded"
        return (f"{ARCH_NAMES[self.architecture]} ({self.architecture_evidence}); prediction type {pred} "
                f"({self.prediction_evidence})")


def read_header(path: Path) -> tuple[dict, dict]:
    """``({key: shape}, metadata)`` of a checkpoint without reading its tensors' data where the
    format allows it (safetensors header; a ``.ckpt`` zip is memory-mapped, with ``weights_only``)."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}, dict(f.metadata() or {})
        import torch

        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # a legacy (non-zip) pickle cannot be memory-mapped
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - safetensors, torch and pickle each raise their own types
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            raise RelgenError(f"{path}: holds Python objects besides tensors, which relgen does not unpickle "
                              "(torch.load weights_only=True); convert it to .safetensors where you trust it") from exc
        raise RelgenError(f"{path}: cannot read the checkpoint ({type(exc).__name__}: {text}); the file is "
                          "truncated, damaged or not a .safetensors/.ckpt checkpoint") from exc
    while isinstance(state, dict) and "state_dict" in state:  # CompVis/Stability files nest the weights
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise RelgenError(f"{path}: holds a {type(state).__name__}, not a state dict of tensors")
    return {k: tuple(v.shape) for k, v in state.items() if hasattr(v, "shape")}, {}


def detect(path: Path) -> CheckpointInfo:
    """The architecture and recorded prediction type of an original-layout checkpoint."""
    shapes, metadata = read_header(path)
    keys = list(shapes)

    def has(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in keys)

    if not has("model.diffusion_model."):
        hint = ("it looks like a diffusers model file: point backbone.pretrained at the whole diffusers folder"
                if any(k.startswith(("down_blocks.", "text_model.", "encoder.down_blocks.")) for k in keys)
                else "it holds no UNet (model.diffusion_model.*): a LoRA, embedding or VAE file is not a backbone")
        raise RelgenError(f"{path}: not a Stable Diffusion checkpoint in the original layout; {hint}")
    if _UNET_IN in shapes and len(shapes[_UNET_IN]) == 4 and shapes[_UNET_IN][1] != 4:
        raise RelgenError(f"{path}: the UNet takes {shapes[_UNET_IN][1]} input channels (an inpainting or "
                          "image-conditioned model); relgen trains text-to-image checkpoints with 4")
    if has("conditioner.embedders.1.model.") and has("conditioner.embedders.0.transformer."):
        arch, why = "sdxl", "CLIP-L and OpenCLIP-bigG under conditioner.embedders"
    elif has("conditioner.embedders.0.model."):
        raise RelgenError(f"{path}: an SDXL refiner checkpoint (one OpenCLIP encoder under "
                          "conditioner.embedders.0); relgen trains on base models: use the SDXL base checkpoint")
    elif has("cond_stage_model.model."):
        arch, why = "sd2", "OpenCLIP-H under cond_stage_model.model"
    elif has("cond_stage_model.transformer."):
        arch, why = "sd1", "OpenAI CLIP under cond_stage_model.transformer"
    else:
        raise RelgenError(f"{path}: has a UNet but no text encoder this version reads (cond_stage_model.* or "
                          "conditioner.embedders.*); use a full SD 1.x, 2.x or SDXL checkpoint")
    pred, pred_why = _recorded_prediction(shapes, metadata, arch)
    return CheckpointInfo(arch, pred, why, pred_why)


def _recorded_prediction(shapes: dict, metadata: dict, arch: str) -> tuple[Optional[str], str]:
    if "v_pred" in shapes:
        return "v_prediction", "the file's v_pred marker"
    value = str(metadata.get("modelspec.prediction_type", "")).strip().lower()
    if value in ("v", "v_prediction", "v-prediction"):
        return "v_prediction", "modelspec.prediction_type in the file's metadata"
    if value in ("epsilon", "eps"):
        return "epsilon", "modelspec.prediction_type in the file's metadata"
    arch = str(metadata.get("modelspec.architecture", "")).lower()
    if arch.endswith("-v") or "768-v" in arch:
        return "v_prediction", f"modelspec.architecture '{arch}' in the file's metadata"
    if arch == "sd2":
        return None, "the file does not record it: SD 2.x 512-base and 768-v files have the same keys"
    return None, "the file does not record it"


def check_backbone(cfg, info: CheckpointInfo, path) -> str:
    """Refuse a file of another architecture or prediction type than ``backbone=``; return the
    prediction type the run uses (the file's, else the preset's)."""
    expected = cfg.get("architecture") if hasattr(cfg, "get") else getattr(cfg, "architecture", None)
    if expected and expected != info.architecture or _FAMILY[info.architecture] != cfg.family:
        choices = {"sd1": "sd15", "sd2": "sd21_base (512, epsilon) or sd21 (768, v-prediction)", "sdxl": "sdxl"}
        raise ConfigError(f"backbone {cfg.name}: {path} is an {ARCH_NAMES[info.architecture]} checkpoint "
                          f"({info.architecture_evidence}), not {ARCH_NAMES.get(expected, cfg.family)}; "
                          f"use backbone={choices[info.architecture]}")
    if info.prediction_type and info.prediction_type != cfg.prediction_type:
        if info.architecture == "sd2":
            fix = ("use backbone=sd21 (768, v-prediction)" if info.prediction_type == "v_prediction"
                   else "use backbone=sd21_base (512, epsilon)")
        else:
            fix = f"set backbone.prediction_type={info.prediction_type}"
        raise ConfigError(f"backbone {cfg.name}: {path} records prediction type {info.prediction_type} "
                          f"({info.prediction_evidence}) but backbone.prediction_type is '{cfg.prediction_type}'; "
                          + fix)
    return info.prediction_type or cfg.prediction_type


def config_folder(architecture: str, prediction_type: str) -> Path:
    """The shipped config folder for a checkpoint of ``architecture`` (SDXL v-prediction files
    use the base configs; the run's scheduler then takes the file's prediction type)."""
    name = PRESETS.get((architecture, prediction_type)) or PRESETS[(architecture, "epsilon")]
    return CONFIGS / name


def clip_tokenizer(pad_token: str = "<|endoftext|>"):
    """OpenAI CLIP's BPE tokenizer (49,408 tokens), built from its merges file as CLIP's
    ``simple_tokenizer.py`` builds its vocabulary: the 256 byte symbols, the same with ``</w>``,
    one token per merge of the first 48,894 merges, then ``<|startoftext|>``, ``<|endoftext|>``."""
    from transformers import CLIPTokenizer

    with gzip.open(DATA / "clip_bpe_simple_vocab_16e6.txt.gz", "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = [tuple(line.split()) for line in lines[1:49152 - 256 - 2 + 1]]
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(vocab)}, merges=merges, model_max_length=77,
                         bos_token="<|startoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>",
                         pad_token=pad_token)


def shipped_tokenizers(folder: Path) -> dict:
    """``tokenizer`` (and ``tokenizer_2``) for ``from_single_file``, with each pad token of the
    shipped ``tokenizer_config.json``."""
    out = {}
    for name in ("tokenizer", "tokenizer_2"):
        cfg = folder / name / "tokenizer_config.json"
        if cfg.is_file():
            out[name] = clip_tokenizer(json.loads(cfg.read_text())["pad_token"])
    return out
