"""Global and CLIPSelf local image tokens from a transformers CLIP vision model.

* :func:`global_tokens`: the penultimate hidden states (CLS + patch tokens), as MS-Diffusion feeds
  its resampler.
* :func:`dense_features`: CLIPSelf's dense feature map. The last transformer block runs on its
  value path only, so every patch token keeps its own content.
* :func:`local_tokens`: one token per cell of a ``grid x grid`` partition of that map, each pooled
  from its own image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _vision_tower(vision_model: nn.Module) -> nn.Module:
    """The module holding ``embeddings``/``pre_layrnorm``/``encoder``/``post_layernorm``."""
    tower = vision_model
    while not hasattr(tower, "embeddings") and hasattr(tower, "vision_model"):
        tower = tower.vision_model
    for attr in ("embeddings", "pre_layrnorm", "encoder", "post_layernorm"):
        if not hasattr(tower, attr):
            raise TypeError(f"{type(vision_model).__name__} is not a transformers CLIP vision model (no {attr})")
    return tower


def global_tokens(vision_model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """Penultimate hidden states of a CLIP vision model (MS-Diffusion's image tokens).

    Args:
        vision_model: ``CLIPVisionModel`` or ``CLIPVisionModelWithProjection``.
        pixel_values: Images at the model's native size, ``[B, 3, S, S]``.

    Returns:
        ``[B, 1 + (S/patch)**2, hidden]``, CLS first (257 tokens for ViT-*/14 at 224).
    """
    # MS-Diffusion / DreamRelation ImageEncoder: hidden_states[-2] of the HF CLIP vision model
    out = vision_model(pixel_values=pixel_values, output_hidden_states=True)
    return out.hidden_states[-2]


def dense_features(vision_model: nn.Module, pixel_values: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """CLIPSelf's dense feature map at any input size.

    All blocks but the last run normally; the last runs its value path only,
    ``x + out_proj(v_proj(LN1(x)))`` then ``x + MLP(LN2(x))``. Patch tokens then go through the
    final LayerNorm; the CLS token is dropped and no projection is applied.

    Args:
        vision_model: ``CLIPVisionModel`` or ``CLIPVisionModelWithProjection``.
        pixel_values: Images ``[B, 3, H, W]``; H and W multiples of the patch size (896 for the
            released local encoder, with bicubically interpolated position embeddings).
        normalize: L2-normalise each token (CLIPSelf does).

    Returns:
        Feature map ``[B, hidden, H/patch, W/patch]``.
    """
    tower = _vision_tower(vision_model)
    patch = tower.embeddings.patch_size
    b, _, height, width = pixel_values.shape
    if height % patch or width % patch:
        raise ValueError(f"image size {height}x{width} is not a multiple of the patch size {patch}")
    # CLIPSelf rescale_positional_embedding: bicubic, align_corners=False (same as transformers')
    x = tower.embeddings(pixel_values, interpolate_pos_encoding=True)
    x = tower.pre_layrnorm(x)
    layers = tower.encoder.layers
    for layer in layers[:-1]:
        x = layer(x, None)
    last = layers[-1]
    # CLIPSelf extract_feature_map: last block without attention mixing (value path only)
    x = x + last.self_attn.out_proj(last.self_attn.v_proj(last.layer_norm1(x)))
    x = x + last.mlp(last.layer_norm2(x))
    # CLIPSelf _extract_roi_features_v2: ln_post on patch tokens, CLS dropped; DreamRelation drops proj
    tokens = tower.post_layernorm(x[:, 1:])
    if normalize:
        tokens = F.normalize(tokens, dim=-1)
    gh, gw = height // patch, width // patch
    return tokens.view(b, gh, gw, -1).permute(0, 3, 1, 2)


def local_tokens(feature_map: torch.Tensor, grid: int = 4) -> torch.Tensor:
    """Average the feature map over each cell of a ``grid x grid`` partition, per image.

    With whole feature cells per grid cell, this equals ``roi_align(..., output 1x1, aligned=True,
    adaptive sampling)`` on the cell boxes, as CLIPSelf pools.

    Args:
        feature_map: ``[B, C, H, W]`` with H and W divisible by ``grid``.
        grid: Cells per side.

    Returns:
        ``[B, grid*grid, C]``; token ``i * grid + j`` is column ``i``, row ``j`` (x outer loop,
        y inner, as DreamRelation's ``generate_bboxes``). Each image's tokens come from that image.
    """
    _, _, height, width = feature_map.shape
    if height % grid or width % grid:
        raise ValueError(f"feature map {height}x{width} is not divisible into a {grid}x{grid} grid")
    pooled = F.adaptive_avg_pool2d(feature_map, grid)  # [B, C, row, col]
    # DreamRelation generate_bboxes enumerates x (columns) in the outer loop, y (rows) inside
    return pooled.permute(0, 3, 2, 1).flatten(1, 2)


def image_local_tokens(vision_model: nn.Module, pixel_values: torch.Tensor, grid: int = 4) -> torch.Tensor:
    """:func:`local_tokens` of :func:`dense_features`.

    Args:
        vision_model: CLIPSelf-distilled ``CLIPVisionModel(WithProjection)``.
        pixel_values: Images ``[B, 3, H, W]`` (896 x 896 for the released local encoder).
        grid: Cells per side.

    Returns:
        ``[B, grid*grid, hidden]``, unit-norm tokens averaged per cell.
    """
    return local_tokens(dense_features(vision_model, pixel_values), grid)
