"""Geometric augmentation that keeps images, masks, keypoints and boxes aligned.

DreamRelation's released train.py resizes and crops the relation image and its masks but
leaves the keypoints where they were, which is only harmless because its data are already
square 1024x1024 images. :func:`random_resize_crop` applies one affine map (crop window ->
resized paste on a square canvas) to the pixels, the masks and the keypoints, and derives the
boxes from the transformed masks.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from relgen.errors import ConfigError


class ResizeCropResult(NamedTuple):
    """Output of :func:`random_resize_crop`.

    Attributes:
        image: ``[C, size, size]``, same dtype as the input image.
        masks: ``[n, m, m]`` with ``m = mask_size or size``, same dtype as the input masks
            (values are resampled with nearest neighbour, so a binary mask stays binary).
        keypoints: ``float32 [n, K, 2]``, normalised ``(x, y)`` on the output canvas, in [0, 1].
            A keypoint outside the crop window is clamped onto the edge of the pasted region.
        boxes: ``float32 [n, 4]``, normalised ``(x0, y0, x1, y1)`` of each transformed mask at
            ``size`` resolution; all zeros for a mask that left the crop entirely (the "no box"
            convention of MS-Diffusion).
        visible: ``bool [n, K]``, False for keypoints that fell outside the crop window (their
            clamped position does not show the point).
    """

    image: torch.Tensor
    masks: torch.Tensor
    keypoints: torch.Tensor
    boxes: torch.Tensor
    visible: torch.Tensor


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def _randint(generator: torch.Generator, high_inclusive: int) -> int:
    if high_inclusive <= 0:
        return 0
    return int(torch.randint(0, high_inclusive + 1, (), generator=generator))


#: How :func:`boxes_from_masks` places a box's far (right, bottom) edge: ``exclusive`` = one past
#: the last inside pixel (a full mask gives ``(0, 0, 1, 1)``, as
#: :func:`relgen.data.readers.mask_to_box`), ``inclusive`` = at the last inside pixel's index.
BOX_FAR_EDGES = ("exclusive", "inclusive")


def boxes_from_masks(masks: torch.Tensor, far_edge: str = "exclusive") -> torch.Tensor:
    """Normalised ``(x0, y0, x1, y1)`` boxes of ``[n, H, W]`` masks (non-zero = inside).

    ``x0 = first inside column / W`` and ``y0 = first inside row / H``; the far edges follow
    ``far_edge`` (one of :data:`BOX_FAR_EDGES`): ``exclusive`` adds one to the last index,
    ``inclusive`` does not (DreamRelation's released ``mask2bbox`` on the 128 x 128 mask). An
    empty mask gives an all-zero box.

    Args:
        masks: ``[n, H, W]`` tensor of any dtype.
        far_edge: ``exclusive`` or ``inclusive``.

    Returns:
        ``float32 [n, 4]``.
    """
    if far_edge not in BOX_FAR_EDGES:
        raise ConfigError(f"boxes_from_masks: far_edge must be one of {', '.join(BOX_FAR_EDGES)}, got '{far_edge}'")
    past = 1 if far_edge == "exclusive" else 0
    n, h, w = masks.shape
    inside = masks != 0
    boxes = torch.zeros(n, 4, dtype=torch.float32)
    for i in range(n):
        rows = torch.nonzero(inside[i].any(dim=1)).flatten()
        cols = torch.nonzero(inside[i].any(dim=0)).flatten()
        if rows.numel() == 0:
            continue
        boxes[i] = torch.tensor(
            [cols[0] / w, rows[0] / h, (cols[-1] + past) / w, (rows[-1] + past) / h], dtype=torch.float32
        )
    return boxes


def random_resize_crop(
    image: torch.Tensor,
    masks: torch.Tensor,
    keypoints: torch.Tensor,
    size: int,
    generator: torch.Generator,
    crop_p: float = 0.5,
    scale: tuple[float, float] = (1.0, 1.0),
    *,
    mask_size: int | None = None,
    fill: float = -1.0,
    mode: str = "bicubic",
) -> ResizeCropResult:
    """DreamRelation-style random resize-crop onto a square canvas, moving everything along.

    Steps (one affine map from input pixels to canvas pixels):

    1. Crop window: with probability ``crop_p``, a non-square image is cropped to a random
       square of side ``min(H, W)`` along its long axis (DreamRelation resizes the short side
       and crops the long one); otherwise the whole image is kept.
    2. Resize the window so that its long side is ``round(size * u)``, ``u ~ U(scale)``;
       ``scale=(1, 1)`` fills the canvas along the long side, as the released code does.
    3. Paste it at a random integer offset on a ``size x size`` canvas filled with ``fill``.

    Keypoints use continuous coordinates (pixel ``i`` covers ``[i, i + 1)``, so normalised
    ``x`` maps to ``x * W``) and follow the same map exactly. Masks are resampled with
    nearest neighbour and then, if ``mask_size`` is given, downsampled to it (DreamRelation
    uses 128 at 1024 px). Boxes come from the transformed masks at ``size`` resolution.

    The result is a function of the inputs and the generator state only.

    Args:
        image: ``[C, H, W]`` float image, normally in [-1, 1].
        masks: ``[n, H, W]`` masks aligned with ``image`` (any dtype; non-zero = inside).
        keypoints: ``[n, K, 2]`` normalised ``(x, y)`` on ``image``.
        size: Side of the square output canvas in pixels.
        generator: Source of randomness.
        crop_p: Probability of cropping a non-square image to a square.
        scale: Range of the pasted long side as a fraction of ``size``; ``0 < low <= high <= 1``.
        mask_size: Side of the returned masks; ``None`` keeps ``size``.
        fill: Canvas value outside the pasted image (-1 is black in [-1, 1]).
        mode: ``torch.nn.functional.interpolate`` mode for the image (``bilinear`` or
            ``bicubic``; antialiased when downsampling).

    Returns:
        A :class:`ResizeCropResult`.

    Raises:
        ConfigError: If ``size``, ``scale``, ``crop_p`` or ``mode`` is invalid.
        ValueError: If the tensor shapes do not line up.
    """
    if size <= 0:
        raise ConfigError(f"random_resize_crop: size must be positive, got {size}")
    low, high = (float(s) for s in scale)
    if not 0.0 < low <= high <= 1.0:
        raise ConfigError(
            f"random_resize_crop: scale must satisfy 0 < low <= high <= 1, got {scale}"
        )
    if not 0.0 <= crop_p <= 1.0:
        raise ConfigError(f"random_resize_crop: crop_p must be in [0, 1], got {crop_p}")
    if mode not in ("bilinear", "bicubic"):
        raise ConfigError(f"random_resize_crop: mode must be 'bilinear' or 'bicubic', got '{mode}'")
    if image.dim() != 3:
        raise ValueError(f"image must be [C, H, W], got shape {tuple(image.shape)}")
    _, height, width = image.shape
    if masks.dim() != 3 or tuple(masks.shape[-2:]) != (height, width):
        raise ValueError(
            f"masks must be [n, {height}, {width}] to match the image, got {tuple(masks.shape)}"
        )
    if keypoints.dim() != 3 or keypoints.shape[-1] != 2:
        raise ValueError(f"keypoints must be [n, K, 2], got {tuple(keypoints.shape)}")

    # 1. crop window in input pixels
    x0, y0, cw, ch = 0, 0, width, height
    do_crop = float(torch.rand((), generator=generator)) < crop_p
    if do_crop and height != width:
        side = min(height, width)
        if width > height:
            x0 = _randint(generator, width - side)
        else:
            y0 = _randint(generator, height - side)
        cw = ch = side

    # 2. pasted size
    long_side = max(1, round(size * _uniform(generator, low, high)))
    factor = long_side / max(cw, ch)
    nw = min(size, max(1, round(cw * factor)))
    nh = min(size, max(1, round(ch * factor)))

    # 3. paste offset
    ox = _randint(generator, size - nw)
    oy = _randint(generator, size - nh)

    # pixels
    window = image[:, y0 : y0 + ch, x0 : x0 + cw].unsqueeze(0).float()
    resized = F.interpolate(window, size=(nh, nw), mode=mode, align_corners=False, antialias=True)
    if mode == "bicubic":  # bicubic overshoots; keep the input's value range
        resized = resized.clamp(float(image.min()), float(image.max()))
    out_image = torch.full((image.shape[0], size, size), fill, dtype=torch.float32)
    out_image[:, oy : oy + nh, ox : ox + nw] = resized[0]
    out_image = out_image.to(image.dtype)

    # masks: nearest-exact samples the pixel whose centre is nearest, matching the
    # continuous coordinate map used for the keypoints
    mask_window = masks[:, y0 : y0 + ch, x0 : x0 + cw].unsqueeze(0).float()
    mask_resized = F.interpolate(mask_window, size=(nh, nw), mode="nearest-exact")[0]
    out_masks = torch.zeros((masks.shape[0], size, size), dtype=torch.float32)
    out_masks[:, oy : oy + nh, ox : ox + nw] = mask_resized
    boxes = boxes_from_masks(out_masks)
    if mask_size is not None and mask_size != size:
        out_masks = F.interpolate(out_masks.unsqueeze(0), size=(mask_size, mask_size),
                                  mode="nearest-exact")[0]
    out_masks = out_masks.to(masks.dtype)

    # keypoints: input pixels -> window -> canvas pixels -> normalised
    kp = keypoints.detach().to(torch.float32)
    px = kp[..., 0] * width
    py = kp[..., 1] * height
    visible = (px >= x0) & (px <= x0 + cw) & (py >= y0) & (py <= y0 + ch)
    qx = (ox + (px - x0) * (nw / cw)).clamp(ox, ox + nw)
    qy = (oy + (py - y0) * (nh / ch)).clamp(oy, oy + nh)
    out_keypoints = torch.stack([qx / size, qy / size], dim=-1).clamp(0.0, 1.0)

    return ResizeCropResult(out_image, out_masks, out_keypoints, boxes, visible)


__all__ = ["BOX_FAR_EDGES", "ResizeCropResult", "boxes_from_masks", "random_resize_crop"]
