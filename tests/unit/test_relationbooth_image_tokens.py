"""CLIP global/local image tokens and the CLIPSelf checkpoint conversion."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import CLIPVisionConfig, CLIPVisionModel, CLIPVisionModelWithProjection

from relgen.errors import RelgenError
from relgen.methods.relationbooth.convert import (
    clipself_to_transformers,
    load_clipself_checkpoint,
    transformers_to_clipself,
)
from relgen.methods.relationbooth.local_tokens import (
    dense_features,
    global_tokens,
    image_local_tokens,
    local_tokens,
)


def _config() -> CLIPVisionConfig:
    return CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32,
        patch_size=8, projection_dim=16, hidden_act="gelu",
    )


@pytest.fixture(scope="module")
def clip() -> CLIPVisionModel:
    torch.manual_seed(0)
    return CLIPVisionModel(_config()).eval()


def test_local_tokens_are_column_major():
    # channel 0 holds the cell's row, channel 1 its column (2x2 feature cells per grid cell)
    ys, xs = torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij")
    fmap = torch.stack([ys // 2, xs // 2]).float()[None]
    tokens = local_tokens(fmap, grid=4)
    assert tokens.shape == (1, 16, 2)
    for i in range(4):  # column (x), outer loop
        for j in range(4):  # row (y), inner loop
            assert tokens[0, i * 4 + j].tolist() == [j, i]


def test_local_tokens_pool_each_image_from_itself():
    torch.manual_seed(1)
    fmap = torch.randn(2, 3, 8, 8)
    tokens = local_tokens(fmap, grid=4)
    torch.testing.assert_close(tokens[1], local_tokens(fmap[1:2], grid=4)[0])
    torch.testing.assert_close(tokens[1, 2 * 4 + 1], fmap[1, :, 2:4, 4:6].mean(dim=(1, 2)))  # column 2, row 1
    assert (tokens[0] - tokens[1]).abs().max() > 1e-3
    with pytest.raises(ValueError):
        local_tokens(torch.randn(1, 3, 6, 6), grid=4)


def test_entity_two_tokens_come_from_image_two(clip):
    torch.manual_seed(2)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        both = image_local_tokens(clip, images, grid=4)
        second = image_local_tokens(clip, images[1:2], grid=4)
    assert both.shape == (2, 16, 32)
    torch.testing.assert_close(both[1], second[0], atol=1e-5, rtol=1e-4)
    assert (both[0] - both[1]).abs().max() > 1e-3


def test_dense_features_run_last_layer_on_value_path_only(clip):
    torch.manual_seed(3)
    images = torch.randn(2, 3, 64, 64)  # 8x8 patches; position embeddings interpolated from 4x4
    with torch.no_grad():
        fmap = dense_features(clip, images)
        out = clip(pixel_values=images, interpolate_pos_encoding=True, output_hidden_states=True)
        x = out.hidden_states[-2]  # input of the last layer
        last = clip.encoder.layers[-1]
        eps = clip.config.layer_norm_eps
        h = F.layer_norm(x, (32,), last.layer_norm1.weight, last.layer_norm1.bias, eps)
        v = h @ last.self_attn.v_proj.weight.T + last.self_attn.v_proj.bias
        x = x + v @ last.self_attn.out_proj.weight.T + last.self_attn.out_proj.bias
        h = F.layer_norm(x, (32,), last.layer_norm2.weight, last.layer_norm2.bias, eps)
        h = F.gelu(h @ last.mlp.fc1.weight.T + last.mlp.fc1.bias) @ last.mlp.fc2.weight.T + last.mlp.fc2.bias
        x = x + h
        tokens = F.layer_norm(x[:, 1:], (32,), clip.post_layernorm.weight, clip.post_layernorm.bias, eps)
        tokens = tokens / tokens.norm(dim=-1, keepdim=True)
        expected = tokens.view(2, 8, 8, 32).permute(0, 3, 1, 2)
        # the ordinary last layer (with attention mixing) gives something else
        ordinary = F.normalize(clip.post_layernorm(out.last_hidden_state[:, 1:]), dim=-1)
    assert fmap.shape == (2, 32, 8, 8)
    torch.testing.assert_close(fmap, expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(fmap.norm(dim=1), torch.ones(2, 8, 8))
    assert (fmap - ordinary.view(2, 8, 8, 32).permute(0, 3, 1, 2)).abs().max() > 1e-3


def test_global_tokens_are_penultimate_hidden_states(clip):
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        tokens = global_tokens(clip, images)
        ref = clip(pixel_values=images, output_hidden_states=True).hidden_states[1]  # after layer 1 of 2
    assert tokens.shape == (2, 17, 32)
    assert torch.equal(tokens, ref)


def test_clipself_checkpoint_round_trip(tmp_path):
    torch.manual_seed(4)
    src = CLIPVisionModelWithProjection(_config()).eval()
    open_clip_sd = transformers_to_clipself(src.state_dict())
    assert open_clip_sd["visual.transformer.resblocks.0.attn.in_proj_weight"].shape == (96, 32)
    assert torch.equal(
        open_clip_sd["visual.transformer.resblocks.1.attn.in_proj_weight"][32:64],
        src.vision_model.encoder.layers[1].self_attn.k_proj.weight,
    )
    assert torch.equal(open_clip_sd["visual.proj"], src.visual_projection.weight.T)
    assert open_clip_sd["visual.positional_embedding"].shape == (17, 32)

    saved = {f"module.{k}": v for k, v in open_clip_sd.items()}
    saved["module.token_embedding.weight"] = torch.zeros(3, 4)  # text tower: ignored
    path = tmp_path / "epoch_6.pt"
    torch.save({"epoch": 6, "state_dict": saved}, path)

    dst = CLIPVisionModelWithProjection(_config()).eval()
    dst.load_state_dict(load_clipself_checkpoint(path), strict=True)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        a, b = src(pixel_values=images), dst(pixel_values=images)
    assert torch.equal(a.image_embeds, b.image_embeds)
    assert torch.equal(a.last_hidden_state, b.last_hidden_state)
    assert clipself_to_transformers(saved).keys() == load_clipself_checkpoint(path).keys()


def test_clipself_unsupported_key_names_file(tmp_path):
    sd = transformers_to_clipself(CLIPVisionModelWithProjection(_config()).state_dict())
    sd["visual.attn_pool.query"] = torch.zeros(1)
    path = tmp_path / "odd.pt"
    torch.save(sd, path)
    with pytest.raises(RelgenError, match=r"odd\.pt.*visual\.attn_pool\.query"):
        load_clipself_checkpoint(path)
    with pytest.raises(RelgenError, match="no CLIP vision keys"):
        clipself_to_transformers({"token_embedding.weight": torch.zeros(1)})
