"""RelationBooth's auxiliary losses: keypoint matching and predicate attention calibration."""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F


def keypoint_indices(keypoints: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Map normalised ``(x, y)`` keypoints to latent-grid ``(row, col)`` indices.

    Args:
        keypoints: ``[..., 2]`` with ``x``, ``y`` in ``[0, 1]``.
        height: Grid rows.
        width: Grid columns.

    Returns:
        ``(rows, cols)``, each shaped ``keypoints.shape[:-1]``, int64.
    """
    # DreamRelation train.py: int(coord * size) (truncation), [row = y, col = x]; clamped so that
    # a coordinate of exactly 1.0 stays on the grid
    cols = (keypoints[..., 0].float() * width).to(torch.int64).clamp(0, width - 1)
    rows = (keypoints[..., 1].float() * height).to(torch.int64).clamp(0, height - 1)
    return rows, cols


def keypoint_matching_loss(
    x0_pred: torch.Tensor,
    ref_latents: torch.Tensor,
    target_kps: torch.Tensor,
    ref_kps: torch.Tensor,
    timesteps: torch.Tensor,
    max_timestep: int = 333,
) -> torch.Tensor:
    """Keypoint Matching Loss between the predicted clean latent and the reference latents.

    For each sample, the predicted ``x0`` is read at every entity's target-image keypoints and
    compared (MSE) with that entity's reference-image latent read at its own keypoints. Only
    samples with ``t <= max_timestep`` count. Reduction: the per-sample MSE (mean over
    ``n * K * C`` values) times the gate, averaged over the whole batch, so every sample weighs
    ``1/B`` like the denoising loss; for batch size 1 this is DreamRelation's value. Gradients
    flow into ``x0_pred`` only.

    Args:
        x0_pred: Predicted clean latents ``[B, C, h, w]``.
        ref_latents: Reference-image latents ``[B, n, C, h', w']``.
        target_kps: Target-image keypoints ``[B, n, K, 2]``, normalised ``(x, y)``.
        ref_kps: Reference-image keypoints ``[B, n, K, 2]``, normalised ``(x, y)``.
        timesteps: Diffusion timesteps ``[B]``.
        max_timestep: Largest timestep that still gets the loss.

    Returns:
        Scalar loss (0 when every sample is gated off).
    """
    b, c, h, w = x0_pred.shape
    n = target_kps.shape[1]
    batch_idx = torch.arange(b, device=x0_pred.device)[:, None, None]
    entity_idx = torch.arange(n, device=x0_pred.device)[None, :, None]

    rows, cols = keypoint_indices(target_kps.to(x0_pred.device), h, w)  # [B, n, K]
    pred = x0_pred.permute(0, 2, 3, 1)[batch_idx, rows, cols]  # [B, n, K, C]

    # The reference latents are read on their own grid (rh x rw), on purpose. DreamRelation's
    # released train.py scales the reference ("input") keypoints by pred_original_sample.shape[-1]
    # taken after its permute(0, 2, 3, 1) to channels-last, i.e. by the channel count 4, so every
    # reference keypoint lands in the top-left 4 x 4 cells (the target keypoints are scaled before
    # the permute, by 128, and are right). That is a bug of the release; do not reproduce it.
    rh, rw = ref_latents.shape[-2:]
    ref_rows, ref_cols = keypoint_indices(ref_kps.to(x0_pred.device), rh, rw)
    ref = ref_latents.permute(0, 1, 3, 4, 2)[batch_idx, entity_idx, ref_rows, ref_cols]  # [B, n, K, C]

    # DreamRelation train.py: MSE between the two keypoint feature sets, reference side constant
    per_sample = (pred.float() - ref.detach().float()).pow(2).mean(dim=(1, 2, 3))  # [B]
    # DreamRelation train.py: KML applied only when t <= 333
    gate = (timesteps.to(x0_pred.device) <= max_timestep).to(per_sample.dtype)
    return (per_sample * gate).sum() / b


def predicate_calibration_loss(
    attn_maps: Iterable[torch.Tensor],
    entity_masks: torch.Tensor,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Predicate cross-attention calibration loss.

    Per layer: the mean of the predicate's attention map over the background minus its mean over
    the object region (the union of the entity masks, nearest-resized to the map size). Averaged
    over layers and batch. Minimising it moves predicate attention onto the entities.

    Maps of several sizes (e.g. SDXL at 512 px under the absolute layer rule: 32 x 32 and
    16 x 16): every layer's region is resized from the full latent-grid mask. DreamRelation's
    train.py instead overwrites the mask with each layer's resized copy, so a layer's region is
    resized from the previous layer's and depends on the order layers were recorded (a 32 x 32
    region rebuilt from a 16 x 16 one is blockier). With one map size, as in the released
    1024-px setting, the two are identical (nearest resizing to the same size is idempotent).

    Args:
        attn_maps: Per-layer maps, each ``(B, s, s)`` (``s`` may differ between layers).
        entity_masks: Entity masks ``(B, n, H, W)`` with values in ``{0, 1}``.
        eps: Added to both region sizes before dividing.

    Returns:
        Scalar loss.

    Raises:
        ValueError: ``attn_maps`` is empty.
    """
    maps = list(attn_maps)
    if not maps:
        raise ValueError("predicate_calibration_loss needs at least one attention map")
    union = entity_masks.float().amax(dim=1, keepdim=True)  # (B, 1, H, W)
    total = 0.0
    for attn_map in maps:
        attn_map = attn_map.float()
        # DreamRelation train.py: object mask nearest-resized to the map's size
        obj = F.interpolate(union.to(attn_map.device), size=attn_map.shape[-2:], mode="nearest")[:, 0]
        bg = 1.0 - obj
        # DreamRelation train.py: mean over background minus mean over object, eps on the counts
        bg_mean = (attn_map * bg).sum(dim=(1, 2)) / (bg.sum(dim=(1, 2)) + eps)
        obj_mean = (attn_map * obj).sum(dim=(1, 2)) / (obj.sum(dim=(1, 2)) + eps)
        total = total + (bg_mean - obj_mean).mean()
    return total / len(maps)
