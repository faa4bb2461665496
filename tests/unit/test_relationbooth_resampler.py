"""MS-Diffusion grounding resampler."""

from __future__ import annotations

import math

import torch

from relgen.methods.relationbooth.resampler import (
    OFFICIAL_SDXL,
    GroundingResampler,
    PerceiverAttention,
    ResamplerConfig,
    fourier_box_embedding,
)

TINY = ResamplerConfig(
    dim=32, depth=2, dim_head=8, heads=4, num_queries=4, embedding_dim=24, output_dim=64, ff_mult=2,
    phrase_embeddings_dim=16,
)


def _tiny() -> GroundingResampler:
    torch.manual_seed(0)
    return GroundingResampler.from_config(TINY).eval()


def test_fourier_embedding_matches_hand_computation():
    box = [0.1, 0.2, 0.3, 0.4]
    emb = fourier_box_embedding(torch.tensor([box]))
    assert emb.shape == (1, 64)
    expected = []
    for k in range(8):  # (frequency, sin/cos, coordinate) order
        f = 100 ** (k / 8)
        expected += [math.sin(f * c) for c in box] + [math.cos(f * c) for c in box]
    torch.testing.assert_close(emb[0], torch.tensor(expected), atol=1e-6, rtol=1e-5)
    # spot values: sin(0.1), cos(0.1), sin(100**(1/8) * 0.1)
    assert abs(emb[0, 0].item() - 0.0998334) < 1e-6
    assert abs(emb[0, 4].item() - 0.9950042) < 1e-6
    assert abs(emb[0, 8].item() - 0.1768922) < 1e-6


def test_state_dict_keys_follow_the_released_layout():
    keys = set(_tiny().state_dict())
    expected = {
        "grounding_latents", "latent_proj.0.weight", "latent_proj.0.bias", "latent_proj.2.weight",
        "latent_proj.2.bias", "latent_norm.weight", "latent_norm.bias", "proj_in.weight", "proj_in.bias",
        "attention_norm.weight", "attention_norm.bias", "proj_out.weight", "proj_out.bias", "norm_out.weight",
        "norm_out.bias",
    }
    for i in range(TINY.depth):
        expected |= {f"layers.{i}.0.{n}" for n in ("norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias",
                                                    "to_q.weight", "to_kv.weight", "to_out.weight")}
        expected |= {f"layers.{i}.1.{n}" for n in ("0.weight", "0.bias", "1.weight", "3.weight")}
    assert keys == expected


def test_official_sizes():
    with torch.device("meta"):
        res = GroundingResampler(**OFFICIAL_SDXL)
    shapes = {k: tuple(v.shape) for k, v in res.state_dict().items()}
    assert shapes["latent_proj.0.weight"] == (1664, 832)  # 768 phrase + 64 Fourier, hidden twice that
    assert shapes["latent_proj.2.weight"] == (16 * 1280, 1664)
    assert shapes["grounding_latents"] == (1, 16, 1280)
    assert shapes["proj_in.weight"] == (1280, 1664)
    assert shapes["layers.3.0.to_kv.weight"] == (2560, 1280)
    assert shapes["layers.3.1.1.weight"] == (5120, 1280)
    assert shapes["proj_out.weight"] == (2048, 1280)
    assert "layers.4.0.to_q.weight" not in shapes


def test_perceiver_attention_is_standard_attention_over_features_and_latents():
    torch.manual_seed(1)
    pa = PerceiverAttention(dim=16, dim_head=4, heads=2)
    x, lat = torch.randn(2, 5, 16), torch.randn(2, 3, 16)
    xn, ln = pa.norm1(x), pa.norm2(lat)
    q = pa.to_q(ln).view(2, 3, 2, 4).transpose(1, 2)
    k, v = pa.to_kv(torch.cat([xn, ln], 1)).chunk(2, -1)
    k, v = k.view(2, 8, 2, 4).transpose(1, 2), v.view(2, 8, 2, 4).transpose(1, 2)
    ref = torch.softmax(q @ k.transpose(-1, -2) / 2.0, -1) @ v  # 1/sqrt(dim_head)
    ref = pa.to_out(ref.transpose(1, 2).reshape(2, 3, 8))
    torch.testing.assert_close(pa(x, lat), ref, atol=1e-6, rtol=1e-5)


def test_forward_shape_box_dependence_and_dropped_grounding():
    res = _tiny()
    torch.manual_seed(2)
    feats, phrases = torch.randn(3, 7, 24), torch.randn(3, 16)
    boxes = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0], [0.1, 0.2, 0.9, 0.8]])
    moved = boxes.clone()
    moved[:, 0] += 0.05
    drop = torch.tensor([False, True, False])
    with torch.no_grad():
        out = res(feats, phrases, boxes, drop)
        out_moved = res(feats, phrases, moved, drop)
        out_other_phrase = res(feats, torch.randn(3, 16), boxes, [0, 1, 0])
    assert out.shape == (3, 4, 64)
    assert (out[0] - out_moved[0]).abs().max() > 1e-4  # grounding tokens follow the box
    assert (out[2] - out_moved[2]).abs().max() > 1e-4
    assert torch.equal(out[1], out_moved[1])  # dropped: learnable latents, box ignored
    assert torch.equal(out[1], out_other_phrase[1])
    # a variable token count is accepted (no positional embedding)
    assert res(torch.randn(3, 11, 24), phrases, boxes).shape == (3, 4, 64)

    res.zero_grad()
    res(feats, phrases, boxes, drop).sum().backward()
    assert res.grounding_latents.grad.abs().sum() > 0
    res.zero_grad()
    res(feats, phrases, boxes).sum().backward()
    assert res.grounding_latents.grad is None or res.grounding_latents.grad.abs().sum() == 0
