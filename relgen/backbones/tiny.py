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

TINY_VERSION = "2"  # bump when the builders change, so cached folders are rebuilt


def build_tiny_components(family: str, prediction_type: str, seed: int, tokenizer_dir: Path) -> dict:
    """Seeded random modules of ``family`` ("sd15", "sd21" or "sdxl") structure."""
    from diffusers import (AutoencoderKL, DDPMScheduler, EulerDiscreteScheduler, PNDMScheduler,
                           UNet2DConditionModel)
    from transformers import (CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection,
                              CLIPTokenizer)

    from relgen.data._tiny_tokenizer import DEFAULT_WORDS, write_tiny_clip_tokenizer

    # whole words of the synthetic datasets and common prompts are single tokens
    write_tiny_clip_tokenizer(tokenizer_dir, DEFAULT_WORDS)
    tok = CLIPTokenizer.from_pretrained(tokenizer_dir)
    tok_bang = CLIPTokenizer.from_pretrained(tokenizer_dir, pad_token="!")

    def text_config(act: str) -> CLIPTextConfig:
        return CLIPTextConfig(vocab_size=len(tok) + 8, hidden_size=32, intermediate_size=37,
                              num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
                              projection_dim=32, hidden_act=act, bos_token_id=tok.bos_token_id,
                              eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)

    torch.manual_seed(seed)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                        block_out_channels=[8, 16, 32, 32], layers_per_block=1, norm_num_groups=8,
                        sample_size=64, scaling_factor=0.13025 if family == "sdxl" else 0.18215,
                        force_upcast=family == "sdxl")
    sched_kw = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                    steps_offset=1, prediction_type=prediction_type)
    comps: dict = {"vae": vae}
    if family in ("sd15", "sd21"):
        sd21 = family == "sd21"
        comps["tokenizer"] = tok_bang if sd21 else tok
        comps["text_encoder"] = CLIPTextModel(text_config("gelu" if sd21 else "quick_gelu"))
        comps["unet"] = UNet2DConditionModel(
            sample_size=8, layers_per_block=1, block_out_channels=(32, 64),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
            attention_head_dim=[2, 4] if sd21 else 8, use_linear_projection=sd21, norm_num_groups=8)
        comps["scheduler"] = PNDMScheduler(skip_prk_steps=True, **sched_kw)
    elif family == "sdxl":
        comps["tokenizer"] = tok
        comps["tokenizer_2"] = tok_bang
        comps["text_encoder"] = CLIPTextModel(text_config("quick_gelu"))
        comps["text_encoder_2"] = CLIPTextModelWithProjection(text_config("gelu"))
        comps["unet"] = UNet2DConditionModel(
            sample_size=8, layers_per_block=1, block_out_channels=(32, 64),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), transformer_layers_per_block=(1, 2),
            attention_head_dim=(2, 4), use_linear_projection=True, cross_attention_dim=64,
            addition_embed_type="text_time", addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=6 * 8 + 32, norm_num_groups=8)
        comps["scheduler"] = EulerDiscreteScheduler(timestep_spacing="leading", **sched_kw)
    else:
        raise ValueError(f"unknown tiny family {family!r}")
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
