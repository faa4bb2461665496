"""random_resize_crop moves pixels, masks, keypoints and boxes together."""

from __future__ import annotations

import pytest
import torch

from relgen.data.readers import mask_to_box
from relgen.data.transforms import boxes_from_masks, random_resize_crop
from relgen.errors import ConfigError


def _dot_scene(height: int, width: int, dots: list[tuple[int, int]]):
    """Black image with 3x3 white dots centred on ``dots`` ((row, col)).

    Each dot gets a mask (a 9x13 rectangle around it) and five keypoints: the dot's centre,
    then the rectangle's corners (x0, y0), (x1, y0), (x0, y1), (x1, y1) at its outer pixel
    edges, all normalised.
    """
    image = -torch.ones(3, height, width)
    masks = torch.zeros(len(dots), height, width, dtype=torch.uint8)
    keypoints = torch.zeros(len(dots), 5, 2)
    for i, (row, col) in enumerate(dots):
        image[:, row - 1 : row + 2, col - 1 : col + 2] = 1.0
        r0, r1, c0, c1 = row - 4, row + 5, col - 6, col + 7
        masks[i, r0:r1, c0:c1] = 1
        points = [(col + 0.5, row + 0.5), (c0, r0), (c1, r0), (c0, r1), (c1, r1)]
        keypoints[i] = torch.tensor([(x / width, y / height) for x, y in points])
    return image, masks, keypoints


def _centroid(brightness: torch.Tensor) -> tuple[float, float]:
    """Brightness-weighted centre ``(x, y)`` in continuous pixel coordinates."""
    h, w = brightness.shape
    weights = brightness.clamp(min=0)
    ys = torch.arange(h, dtype=torch.float32)[:, None] + 0.5
    xs = torch.arange(w, dtype=torch.float32)[None, :] + 0.5
    total = weights.sum()
    return float((weights * xs).sum() / total), float((weights * ys).sum() / total)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("shape", [(80, 120), (120, 80), (96, 96), (40, 50)])
def test_dot_follows_its_keypoint(seed, shape):
    height, width = shape
    image, masks, keypoints = _dot_scene(height, width, [(height // 2 + 3, width // 2 - 2)])
    size = 64
    out = random_resize_crop(image, masks, keypoints, size, torch.Generator().manual_seed(seed),
                             crop_p=0.5, scale=(0.5, 1.0))
    assert out.image.shape == (3, size, size) and out.masks.shape == (1, size, size)
    assert out.masks.dtype == torch.uint8 and out.keypoints.shape == (1, 5, 2)
    assert bool(out.visible.all())  # the crop always keeps the central dot and its rectangle
    # the dot is where its keypoint went (the map is exact; resampling blurs only)
    cx, cy = _centroid(out.image.mean(0) + 1)
    kx, ky = (out.keypoints[0, 0] * size).tolist()
    assert abs(cx - kx) <= 0.25 and abs(cy - ky) <= 0.25, (cx, cy, kx, ky)
    # the dot lies in the transformed mask
    assert out.masks[0, int(ky), int(kx)] == 1
    # the box is the transformed mask's box and matches the moved rectangle corners (1 px)
    box = out.boxes[0].tolist()
    assert tuple(box) == pytest.approx(mask_to_box(out.masks[0]))
    corners = out.keypoints[0, 1:]
    moved = [corners[:, 0].min(), corners[:, 1].min(), corners[:, 0].max(), corners[:, 1].max()]
    assert box == pytest.approx([float(v) for v in moved], abs=1.0 / size)


def test_two_objects_keep_their_masks_apart():
    image, masks, keypoints = _dot_scene(90, 140, [(30, 60), (60, 80)])
    out = random_resize_crop(image, masks, keypoints, 64, torch.Generator().manual_seed(1),
                             crop_p=0.0, scale=(0.7, 0.9))
    for i in range(2):
        kx, ky = (out.keypoints[i, 0] * 64).long().tolist()
        assert out.masks[i, ky, kx] == 1 and out.masks[1 - i, ky, kx] == 0
        assert out.image[:, ky, kx].mean() > 0  # bright dot under its keypoint


def test_same_generator_state_gives_same_output():
    image, masks, keypoints = _dot_scene(70, 110, [(30, 40)])
    a = random_resize_crop(image, masks, keypoints, 48, torch.Generator().manual_seed(3),
                           scale=(0.6, 1.0))
    b = random_resize_crop(image, masks, keypoints, 48, torch.Generator().manual_seed(3),
                           scale=(0.6, 1.0))
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    outputs = {
        tuple(random_resize_crop(image, masks, keypoints, 48, torch.Generator().manual_seed(s),
                                 crop_p=1.0, scale=(0.6, 1.0)).boxes[0].tolist())
        for s in range(8)
    }
    assert len(outputs) > 1  # the seed matters


def test_cropped_out_keypoint_is_clamped_and_invisible():
    # a wide image always cropped to a 40x40 square: the dot at column 110 is outside the
    # crop unless the window reaches the right end
    height, width = 40, 120
    image, masks, keypoints = _dot_scene(height, width, [(20, 20), (20, 110)])
    seen_hidden = False
    for seed in range(10):
        out = random_resize_crop(image, masks, keypoints, 32, torch.Generator().manual_seed(seed),
                                 crop_p=1.0)
        assert out.keypoints.min() >= 0 and out.keypoints.max() <= 1
        for i in range(2):
            if not out.visible[i, 0]:
                seen_hidden = True
                # its mask left the crop too, so its box is the all-zero "no box"
                if not out.masks[i].any():
                    assert out.boxes[i].tolist() == [0.0, 0.0, 0.0, 0.0]
    assert seen_hidden


def test_square_input_with_full_scale_is_identity():
    # DreamRelation's data are already square at the training size: the transform is a no-op
    image, masks, keypoints = _dot_scene(64, 64, [(20, 30)])
    out = random_resize_crop(image, masks, keypoints, 64, torch.Generator().manual_seed(0))
    assert torch.allclose(out.image, image, atol=1e-5)
    assert torch.equal(out.masks, masks)
    assert torch.allclose(out.keypoints, keypoints)
    assert tuple(out.boxes[0].tolist()) == pytest.approx(mask_to_box(masks[0]))


def test_mask_size_downsamples_masks_but_not_boxes():
    image, masks, keypoints = _dot_scene(64, 64, [(32, 32)])
    out = random_resize_crop(image, masks, keypoints, 64, torch.Generator().manual_seed(0),
                             mask_size=16)
    assert out.masks.shape == (1, 16, 16)
    assert tuple(out.boxes[0].tolist()) == pytest.approx(mask_to_box(masks[0]))


def test_boxes_from_masks_empty_mask_is_zero_box():
    masks = torch.zeros(2, 8, 8)
    masks[1, 2:4, 3:7] = 1
    assert boxes_from_masks(masks).tolist() == [[0, 0, 0, 0], [3 / 8, 2 / 8, 7 / 8, 4 / 8]]


@pytest.mark.parametrize("kwargs", [dict(scale=(0.0, 1.0)), dict(scale=(0.9, 0.5)),
                                    dict(scale=(0.5, 1.5)), dict(crop_p=2.0), dict(mode="area")])
def test_invalid_arguments(kwargs):
    image, masks, keypoints = _dot_scene(32, 32, [(16, 16)])
    with pytest.raises(ConfigError):
        random_resize_crop(image, masks, keypoints, 16, torch.Generator(), **kwargs)


def test_boxes_from_masks_inclusive_far_edge_is_the_last_index():
    mask = torch.zeros(1, 8, 8)
    mask[0, 2:6, 1:7] = 1  # rows 2..5, columns 1..6
    assert boxes_from_masks(mask, "inclusive").tolist() == [[1 / 8, 2 / 8, 6 / 8, 5 / 8]]
    assert boxes_from_masks(mask, "exclusive").tolist() == [[1 / 8, 2 / 8, 7 / 8, 6 / 8]]
    with pytest.raises(ConfigError, match="far_edge must be one of exclusive, inclusive"):
        boxes_from_masks(mask, "outer")
