"""Tiny random-weight backbones with the real families' structure, built offline.

``tiny_sd15``: one quick-GELU CLIP encoder, pad = EOS, epsilon prediction.
``tiny_sd21``: one GELU CLIP encoder, pad = "!", linear-projection transformer blocks,
v-prediction (set ``prediction_type`` to build the epsilon 2.1-base variant).
``tiny_sdxl``: two encoders (the second with a projection and "!" padding), text-time
additional embeddings, Euler inference scheduler.

They are written as a diffusers folder with ``save_pretrained`` and then loaded through the
same ``from_pretrained`` code as real weights.
"""

from __future__ import annotations

from pathlib import Path

import torch

from relgen.data._tiny_tokenizer import DEFAULT_WORDS, write_tiny_clip_tokenizer

TINY_VERSION = "2"  # bump when the builders change, so cached folders are rebuilt


# Text-encoder and UNet sizes: "tiny" for tests, "full" = the published architectures
# (random weights) for speed and memory benchmarks.
_TINY_TEXT = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                  projection_dim=32)
_TEXT = {  # l: CLIP ViT-L (SD 1.5, SDXL 1st), h: OpenCLIP ViT-H (SD 2.x), g: OpenCLIP bigG (SDXL 2nd)
    ("tiny", "l"): _TINY_TEXT, ("tiny", "h"): _TINY_TEXT, ("tiny", "g"): _TINY_TEXT,
    ("full", "l"): dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                        projection_dim=768),
    ("full", "h"): dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
                        projection_dim=512),
    ("full", "g"): dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
                        projection_dim=1280),
}
_UNET = {
    ("tiny", "sd15"): dict(sample_size=8, layers_per_block=1, block_out_channels=(32, 64),
                           down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                           up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                           attention_head_dim=8, norm_num_groups=8),
    ("tiny", "sd21"): dict(sample_size=8, layers_per_block=1, block_out_channels=(32, 64),
                           down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                           up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                           attention_head_dim=[2, 4], use_linear_projection=True, norm_num_groups=8),
    ("tiny", "sdxl"): dict(sample_size=8, layers_per_block=1, block_out_channels=(32, 64),
                           down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                           up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), transformer_layers_per_block=(1, 2),
                           attention_head_dim=(2, 4), use_linear_projection=True, cross_attention_dim=64,
                           addition_embed_type="text_time", addition_time_embed_dim=8,
                           projection_class_embeddings_input_dim=6 * 8 + 32, norm_num_groups=8),
    ("full", "sd15"): dict(sample_size=64, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
                           down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                           up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                           cross_attention_dim=768, attention_head_dim=8),
    ("full", "sd21"): dict(sample_size=96, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
                           down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                           up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                           cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20),
                           use_linear_projection=True),
    ("full", "sdxl"): dict(sample_size=128, layers_per_block=2, block_out_channels=(320, 640, 1280),
                           down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                           up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                           transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20),
                           use_linear_projection=True, cross_attention_dim=2048, addition_embed_type="text_time",
                           addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816),
}


def build_tiny_components(family: str, prediction_type: str, seed: int, tokenizer_dir: Path,
                          size: str = "tiny") -> dict:
    """Seeded random modules of ``family`` ("sd15", "sd21" or "sdxl") structure.

    ``size="full"`` builds the published text-encoder, UNet and VAE architectures (random
    weights) for benchmarks.
    """
    from diffusers import AutoencoderKL, DDPMScheduler, EulerDiscreteScheduler, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    if family not in ("sd15", "sd21", "sdxl") or size not in ("tiny", "full"):
        raise ValueError(f"unknown tiny structure {family!r} / size {size!r}")
    # whole words of the synthetic datasets and common prompts are single tokens
    write_tiny_clip_tokenizer(tokenizer_dir, DEFAULT_WORDS)
    tok = CLIPTokenizer.from_pretrained(tokenizer_dir)
    tok_bang = CLIPTokenizer.from_pretrained(tokenizer_dir, pad_token="!")

    def text_config(kind: str, act: str) -> CLIPTextConfig:
        vocab = len(tok) + 8 if size == "tiny" else 49408
        return CLIPTextConfig(vocab_size=vocab, max_position_embeddings=77, hidden_act=act,
                              bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                              pad_token_id=tok.pad_token_id, **_TEXT[(size, kind)])

    torch.manual_seed(seed)
    # the published VAE is 4 blocks of (128, 256, 512, 512) channels, 2 layers each
    vae_size = dict(block_out_channels=[8, 16, 32, 32], layers_per_block=1, norm_num_groups=8) if size == "tiny" \
        else dict(block_out_channels=[128, 256, 512, 512], layers_per_block=2, norm_num_groups=32)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                        sample_size=64, scaling_factor=0.13025 if family == "sdxl" else 0.18215,
                        force_upcast=family == "sdxl", **vae_size)
    sched_kw = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                    steps_offset=1, prediction_type=prediction_type)
    comps: dict = {"vae": vae, "unet": UNet2DConditionModel(**_UNET[(size, family)])}
    if family == "sd15":
        comps["tokenizer"] = tok
        comps["text_encoder"] = CLIPTextModel(text_config("l", "quick_gelu"))
        comps["scheduler"] = PNDMScheduler(skip_prk_steps=True, **sched_kw)
    elif family == "sd21":
        comps["tokenizer"] = tok_bang
        comps["text_encoder"] = CLIPTextModel(text_config("h", "gelu"))
        comps["scheduler"] = PNDMScheduler(skip_prk_steps=True, **sched_kw)
    else:
        comps["tokenizer"] = tok
        comps["tokenizer_2"] = tok_bang
        comps["text_encoder"] = CLIPTextModel(text_config("l", "quick_gelu"))
        comps["text_encoder_2"] = CLIPTextModelWithProjection(text_config("g", "gelu"))
        comps["scheduler"] = EulerDiscreteScheduler(timestep_spacing="leading", **sched_kw)
    comps["train_scheduler"] = DDPMScheduler(clip_sample=False, **sched_kw)
    return comps


def save_tiny_backbone(folder: Path, family: str, prediction_type: str, seed: int) -> None:
    """Write a tiny backbone as a diffusers pipeline folder (the layout of real SD repos)."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    folder = Path(folder)
    comps = build_tiny_components(family, prediction_type, seed, folder / "_tokenizer_src")
    comps.pop("train_scheduler")
    if family == "sdxl":
        pipe = StableDiffusionXLPipeline(**comps)
    else:
        pipe = StableDiffusionPipeline(**comps, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
