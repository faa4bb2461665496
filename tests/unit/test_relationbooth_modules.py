"""RelationBooth attention processors on a tiny Attention module and a tiny SDXL UNet."""

from __future__ import annotations

import copy
import inspect

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from peft import LoraConfig
from torch import nn

from relgen.errors import RelgenError
from relgen.methods.relationbooth.attention import (
    MaskedImageAttnProcessor,
    SelfAttnProcessor,
    TextAttentionStore,
    box_region_masks,
    image_attention_processors,
    install_image_attention,
    set_image_attention_scale,
)
from relgen.methods.relationbooth.convert import load_ms_adapter
from relgen.methods.relationbooth.losses import predicate_calibration_loss
from relgen.methods.relationbooth.resampler import GroundingResampler

CROSS = 64
TEXT = 77
DUMMY = 4
PER_ENTITY = 16


# ----------------------------------------------------------------------------------------------
# processor on a bare Attention module
# ----------------------------------------------------------------------------------------------


def _routing_setup(gamma: float = 0.5):
    """Attention with identity to_out, processor with zero image keys and identity image values."""
    torch.manual_seed(0)
    attn = Attention(query_dim=4, cross_attention_dim=4, heads=1, dim_head=4)
    with torch.no_grad():
        attn.to_out[0].weight.copy_(torch.eye(4))
        attn.to_out[0].bias.zero_()
    proc = MaskedImageAttnProcessor(
        hidden_size=4, cross_attention_dim=4, scale=gamma, text_tokens=3, num_dummy_tokens=2, tokens_per_entity=3
    )
    with torch.no_grad():
        proc.to_k_ip.weight.zero_()  # uniform attention over the allowed image tokens
        proc.to_v_ip.weight.copy_(torch.eye(4))  # image value = image token
    hidden = torch.randn(1, 16, 4)  # a 4x4 query grid
    text = torch.randn(1, 3, 4)
    image = torch.cat([torch.full((1, 2, 4), 5.0), torch.ones(1, 3, 4), -torch.ones(1, 3, 4)], dim=1)
    text_only = AttnProcessor2_0()(attn, hidden, text)
    return attn, proc, hidden, text, image, text_only


def test_box_region_masks_floor_start_ceil_end():
    region = box_region_masks(torch.tensor([[[0.3, 0.0, 0.6, 0.5]]]), side=4).view(4, 4)
    expected = torch.zeros(4, 4, dtype=torch.bool)
    expected[0:2, 1:3] = True  # cols floor(1.2)=1 .. ceil(2.4)=3, rows 0 .. ceil(2.0)=2
    assert torch.equal(region, expected)


def test_box_masks_route_queries_to_their_entity():
    gamma = 0.5
    attn, proc, hidden, text, image, text_only = _routing_setup(gamma)
    boxes = torch.tensor([[[0.0, 0.0, 0.5, 0.75], [0.5, 0.0, 1.0, 0.75]]])
    out = proc(attn, hidden, torch.cat([text, image], dim=1), boxes=boxes)
    delta = (out - text_only).view(4, 4, 4)  # rows, cols, channels
    torch.testing.assert_close(delta[0:3, 0:2], torch.full((3, 2, 4), gamma))  # entity 1 values are +1
    torch.testing.assert_close(delta[0:3, 2:4], torch.full((3, 2, 4), -gamma))  # entity 2 values are -1
    assert torch.equal(out.view(4, 4, 4)[3], text_only.view(4, 4, 4)[3])  # background: text only


def test_overlapping_boxes_see_both_entities():
    gamma = 0.5
    attn, proc, hidden, text, image, text_only = _routing_setup(gamma)
    boxes = torch.tensor([[[0.0, 0.0, 0.75, 1.0], [0.5, 0.0, 1.0, 1.0]]])
    delta = (proc(attn, hidden, torch.cat([text, image], dim=1), boxes=boxes) - text_only).view(4, 4, 4)
    torch.testing.assert_close(delta[:, 0:2], torch.full((4, 2, 4), gamma))
    torch.testing.assert_close(delta[:, 2], torch.zeros(4, 4), atol=1e-6, rtol=0)  # mean of +1 and -1 tokens
    torch.testing.assert_close(delta[:, 3], torch.full((4, 4), -gamma))


def test_all_zero_boxes_give_text_only_attention():
    attn, proc, hidden, text, image, text_only = _routing_setup(0.7)
    out = proc(attn, hidden, torch.cat([text, image], dim=1), boxes=torch.zeros(1, 2, 4))
    assert torch.equal(out, text_only)


def test_no_boxes_is_plain_image_attention():
    gamma = 0.5
    attn, proc, hidden, text, image, text_only = _routing_setup(gamma)
    out = proc(attn, hidden, torch.cat([text, image], dim=1))
    # uniform over 2 dummy tokens (5) and 3 + 3 entity tokens (+1, -1): mean = 10 / 8
    torch.testing.assert_close(out - text_only, torch.full((1, 16, 4), gamma * 10 / 8))


def test_box_count_must_match_image_tokens():
    attn, proc, hidden, text, image, _ = _routing_setup()
    with pytest.raises(ValueError, match="image tokens"):
        proc(attn, hidden, torch.cat([text, image], dim=1), boxes=torch.zeros(1, 3, 4))


def test_text_attention_store_records_span_map():
    attn, proc, hidden, text, image, _ = _routing_setup()
    ehs = torch.cat([text, image], dim=1)
    boxes = torch.tensor([[[0.0, 0.0, 0.5, 1.0], [0.5, 0.0, 1.0, 1.0]]])
    reference = proc(attn, hidden, ehs, boxes=boxes, phrase_idxes=torch.tensor([[1, 3]]))

    store = TextAttentionStore()
    proc.attention_store, proc.layer_name = store, "layer"
    store.active = True
    out = proc(attn, hidden, ehs, boxes=boxes, phrase_idxes=torch.tensor([[1, 3]]))
    torch.testing.assert_close(out, reference, atol=1e-6, rtol=1e-5)  # explicit path == SDPA path

    probs = torch.softmax(attn.to_q(hidden) @ attn.to_k(text).transpose(1, 2) / 2.0, dim=-1)  # dim_head 4
    torch.testing.assert_close(store.maps["layer"], probs[..., 1:3].mean(-1).view(1, 4, 4))

    proc(attn, hidden, ehs, boxes=boxes, phrase_idxes=torch.tensor([[[0, 0]]]))  # empty span, [B, 1, 2]
    assert torch.equal(store.maps["layer"], torch.zeros(1, 4, 4))

    store.reset()
    store.max_query_tokens = 8  # this layer has 16 queries
    proc(attn, hidden, ehs, boxes=boxes, phrase_idxes=torch.tensor([[1, 3]]))
    assert store.maps == {}


# ----------------------------------------------------------------------------------------------
# tiny SDXL UNet
# ----------------------------------------------------------------------------------------------


def _tiny_unet() -> UNet2DConditionModel:
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        cross_attention_dim=CROSS,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=80,
        norm_num_groups=8,
    ).eval()


@pytest.fixture(scope="module")
def base_unet() -> UNet2DConditionModel:
    return _tiny_unet()


def _inputs(n_entities: int = 2):
    g = torch.Generator().manual_seed(1)
    return dict(
        sample=torch.randn(1, 4, 8, 8, generator=g),
        text=torch.randn(1, TEXT, CROSS, generator=g),
        image=torch.randn(1, DUMMY + n_entities * PER_ENTITY, CROSS, generator=g),
        added={"text_embeds": torch.randn(1, 32, generator=g), "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]])},
        boxes=torch.tensor([[[0.0, 0.0, 0.5, 1.0], [0.5, 0.25, 1.0, 1.0]]]),
    )


def _run(unet, inp, ehs, **cak):
    return unet(inp["sample"], 10, ehs, added_cond_kwargs=inp["added"], cross_attention_kwargs=cak or None).sample


def test_gamma_zero_and_empty_boxes_reproduce_plain_unet(base_unet):
    inp = _inputs()
    with torch.no_grad():
        plain = _run(base_unet, inp, inp["text"])
        unet = copy.deepcopy(base_unet)
        procs = install_image_attention(unet, gamma=0.0, num_tokens_per_entity=PER_ENTITY, text_tokens=TEXT)
        full = torch.cat([inp["text"], inp["image"]], dim=1)
        torch.testing.assert_close(_run(unet, inp, full, boxes=inp["boxes"]), plain, atol=1e-6, rtol=1e-5)

        set_image_attention_scale(unet, 0.6)
        assert all(p.scale == 0.6 for p in image_attention_processors(unet).values())
        assert (_run(unet, inp, full, boxes=inp["boxes"]) - plain).abs().max() > 1e-4
        # unconditional branch: all-zero boxes -> every query is background -> no image contribution
        zero_boxes = torch.zeros_like(inp["boxes"])
        torch.testing.assert_close(_run(unet, inp, full, boxes=zero_boxes), plain, atol=1e-6, rtol=1e-5)

    names = list(base_unet.attn_processors)
    assert list(procs) == names
    for name, proc in procs.items():
        expected = SelfAttnProcessor if name.endswith("attn1.processor") else MaskedImageAttnProcessor
        assert isinstance(proc, expected)
        # diffusers drops cross_attention_kwargs keys a processor does not name (and warns)
        assert {"boxes", "phrase_idxes"} <= set(inspect.signature(proc.__call__).parameters)
    assert isinstance(procs[names[0]], AttnProcessor2_0)


def test_lora_on_attn2_applies_through_the_processor(base_unet):
    inp = _inputs()
    unet = copy.deepcopy(base_unet)
    store = TextAttentionStore()
    install_image_attention(unet, gamma=0.6, num_tokens_per_entity=PER_ENTITY, text_tokens=TEXT, store=store)
    unet.requires_grad_(False)
    unet.add_adapter(
        LoraConfig(
            r=4,
            lora_alpha=4,
            init_lora_weights="gaussian",
            target_modules=["attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0"],
        )
    )
    lora_params = {n: p for n, p in unet.named_parameters() if "lora_" in n}
    assert lora_params and all("attn2" in n and "processor" not in n for n in lora_params)
    assert len(image_attention_processors(unet)) == 8  # processors survive add_adapter

    full = torch.cat([inp["text"], inp["image"]], dim=1)
    with torch.no_grad():
        before = _run(unet, inp, full, boxes=inp["boxes"])
        for n, p in lora_params.items():
            if "lora_B" in n:
                p.normal_(std=0.1)
        after = _run(unet, inp, full, boxes=inp["boxes"])
    assert (after - before).abs().max() > 1e-4

    store.active = True
    out = _run(unet, inp, full, boxes=inp["boxes"], phrase_idxes=torch.tensor([[1, 3]]))
    assert len(store.maps) == 8 and all(m.shape == (1, 4, 4) for m in store.values())
    masks = torch.zeros(1, 2, 8, 8)
    masks[0, 0, :, :4] = 1
    loss = predicate_calibration_loss(store.values(), masks) + out.pow(2).mean()
    loss.backward()
    for suffix in ("to_q", "to_k", "to_v", "to_out.0"):
        grads = [p.grad for n, p in lora_params.items() if f"attn2.{suffix}.lora_A" in n]
        assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


def _adapter_parts(procs, resampler, dummy):
    # the released layout: a ModuleList over all processors, self-attention ones without weights
    modules = nn.ModuleList(p if isinstance(p, nn.Module) else nn.Identity() for p in procs.values())
    return {
        "image_proj": {f"resampler.{k}": v for k, v in resampler.state_dict().items()},
        "ms_adapter": modules.state_dict(),
        "dummy_image_tokens": dummy,
    }


def _tiny_resampler() -> GroundingResampler:
    return GroundingResampler(
        dim=32, depth=1, dim_head=8, heads=4, num_queries=PER_ENTITY, embedding_dim=24, output_dim=CROSS,
        ff_mult=2, phrase_embeddings_dim=16,
    )


def test_ms_adapter_loading_matches_direct_weights(base_unet, tmp_path):
    inp = _inputs()
    torch.manual_seed(3)
    unet_a = copy.deepcopy(base_unet)
    procs_a = install_image_attention(unet_a, gamma=0.6, num_tokens_per_entity=PER_ENTITY, text_tokens=TEXT)
    with torch.no_grad():
        for p in image_attention_processors(unet_a).values():
            p.to_k_ip.weight.normal_()
            p.to_v_ip.weight.normal_()
    res_a = _tiny_resampler()
    dummy = torch.randn(1, DUMMY, CROSS)
    parts = _adapter_parts(procs_a, res_a, dummy)
    assert "1.to_k_ip.weight" in parts["ms_adapter"] and "0.to_k_ip.weight" not in parts["ms_adapter"]
    path = tmp_path / "ms_adapter.bin"
    torch.save(parts, path)

    unet_b = copy.deepcopy(base_unet)
    procs_b = install_image_attention(unet_b, gamma=0.6, num_tokens_per_entity=PER_ENTITY, text_tokens=TEXT)
    weights = load_ms_adapter(path, list(unet_b.attn_processors))
    assert list(weights.processors) == [n for n in procs_b if n.endswith("attn2.processor")]
    weights.load_processors(procs_b, source=str(path))
    res_b = _tiny_resampler()
    res_b.load_state_dict(weights.resampler)

    feats, phrases = torch.randn(2, 5, 24), torch.randn(2, 16)
    boxes = inp["boxes"][0]

    def tokens(res, dummy_tokens):
        return torch.cat([dummy_tokens, res(feats, phrases, boxes).reshape(1, -1, CROSS)], dim=1)

    with torch.no_grad():
        out_a = _run(unet_a, inp, torch.cat([inp["text"], tokens(res_a, dummy)], 1), boxes=inp["boxes"])
        out_b = _run(unet_b, inp, torch.cat([inp["text"], tokens(res_b, weights.dummy_image_tokens)], 1),
                     boxes=inp["boxes"])
    assert torch.equal(out_a, out_b)

    # the flat safetensors form loads to the same weights
    from safetensors.torch import save_file

    flat = {f"{top}.{k}": v.contiguous() for top in ("image_proj", "ms_adapter") for k, v in parts[top].items()}
    flat["dummy_image_tokens"] = dummy
    save_file(flat, tmp_path / "ms_adapter.safetensors")
    again = load_ms_adapter(tmp_path / "ms_adapter.safetensors", list(unet_b.attn_processors))
    assert all(torch.equal(again.processors[n][k], weights.processors[n][k]) for n in again.processors
               for k in ("to_k_ip.weight", "to_v_ip.weight"))


def test_ms_adapter_errors_name_file_and_key(base_unet, tmp_path):
    names = list(base_unet.attn_processors)
    good = {
        "image_proj": {},
        "ms_adapter": {f"{i}.{p}": torch.zeros(1) for i in range(1, len(names), 2)
                       for p in ("to_k_ip.weight", "to_v_ip.weight")},
        "dummy_image_tokens": torch.zeros(1, 4, CROSS),
    }
    bad = copy.deepcopy(good)
    bad["ms_adapter"]["0.to_k_ip.weight"] = torch.zeros(1)  # index 0 is a self-attention processor
    path = tmp_path / "bad.bin"
    torch.save(bad, path)
    with pytest.raises(RelgenError, match=r"bad\.bin.*ms_adapter\.0\.to_k_ip\.weight"):
        load_ms_adapter(path, names)

    missing = copy.deepcopy(good)
    del missing["ms_adapter"]["3.to_v_ip.weight"]
    with pytest.raises(RelgenError, match=r"ms_adapter\.3\.to_v_ip\.weight"):
        load_ms_adapter(missing, names)

    no_dummy = {k: v for k, v in good.items() if k != "dummy_image_tokens"}
    with pytest.raises(RelgenError, match="dummy_image_tokens"):
        load_ms_adapter(no_dummy, names)
