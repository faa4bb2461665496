"""Load a backbone from a hub id, a local diffusers folder, a single checkpoint file, or the
tiny offline builders (which write a diffusers folder and load it through the same path)."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Optional

import torch

from relgen.backbones.base import Backbone, TextEncoderSlot, cache_root, fix_eos_token_id, torch_dtype
from relgen.config import BackboneConfig
from relgen.errors import ConfigError, RelgenError

log = logging.getLogger("relgen")


def load_backbone(cfg: BackboneConfig, cache_dir: Optional[str] = None,
                  device: Optional[torch.device] = None) -> Backbone:
    """Load the modules named by ``cfg`` and freeze them (methods unfreeze what they train)."""
    if cfg.family not in ("sd", "sdxl"):
        raise ConfigError(f"backbone.family '{cfg.family}' must be 'sd' or 'sdxl'")
    _quiet_libraries()
    if cfg.tiny:
        from relgen.backbones.tiny import TINY_VERSION

        source = str(materialize_tiny(cfg, cache_dir))
        identity = f"tiny_{cfg.tiny}-seed{cfg.tiny_seed}-{cfg.prediction_type}-v{TINY_VERSION}"
    else:
        if not cfg.pretrained:
            raise ConfigError(f"backbone {cfg.name}: set backbone.pretrained= to a hub id, a local "
                              "diffusers folder or a .safetensors file")
        source = resolve_pretrained(cfg)
        identity = f"{cfg.pretrained}@{cfg.revision or 'main'}"
        if cfg.pretrained.startswith("pkg://"):  # shipped weights change with the package
            identity = f"{cfg.pretrained}@{weights_digest(Path(source))}"
    if source.endswith((".safetensors", ".ckpt")):
        parts = _load_single_file(cfg, source)
    else:
        parts = _load_folder(cfg, source)

    return assemble_backbone(cfg, parts, identity, cache_dir, device)


def resolve_pretrained(cfg: BackboneConfig) -> str:
    """``backbone.pretrained`` as a hub id or path; ``pkg://<package>/<folder>`` names a folder
    inside an installed Python package (found with importlib.resources)."""
    source = cfg.pretrained
    if not source.startswith("pkg://"):
        return source
    package, _, sub = source[len("pkg://"):].partition("/")
    from importlib.resources import files

    try:
        folder = Path(str(files(package))).joinpath(*[p for p in sub.split("/") if p])
    except (ModuleNotFoundError, TypeError, ValueError) as exc:
        raise ConfigError(f"backbone {cfg.name}: backbone.pretrained '{source}' names package '{package}', "
                          "which is not installed; use pkg://<package>/<folder>") from exc
    if not (folder / "model_index.json").is_file():
        raise RelgenError(f"backbone {cfg.name}: '{source}' resolves to {folder}, which holds no diffusers "
                          "folder (model_index.json); the weights are not built yet (for relworld: python "
                          "benchmarks/relworld/pretrain.py) or set backbone.pretrained= to a diffusers folder")
    return str(folder)


def weights_digest(folder: Path) -> str:
    """Short content hash of a folder's weights and configs (keys caches of shipped weights)."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix in (".safetensors", ".json", ".txt"):
            digest.update(str(path.relative_to(folder)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def assemble_backbone(cfg: BackboneConfig, parts: dict, identity: str, cache_dir: Optional[str] = None,
                      device: Optional[torch.device] = None) -> Backbone:
    """A frozen :class:`Backbone` from loaded modules (tokenizers, text_encoders, unet, vae, ...)."""
    dtype, vae_dtype = torch_dtype(cfg.dtype), torch_dtype(cfg.vae_dtype)
    keys = ["text_encoder"] if cfg.family == "sd" else ["clip_l", "clip_g"]
    slots = [TextEncoderSlot(tok, _cast(enc, dtype), key)
             for tok, enc, key in zip(parts["tokenizers"], parts["text_encoders"], keys)]
    for slot in slots:
        fix_eos_token_id(slot.encoder, slot.tokenizer)
    backbone = Backbone(cfg=cfg, slots=slots, unet=_cast(parts["unet"], dtype), vae=_cast(parts["vae"], vae_dtype),
                        noise_scheduler=parts["noise_scheduler"], scheduler_config=parts["scheduler_config"],
                        identity=identity, cache_dir=cache_dir)
    if backbone.prediction_type != cfg.prediction_type:
        raise ConfigError(f"backbone {cfg.name}: '{identity}' predicts '{backbone.prediction_type}' but "
                          f"backbone.prediction_type is '{cfg.prediction_type}'; pick the matching backbone "
                          "(sd21 is v_prediction at 768 px, sd21_base is epsilon at 512 px)")
    backbone.freeze()
    if device is not None:
        backbone.to(device)
    return backbone


def build_random_backbone(cfg: BackboneConfig, size: str = "full", cache_dir: Optional[str] = None,
                          device: Optional[torch.device] = None) -> Backbone:
    """Random weights of the published architecture of ``cfg.tiny`` in memory (benchmarks)."""
    import tempfile

    from relgen.backbones.tiny import build_tiny_components

    with tempfile.TemporaryDirectory() as tmp:
        comps = build_tiny_components(cfg.tiny, cfg.prediction_type, cfg.tiny_seed, Path(tmp), size=size)
    tokenizers = [comps["tokenizer"]] + ([comps["tokenizer_2"]] if "tokenizer_2" in comps else [])
    encoders = [comps["text_encoder"]] + ([comps["text_encoder_2"]] if "text_encoder_2" in comps else [])
    parts = dict(tokenizers=tokenizers, text_encoders=encoders, unet=comps["unet"], vae=comps["vae"],
                 noise_scheduler=comps["train_scheduler"], scheduler_config=dict(comps["scheduler"].config))
    return assemble_backbone(cfg, parts, f"random-{size}-{cfg.tiny}-seed{cfg.tiny_seed}", cache_dir, device)


def materialize_tiny(cfg: BackboneConfig, cache_dir: Optional[str] = None) -> Path:
    """Build the tiny backbone once per (structure, seed, prediction type) in the cache folder."""
    from relgen.backbones.tiny import TINY_VERSION, save_tiny_backbone

    folder = cache_root(cache_dir) / "tiny" / f"{cfg.tiny}-seed{cfg.tiny_seed}-{cfg.prediction_type}-v{TINY_VERSION}"
    if (folder / "model_index.json").exists():
        return folder
    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    save_tiny_backbone(tmp, cfg.tiny, cfg.prediction_type, cfg.tiny_seed)
    try:
        os.replace(tmp, folder)  # atomic: another process may have finished first
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _missing_weights(cfg: BackboneConfig, source: str, exc: Exception) -> RelgenError:
    return RelgenError(
        f"backbone {cfg.name}: could not load '{source}' (looked for a local folder or file of that "
        f"name, then the Hugging Face cache; {type(exc).__name__}); download the weights where there "
        "is network access, or set backbone.pretrained=/path/to/diffusers-folder or /path/to/model.safetensors")


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _unreadable(cfg: BackboneConfig, subfolder: Path, what: str, exc: Exception) -> RelgenError:
    """One line naming the file of a local diffusers folder that could not be read."""
    named = getattr(exc, "filename", None)
    files = sorted(p for p in subfolder.glob("*") if p.suffix in (".safetensors", ".bin", ".json", ".txt"))
    weights = [p for p in files if p.suffix in (".safetensors", ".bin")]
    if named:
        path = Path(named)
    elif not subfolder.is_dir():
        return RelgenError(f"backbone {cfg.name}: {subfolder} is missing (the {what} of the diffusers folder); "
                           "point backbone.pretrained at a complete save_pretrained folder")
    elif len(weights) == 1:
        path = weights[0]
    else:
        path = subfolder
    return RelgenError(f"backbone {cfg.name}: {path}: cannot read the {what} ({_first_line(exc)}); the file is "
                       "truncated, damaged or unreadable: copy it again, or point backbone.pretrained at a "
                       "good diffusers folder")


def _load_folder(cfg: BackboneConfig, source: str) -> dict:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    local = Path(source).expanduser()
    if local.exists() and not (local / "model_index.json").exists():
        raise RelgenError(f"backbone {cfg.name}: '{source}' is not a diffusers folder (no model_index.json); "
                          "point backbone.pretrained at the folder that save_pretrained wrote")
    src = str(local) if local.exists() else source
    kw = dict(revision=cfg.revision) if not local.exists() and cfg.revision else {}
    folder = local if local.exists() else None

    def part(subfolder: str, what: str, load):
        try:
            return load(src, subfolder=subfolder, **kw)
        except Exception as exc:  # noqa: BLE001 - safetensors, torch and the hub each raise their own types
            if folder is not None:  # a local folder: name the file that could not be read
                raise _unreadable(cfg, folder / subfolder, what, exc) from exc
            if isinstance(exc, (OSError, ValueError)):
                raise _missing_weights(cfg, source, exc) from exc
            raise

    variant = cfg.variant or (_only_variant(folder) if folder is not None else None)
    if variant and not cfg.variant:
        log.info("relgen: %s holds only '%s' weight files; loading variant=%s", source, variant, variant)
    dtype, vae_dtype = torch_dtype(cfg.dtype), torch_dtype(cfg.vae_dtype)
    weights = dict(variant=variant) if variant else {}

    def model(load, **dt):  # transformers takes dtype=, diffusers torch_dtype=
        return lambda *a, **k: load(*a, **k, **weights, **dt)

    tokenizers = [part("tokenizer", "tokenizer", CLIPTokenizer.from_pretrained)]
    encoders = [part("text_encoder", "text encoder", model(CLIPTextModel.from_pretrained, dtype=dtype))]
    if cfg.family == "sdxl":
        tokenizers.append(part("tokenizer_2", "second tokenizer", CLIPTokenizer.from_pretrained))
        encoders.append(part("text_encoder_2", "second text encoder",
                             model(CLIPTextModelWithProjection.from_pretrained, dtype=dtype)))
    unet = part("unet", "UNet", model(UNet2DConditionModel.from_pretrained, torch_dtype=dtype))
    vae = part("vae", "VAE", model(AutoencoderKL.from_pretrained, torch_dtype=vae_dtype))
    scheduler_config = dict(part("scheduler", "scheduler config", DDPMScheduler.load_config))
    return dict(tokenizers=tokenizers, text_encoders=encoders, unet=unet, vae=vae,
                noise_scheduler=_training_scheduler(scheduler_config), scheduler_config=scheduler_config)


def _only_variant(folder: Path) -> Optional[str]:
    """The variant (``fp16``, ...) of a local folder whose UNet has only variant weight files
    (``diffusion_pytorch_model.fp16.safetensors``), else ``None``."""
    unet = folder / "unet"
    plain = [unet / f"diffusion_pytorch_model.{ext}" for ext in ("safetensors", "bin", "safetensors.index.json")]
    plain = [p for p in plain if p.is_file()]
    if plain or not unet.is_dir():
        return None
    names = {p.name.split(".")[1] for p in unet.glob("diffusion_pytorch_model.*.safetensors")}
    names |= {p.name.split(".")[1] for p in unet.glob("diffusion_pytorch_model.*.bin")}
    return names.pop() if len(names) == 1 else None


def _load_single_file(cfg: BackboneConfig, source: str) -> dict:
    """An original-layout checkpoint through diffusers' ``from_single_file``, offline.

    The architecture is detected from the file's keys and checked against ``backbone=``; the
    component configs and CLIP tokenizers come from the published ones shipped with relgen
    (``backbone.single_file_config`` may name a local diffusers folder to use instead).
    """
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    from relgen.backbones import single_file

    path = Path(source).expanduser()
    if not path.is_file():
        raise RelgenError(f"backbone {cfg.name}: single-file checkpoint '{source}' does not exist; "
                          "fix backbone.pretrained")
    info = single_file.detect(path)
    prediction = single_file.check_backbone(cfg, info, path)
    if cfg.single_file_config:
        local = Path(cfg.single_file_config).expanduser()
        folder, components = (local if local.is_dir() else cfg.single_file_config), {}  # a folder or a hub id
        what = f"backbone.single_file_config={cfg.single_file_config}"
    else:
        folder = single_file.config_folder(info.architecture, prediction)
        components = single_file.shipped_tokenizers(folder)
        what = f"the published {folder.name} configs shipped with relgen"
    log.info("relgen: %s is an %s; prediction type %s (%s); configs: %s", path.name,
             f"{single_file.ARCH_NAMES[info.architecture]} checkpoint ({info.architecture_evidence})",
             prediction, info.prediction_evidence if info.prediction_type else f"backbone={cfg.name}'s; "
             + info.prediction_evidence, what)
    cls = StableDiffusionXLPipeline if info.architecture == "sdxl" else StableDiffusionPipeline
    extra = {} if info.architecture == "sdxl" else dict(safety_checker=None, feature_extractor=None,
                                                         requires_safety_checker=False)
    dtype, vae_dtype = torch_dtype(cfg.dtype), torch_dtype(cfg.vae_dtype)
    try:
        if vae_dtype != dtype:  # read the VAE at its own precision (SDXL's stays float32)
            from diffusers import AutoencoderKL

            components["vae"] = AutoencoderKL.from_single_file(str(path), config=str(folder), subfolder="vae",
                                                               local_files_only=True, torch_dtype=vae_dtype)
        pipe = cls.from_single_file(str(path), config=str(folder), local_files_only=True,
                                    torch_dtype=dtype, **components, **extra)
    except Exception as exc:  # noqa: BLE001 - diffusers, safetensors and torch each raise their own types
        raise RelgenError(f"backbone {cfg.name}: could not read '{source}' with the configs of {what} "
                          f"({_first_line(exc)}); if the file is a fine-tune with another architecture, set "
                          "backbone.single_file_config= to a local diffusers folder of that model") from exc
    tokenizers = [pipe.tokenizer] + ([pipe.tokenizer_2] if cfg.family == "sdxl" else [])
    encoders = [pipe.text_encoder] + ([pipe.text_encoder_2] if cfg.family == "sdxl" else [])
    scheduler_config = dict(pipe.scheduler.config)
    scheduler_config["prediction_type"] = prediction  # the file's, else the preset's (logged above)
    return dict(tokenizers=tokenizers, text_encoders=encoders, unet=pipe.unet, vae=pipe.vae,
                noise_scheduler=_training_scheduler(scheduler_config), scheduler_config=scheduler_config)


def _training_scheduler(scheduler_config: dict):
    """DDPM with the checkpoint's betas and prediction type (as diffusers' training scripts)."""
    from diffusers import DDPMScheduler

    keep = {k: v for k, v in scheduler_config.items() if not k.startswith("_")}
    sched = DDPMScheduler.from_config(keep)
    return sched


def _cast(module, dtype: torch.dtype):
    return module if module.dtype == dtype else module.to(dtype)


def _quiet_libraries() -> None:
    """No per-file progress bars or informational logs from diffusers/transformers."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
