"""The ``relworld`` micro backbone: Stable Diffusion 1.5's structure at 64 px.

A CLIP text encoder (causal transformer, quick-GELU, pad = EOS) with a CLIP-format BPE
tokenizer trained on the relation world's language, a UNet2DConditionModel with
cross-attention, an AutoencoderKL (64 px -> 8 x 16 x 16 latents) and SD 1.5's noise schedule
(scaled-linear betas 0.00085-0.012), rescaled to zero terminal SNR with v-prediction for the
shipped model (:data:`ZERO_SNR_SCHEDULER_CONFIG`). ``benchmarks/relworld/pretrain.py``
trains it on :mod:`relgen.relworld.world` and writes it with ``save_pretrained`` into
``relgen/relworld/weights/``; ``conf/backbone/relworld.yaml`` loads it from there through the
same ``from_pretrained`` path as real backbones (``pretrained: pkg://relgen.relworld/weights``).

The sizes below were chosen so that the weights stay far under 50 MB and a training step
(batch 32) takes about a second on one CPU thread.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Iterable, Optional

import torch

#: Where the trained model ships, as a ``backbone.pretrained`` URI and as package + folder.
PRETRAINED_URI = "pkg://relgen.relworld/weights"
MODEL_PACKAGE, MODEL_FOLDER = "relgen.relworld", "weights"

#: CLIP text encoder (SD 1.5's is 768 wide, 12 layers; this is a micro copy).
TEXT_CONFIG = dict(hidden_size=128, intermediate_size=512, num_hidden_layers=3, num_attention_heads=4,
                   max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=128)

#: UNet: 16 x 16 latents, cross-attention at 8 x 8, 4 x 4 and in the middle block.
UNET_CONFIG = dict(
    sample_size=16, in_channels=8, out_channels=8, layers_per_block=1,
    block_out_channels=(32, 64, 128),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    cross_attention_dim=TEXT_CONFIG["hidden_size"], attention_head_dim=32, norm_num_groups=8,
)

#: AutoencoderKL: two downsamplings (x4) to 8 x 16 x 16 latents. With 4 channels (SD's) the
#: corners of the smallest objects (about 10 px) were lost; 8 keep them.
VAE_CONFIG = dict(in_channels=3, out_channels=3, latent_channels=8,
                  down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                  block_out_channels=(16, 32, 64), layers_per_block=1, norm_num_groups=8, sample_size=64)

#: SD 1.5's scheduler config (as its scheduler/scheduler_config.json, PNDM for inference).
SCHEDULER_CONFIG = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                        beta_schedule="scaled_linear", steps_offset=1, prediction_type="epsilon",
                        skip_prk_steps=True, set_alpha_to_one=False)

#: The schedule of the refined model (Lin et al. 2024, "Common Diffusion Noise Schedules and
#: Sample Steps are Flawed", Sec. 3): SD's betas rescaled to zero terminal SNR, v-prediction,
#: and sampling that starts at the last timestep ("trailing"), with DDIM as in that paper. With
#: SD's own schedule ᾱ_T = 0.0047, so √ᾱ_T ≈ 0.07 of the image survives at the start of
#: training's noise; at 16 x 16 latents that is enough to read where objects are, and the UNet
#: learnt to take the layout from the starting noise instead of the prompt.
ZERO_SNR_SCHEDULER_CONFIG = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                 beta_schedule="scaled_linear", steps_offset=1, prediction_type="v_prediction",
                                 rescale_betas_zero_snr=True, timestep_spacing="trailing",
                                 set_alpha_to_one=False, clip_sample=False)


# --------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------


def train_bpe_merges(texts: Iterable[str], min_frequency: int = 2, vocab_size: int = 4096) -> list[tuple[str, str]]:
    """BPE merges learnt from ``texts`` with the ``tokenizers`` library, CLIP-style.

    Text is NFC-normalised and lower-cased, split into runs of letters, single digits and runs
    of other non-space characters (CLIP's pre-tokenizer), mapped to byte-level characters, and
    the last symbol of each word carries the ``</w>`` suffix — the conventions of CLIP's
    ``vocab.json`` / ``merges.txt``.

    Args:
        texts: The corpus (captions).
        min_frequency: A pair must occur this often to be merged.
        vocab_size: Upper bound on base symbols + merges (the corpus usually stops it first).

    Returns:
        The merges in rank order.
    """
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\p{L}+|\p{N}|[^\s\p{L}\p{N}]+"), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  end_of_word_suffix="</w>")
    tok.train_from_iterator(list(texts), trainer)
    merges = json.loads(tok.to_str())["model"]["merges"]
    return [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges]


def write_clip_tokenizer(directory: str | Path, merges: list[tuple[str, str]]):
    """Write a CLIP tokenizer (``vocab.json``, ``merges.txt``, configs) and load it back.

    The vocabulary is CLIP's layout: the 256 byte-level symbols, the same with ``</w>``, one
    token per merge in merge order, then ``<|startoftext|>`` and ``<|endoftext|>``. Padding is
    ``<|endoftext|>`` as SD 1.5; the length is 77.

    Args:
        directory: Output folder.
        merges: Merges in rank order (:func:`train_bpe_merges`).

    Returns:
        The ``transformers.CLIPTokenizer`` loaded from ``directory``.
    """
    from transformers import CLIPTokenizer

    from relgen.data._tiny_tokenizer import BOS_TOKEN, EOS_TOKEN, bytes_to_unicode

    base = list(bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for token in base + [c + "</w>" for c in base] + [a + b for a, b in merges] + [BOS_TOKEN, EOS_TOKEN]:
        vocab.setdefault(token, len(vocab))
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges),
                                          encoding="utf-8")
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "bos_token": BOS_TOKEN,
              "eos_token": EOS_TOKEN, "unk_token": EOS_TOKEN, "pad_token": EOS_TOKEN, "do_lower_case": True}
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return CLIPTokenizer.from_pretrained(directory)


# --------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------


def build_text_encoder(tokenizer, seed: int = 0):
    """A randomly initialised CLIPTextModel sized for ``tokenizer``."""
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    config = CLIPTextConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                            **TEXT_CONFIG)
    return CLIPTextModel(config)


def build_unet(seed: int = 0):
    """A randomly initialised UNet2DConditionModel of :data:`UNET_CONFIG`."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(**UNET_CONFIG)


def build_vae(seed: int = 0, scaling_factor: float = 1.0):
    """A randomly initialised AutoencoderKL of :data:`VAE_CONFIG`."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(scaling_factor=scaling_factor, **VAE_CONFIG)


def save_pipeline(folder: str | Path, tokenizer_dir: str | Path, text_encoder, unet, vae,
                  zero_snr: bool = False) -> Path:
    """Write the modules and a scheduler as a diffusers folder (safetensors).

    The scheduler is SD 1.5's PNDM, or with ``zero_snr`` a DDIM scheduler with
    :data:`ZERO_SNR_SCHEDULER_CONFIG` (for a UNet trained on that schedule). The ``tokenizer/``
    sub-folder holds the CLIP-format files of ``tokenizer_dir`` (``vocab.json``, ``merges.txt``,
    ``tokenizer_config.json``) as written by :func:`write_clip_tokenizer`.
    """
    from diffusers import DDIMScheduler, PNDMScheduler, StableDiffusionPipeline
    from transformers import CLIPTokenizer

    folder, tokenizer_dir = Path(folder), Path(tokenizer_dir)
    scheduler = DDIMScheduler(**ZERO_SNR_SCHEDULER_CONFIG) if zero_snr else PNDMScheduler(**SCHEDULER_CONFIG)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder,
                                   tokenizer=CLIPTokenizer.from_pretrained(tokenizer_dir), unet=unet,
                                   scheduler=scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    # as SD 1.5's scheduler_config.json: DDIM/DDPM built from it must not clip latents to [-1, 1]
    sched_file = folder / "scheduler" / "scheduler_config.json"
    sched_file.write_text(json.dumps({**json.loads(sched_file.read_text()), "clip_sample": False}, indent=2))
    for config_file in folder.glob("*/config.json"):  # a module loaded from a folder records its path
        config = json.loads(config_file.read_text())
        if config.pop("_name_or_path", None) is not None:
            config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    shutil.rmtree(folder / "tokenizer")
    (folder / "tokenizer").mkdir()
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        shutil.copyfile(tokenizer_dir / name, folder / "tokenizer" / name)
    return folder


def shipped_model_folder() -> Path:
    """The folder :data:`PRETRAINED_URI` names (it may not exist before pretraining)."""
    from importlib.resources import files

    return Path(str(files(MODEL_PACKAGE))) / MODEL_FOLDER


def is_trained(folder: Optional[str | Path] = None) -> bool:
    """Whether a complete diffusers folder is at ``folder`` (default: the shipped one)."""
    folder = Path(folder) if folder is not None else shipped_model_folder()
    return all((folder / sub).exists() for sub in ("model_index.json", "unet", "vae", "text_encoder",
                                                    "tokenizer", "scheduler"))


def weights_size(folder: str | Path) -> int:
    """Total bytes of the ``*.safetensors`` files under ``folder``."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*.safetensors"))


__all__ = [
    "MODEL_FOLDER",
    "MODEL_PACKAGE",
    "PRETRAINED_URI",
    "SCHEDULER_CONFIG",
    "TEXT_CONFIG",
    "UNET_CONFIG",
    "VAE_CONFIG",
    "ZERO_SNR_SCHEDULER_CONFIG",
    "build_text_encoder",
    "build_unet",
    "build_vae",
    "is_trained",
    "save_pipeline",
    "shipped_model_folder",
    "train_bpe_merges",
    "weights_size",
    "write_clip_tokenizer",
]
