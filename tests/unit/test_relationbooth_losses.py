"""Keypoint matching and predicate calibration losses."""

from __future__ import annotations

import pytest
import torch

from relgen.methods.relationbooth.losses import keypoint_matching_loss, predicate_calibration_loss


def _kml_case():
    x0 = torch.arange(16.0).view(1, 1, 4, 4)  # value at (row, col) = 4*row + col
    ref = torch.stack([100.0 - torch.arange(16.0).view(1, 4, 4), torch.full((1, 4, 4), 2.0)])[None]  # [1,2,1,4,4]
    target_kps = torch.tensor([[[[0.3, 0.6], [0.99, 0.0]], [[1.0, 1.0], [0.5, 0.25]]]])  # (x, y)
    ref_kps = torch.tensor([[[[0.0, 0.0], [0.74, 0.5]], [[0.1, 0.9], [0.6, 0.2]]]])
    # target cells: (row 2, col 1) = 9, (0, 3) = 3, (3, 3) = 15 (1.0 clamped), (1, 2) = 6
    # reference cells: entity 1: (0, 0) -> 100, (2, 2) -> 90; entity 2: constant 2
    expected = ((9 - 100) ** 2 + (3 - 90) ** 2 + (15 - 2) ** 2 + (6 - 2) ** 2) / 4  # 4008.75
    return x0, ref, target_kps, ref_kps, expected


def test_keypoint_loss_hand_computed_and_gated():
    x0, ref, tk, rk, expected = _kml_case()
    assert expected == 4008.75
    loss = keypoint_matching_loss(x0, ref, tk, rk, torch.tensor([333]))
    assert loss.item() == pytest.approx(expected)
    assert keypoint_matching_loss(x0, ref, tk, rk, torch.tensor([334])).item() == 0.0


def test_keypoint_loss_means_over_channels():
    x0, ref, tk, rk, expected = _kml_case()
    x0_2 = torch.cat([x0, torch.zeros_like(x0)], dim=1)  # second channel matches exactly
    ref_2 = torch.cat([ref, torch.zeros_like(ref)], dim=2)
    loss = keypoint_matching_loss(x0_2, ref_2, tk, rk, torch.tensor([10]))
    assert loss.item() == pytest.approx(expected / 2)


def test_keypoint_loss_batch_with_one_gated_sample():
    x0, ref, tk, rk, expected = _kml_case()
    torch.manual_seed(0)
    x0_b = torch.cat([x0, torch.randn_like(x0)]).requires_grad_(True)
    ref_b = torch.cat([ref, torch.randn_like(ref)]).requires_grad_(True)
    loss = keypoint_matching_loss(x0_b, ref_b, tk.repeat(2, 1, 1, 1), rk.repeat(2, 1, 1, 1), torch.tensor([100, 500]))
    assert loss.item() == pytest.approx(expected / 2)  # mean over the batch, gated sample counts 0
    loss.backward()
    assert ref_b.grad is None  # gradient only into the prediction
    assert x0_b.grad[1].abs().sum() == 0
    touched = (x0_b.grad[0, 0] != 0).nonzero().tolist()
    assert sorted(touched) == [[0, 3], [1, 2], [2, 1], [3, 3]]


def test_calibration_loss_hand_computed():
    maps_a = torch.tensor([[[0.5, 0.2], [0.1, 0.4]]])  # 2x2 layer
    maps_b = (torch.arange(16.0) / 16).view(1, 4, 4)  # 4x4 layer
    masks = torch.zeros(1, 2, 4, 4)
    masks[0, 0, 0, 0] = masks[0, 0, 1, 1] = 1  # entity 1
    masks[0, 1, 2, 2] = 1  # entity 2
    eps = 1e-5
    # 2x2 nearest resize samples pixels (0,0), (0,2), (2,0), (2,2): object = {(0,0), (1,1)}
    layer_a = (0.2 + 0.1) / (2 + eps) - (0.5 + 0.4) / (2 + eps)
    # 4x4: object pixels 0, 5, 10 of values i/16
    obj = (0 + 5 + 10) / 16
    layer_b = (120 / 16 - obj) / (13 + eps) - obj / (3 + eps)
    loss = predicate_calibration_loss([maps_a, maps_b], masks, eps=eps)
    assert loss.item() == pytest.approx((layer_a + layer_b) / 2, rel=1e-6)
    with pytest.raises(ValueError):
        predicate_calibration_loss([], masks)


def test_calibration_loss_averages_the_batch():
    torch.manual_seed(1)
    maps = [torch.rand(2, 4, 4)]
    masks = (torch.rand(2, 2, 8, 8) > 0.5).float()
    both = predicate_calibration_loss(maps, masks)
    each = [predicate_calibration_loss([maps[0][i : i + 1]], masks[i : i + 1]) for i in range(2)]
    torch.testing.assert_close(both, (each[0] + each[1]) / 2)
