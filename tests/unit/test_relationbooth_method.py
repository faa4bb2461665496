"""The relationbooth method on tiny backbones: branch assembly, losses through the step, caching,
LoRA-only training, export/import round trips and generation inputs."""

from __future__ import annotations

import copy
import json
import logging
import shutil

import pytest
import torch
from torch import nn

from relgen.errors import DataError, RelgenError
from relgen.plugin import StepContext
from relgen.testing import compose, load_tiny

GEN_OFF = "trainer.sample_at_end=false"


def _method(backbone: str = "tiny_sdxl", *overrides: str, data=None):
    from relgen.data.registry import open_dataset
    from relgen.methods.relationbooth.method import RelationBooth

    cfg = compose("experiment=relationbooth_tiny", f"backbone={backbone}", *overrides)
    if data is None:
        data = open_dataset(cfg.dataset).load()
    return RelationBooth(cfg.method, load_tiny(backbone), data)


def _ctx(t: int, seed: int = 0) -> StepContext:
    return StepContext(torch.Generator().manual_seed(seed), lambda n, g: torch.full((n,), t, dtype=torch.long))


def _unet_out(method, item_index: int = 0, crop: int = 0, t: int = 500):
    """UNet output on the item's cached conditioning (text + image tokens) and boxes."""
    bb, it = method.backbone, method.items[item_index]
    g = torch.Generator().manual_seed(7)
    noisy = torch.randn(1, 4, method.latent_side, method.latent_side, generator=g)
    from relgen.backbones.base import TextCond

    pooled = None if it.pooled is None else it.pooled[None]
    with torch.no_grad():
        return bb.unet_forward(noisy, torch.tensor([t]), TextCond(it.crop_ehs[crop][None], pooled),
                               cross_attention_kwargs={"boxes": it.crop_boxes[crop][None]})


@pytest.fixture(scope="module")
def shapes_root():
    from relgen.data.registry import open_dataset

    handle = open_dataset(compose("method=relationbooth", "dataset=shapes_dreamrelation").dataset)
    handle.load()
    return handle.root


# ------------------------------------------------------------------------------------------
# branch assembly


def test_branch_sizes_follow_the_backbone():
    m = _method("tiny_sdxl")
    spec = m.branch.spec
    # output = UNet cross-attention width, phrases = CLIP-L pooled width, input = image encoder width
    assert spec.resampler["output_dim"] == 64 and spec.resampler["phrase_embeddings_dim"] == 32
    assert spec.resampler["embedding_dim"] == 32 and spec.resampler["num_queries"] == 16
    it = m.items[0]
    assert it.crop_ehs.shape[1:] == (77 + 4 + 2 * 16, 64)
    assert it.features.shape == (2, 1 + (32 // 8) ** 2, 32)  # CLS + 16 patches, global tokens only
    # the LoRA is the only trainable thing, on attn2 q/k/v/out
    trainable = {n for n, p in m.backbone.unet.named_parameters() if p.requires_grad}
    assert trainable == set(m.lora_params) and len(trainable) == 8 * 4 * 2
    assert all(".attn2." in n and "processor" not in n for n in trainable)
    assert not any(p.requires_grad for p in m.branch.parameters())


def test_gamma_zero_equals_plain_unet_and_gamma_changes_it():
    from relgen.backbones.base import TextCond
    from relgen.methods.relationbooth.attention import set_image_attention_scale

    m = _method("tiny_sdxl", "method.scale=0.0")
    plain = load_tiny("tiny_sdxl")
    it = m.items[0]
    g = torch.Generator().manual_seed(7)
    noisy = torch.randn(1, 4, 8, 8, generator=g)
    with torch.no_grad():
        ref = plain.unet_forward(noisy, torch.tensor([500]), TextCond(it.crop_ehs[0][None, :77], it.pooled[None]))
    out = _unet_out(m)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=0)
    set_image_attention_scale(m.backbone.unet, 0.6)
    assert (_unet_out(m) - ref).abs().max() > 1e-4


def test_boxes_route_queries_to_their_entity_through_the_branch(shapes_root):
    from relgen.methods.relationbooth.attention import MaskedImageAttnProcessor

    m = _method("tiny_sdxl")
    it = m.items[0]
    videos = shapes_root / "videos"
    name, proc = next((n, p) for n, p in m.processors.items() if isinstance(p, MaskedImageAttnProcessor))
    attn = m.backbone.unet.get_submodule(name[: -len(".processor")])
    boxes = torch.tensor([[0.0, 0.0, 0.5, 1.0], [0.5, 0.0, 1.0, 1.0]])
    hidden = torch.randn(1, 16, attn.to_q.in_features, generator=torch.Generator().manual_seed(1))

    def layer(image_paths):
        feats = m.branch.image_features(image_paths, local=False)
        tokens = m.branch.image_tokens(feats, it.phrase_embeds, boxes)
        ehs = torch.cat([it.crop_ehs[0][None, :77], tokens], dim=1)
        with torch.no_grad():
            return proc(attn, hidden, ehs, boxes=boxes[None]).view(4, 4, -1)

    base = layer(it.concept_images)
    other = layer([it.concept_images[0], videos / "1" / "concept1.png"])  # entity 2 gets another reference
    delta = (other - base).abs().amax(dim=-1)  # [rows, cols]
    assert delta[:, :2].max() == 0  # entity 1's half only sees entity 1's tokens
    assert delta[:, 2:].min() > 0  # every query of entity 2's half changed


def test_local_tokens_come_from_each_reference_image():
    from relgen.methods.relationbooth.local_tokens import image_local_tokens

    m = _method("tiny_sd15", "method.local_tokens_train=true")
    it = m.items[0]
    assert it.features.shape == (2, 17 + 16, 32)  # 17 global + 4x4 local tokens per image
    branch = m.branch
    px = branch.preprocess(it.concept_images[1:], branch.spec.local_image_size)  # 4 x 32 = 128 px
    assert px.shape == (1, 3, 128, 128)
    torch.testing.assert_close(it.features[1, 17:], image_local_tokens(branch.image_encoder, px, 4)[0])
    assert (it.features[0, 17:] - it.features[1, 17:]).abs().max() > 1e-3
    torch.testing.assert_close(it.features[:, 17:].norm(dim=-1).mean(), torch.tensor(1.0), atol=0.3, rtol=0)


# ------------------------------------------------------------------------------------------
# imports: ms_adapter.bin, CLIPSelf


def test_ms_adapter_file_loads_into_the_branch(tmp_path):
    a = _method("tiny_sdxl", "method.branch_seed=1")
    with torch.no_grad():  # make the image key/value weights differ from their text-copy init
        for p in a.processors.values():
            if isinstance(p, nn.Module):
                p.to_k_ip.weight.normal_()
                p.to_v_ip.weight.normal_()
    # MS-Diffusion's layout: a ModuleList over all attn_processors (self-attention ones empty)
    modules = nn.ModuleList(p if isinstance(p, nn.Module) else nn.Identity()
                            for p in a.backbone.unet.attn_processors.values())
    torch.save({"image_proj": {f"resampler.{k}": v for k, v in a.branch.resampler.state_dict().items()},
                "ms_adapter": modules.state_dict(),
                "dummy_image_tokens": a.branch.dummy_tokens.detach().clone()}, tmp_path / "ms_adapter.bin")

    a.branch.image_encoder.save_pretrained(tmp_path / "clip")  # the adapter does not hold the encoder
    encoder = f"method.image_encoder={tmp_path / 'clip'}"
    b = _method("tiny_sdxl", "method.branch_seed=2", encoder, f"method.ms_adapter={tmp_path / 'ms_adapter.bin'}")
    c = _method("tiny_sdxl", "method.branch_seed=2", encoder)
    assert torch.equal(b.items[0].crop_ehs, a.items[0].crop_ehs)
    assert not torch.equal(c.items[0].crop_ehs, a.items[0].crop_ehs)
    assert torch.equal(_unet_out(b), _unet_out(a))
    assert not torch.equal(_unet_out(c), _unet_out(a))


def test_clipself_checkpoint_becomes_the_local_encoder(tmp_path):
    from relgen.methods.relationbooth.convert import transformers_to_clipself

    m = _method("tiny_sd15")
    local = copy.deepcopy(m.branch.image_encoder)
    with torch.no_grad():
        for p in local.parameters():
            p.add_(0.05 * torch.randn_like(p))
    sd = {f"module.{k}": v for k, v in transformers_to_clipself(local.state_dict()).items()}
    torch.save({"state_dict": sd, "epoch": 6}, tmp_path / "epoch_6.pt")
    n = _method("tiny_sd15", f"method.clipself_checkpoint={tmp_path / 'epoch_6.pt'}",
                "method.local_tokens_train=true")
    got = n.branch.local_encoder.state_dict()
    assert all(torch.equal(got[k], v) for k, v in local.state_dict().items() if "position_ids" not in k)
    plain = _method("tiny_sd15", "method.local_tokens_train=true")
    torch.testing.assert_close(n.items[0].features[:, :17], plain.items[0].features[:, :17])  # global: same
    assert (n.items[0].features[:, 17:] - plain.items[0].features[:, 17:]).abs().max() > 1e-3


# ------------------------------------------------------------------------------------------
# losses through the step


def test_keypoint_loss_through_the_step_gated_and_hand_computed():
    m = _method("tiny_sd15", "method.cal_max_side_fraction=0.5")
    batch = {"index": [1], "crop": [0]}
    late = m.compute_losses(batch, _ctx(500))
    assert late["kml"].item() == 0.0  # t > 333: gated off
    torch.testing.assert_close(late["loss"], late["diff"] + 0.001 * late["cal"])

    early = m.compute_losses(batch, _ctx(100))
    x0, refs, kps, ref_kps = early["x0"][0], early["refs"][0], early["keypoints"][0], early["ref_keypoints"][0]
    total, count = 0.0, 0
    for e in range(2):
        for k in range(17):
            col, row = int(kps[e, k, 0] * 8), int(kps[e, k, 1] * 8)  # int(coord * size)
            rcol, rrow = int(ref_kps[e, k, 0] * 8), int(ref_kps[e, k, 1] * 8)
            for ch in range(4):
                total += (x0[ch, min(row, 7), min(col, 7)] - refs[e, ch, min(rrow, 7), min(rcol, 7)]).item() ** 2
                count += 1
    assert early["kml"].item() == pytest.approx(total / count, rel=1e-5)
    assert early["kml"].item() > 0
    torch.testing.assert_close(early["loss"], early["diff"] + 0.1 * early["kml"] + 0.001 * early["cal"])

    ungated = _method("tiny_sd15", "method.kp_max_timestep=null", "method.cal_max_side_fraction=0.5")
    assert ungated.compute_losses(batch, _ctx(999))["kml"].item() > 0


def test_calibration_layers_follow_the_side_fraction(caplog):
    with caplog.at_level(logging.WARNING, logger="relgen"):
        off = _method("tiny_sd15")  # 0.25 x latent 8 = 2: the tiny UNet's grids are 8 and 4
    assert off.cal_side is None and "calibration loss off" in caplog.text
    out = off.compute_losses({"index": [0], "crop": [0]}, _ctx(10))
    assert out["cal"].item() == 0.0 and off.store.maps == {}

    on = _method("tiny_sd15", "method.cal_max_side_fraction=0.5")
    assert on.cal_side == 4
    out = on.compute_losses({"index": [0], "crop": [0]}, _ctx(10))
    assert list(on.store.maps) == ["mid_block.attentions.0.transformer_blocks.0.attn2.processor"]
    (span_map,) = on.store.values()
    assert span_map.shape == (1, 4, 4)
    assert out["cal"].item() != 0.0 and out["cal"].requires_grad
    on.store.reset()  # generation passes no predicate span: nothing records
    _unet_out(on)
    assert on.store.maps == {}


def _sdxl_unet_on_meta():
    """SDXL base's UNet structure (no weights): 70 cross-attention layers in 5 blocks."""
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    with init_empty_weights():
        return UNet2DConditionModel(
            sample_size=128, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            block_out_channels=(320, 640, 1280), layers_per_block=2, transformer_layers_per_block=(1, 2, 10),
            attention_head_dim=(5, 10, 20), cross_attention_dim=2048, use_linear_projection=True,
            addition_embed_type="text_time", addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816)


def test_calibration_layer_rules_on_sdxl():
    from relgen.methods.relationbooth.method import calibration_query_limit, cross_attention_sides

    absolute = compose("method=relationbooth").method
    assert (absolute.cal_layer_rule, absolute.cal_max_queries) == ("absolute", 1024)  # the released default
    relative = compose("method=relationbooth", "method.cal_layer_rule=relative").method
    unet = _sdxl_unet_on_meta()
    counts = {}
    for latent in (128, 64):  # 1024 px and 512 px
        sides = cross_attention_sides(unet, latent)
        assert len(sides) == 70
        for name, cfg in (("absolute", absolute), ("relative", relative)):
            limit = calibration_query_limit(cfg, latent)
            counts[name, latent] = sum(side * side <= limit for side in sides.values())
    # DreamRelation train.py: <= 32 x 32 queries; the rules agree at 1024 px and differ at 512 px
    assert counts == {("absolute", 128): 60, ("relative", 128): 60, ("absolute", 64): 70, ("relative", 64): 60}


def test_absolute_rule_records_every_tiny_layer_and_bad_rules_fail():
    from relgen.validation import validate

    m = _method("tiny_sd15", "method.cal_layer_rule=absolute")
    assert m.cal_max_queries == 1024
    m.compute_losses({"index": [0], "crop": [0]}, _ctx(10))
    assert len(m.store.maps) == len(cross_attention_names(m.backbone.unet)) > 1  # 8 x 8 and 4 x 4 grids
    with pytest.raises(RelgenError, match=r"method.cal_layer_rule='side' is not known; use absolute"):
        validate(compose("method=relationbooth", "method.cal_layer_rule=side"))
    with pytest.raises(RelgenError, match=r"method.cal_max_queries=0 must be at least 1"):
        validate(compose("method=relationbooth", "method.cal_max_queries=0"))


def cross_attention_names(unet) -> list[str]:
    return [n for n in unet.attn_processors if n.endswith("attn2.processor")]


def test_gradient_checkpointing_gives_the_same_gradients():
    grads = []
    for checkpointing in (False, True):
        m = _method("tiny_sdxl", "method.cal_max_side_fraction=0.5")
        if checkpointing:
            m.backbone.unet.enable_gradient_checkpointing()
        m.backbone.unet.train()
        out = m.compute_losses({"index": [0], "crop": [0]}, _ctx(100))
        out["loss"].backward()
        grads.append(torch.cat([p.grad.flatten() for p in m.lora_params.values()]))
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[1], grads[0], atol=1e-7, rtol=1e-5)


def test_frozen_inputs_are_cached_before_training(monkeypatch):
    m = _method("tiny_sdxl", "method.cal_max_side_fraction=0.5")

    def boom(*args, **kwargs):
        raise AssertionError("a frozen encoder ran inside a training step")

    for slot in m.backbone.slots:
        monkeypatch.setattr(slot.encoder, "forward", boom)
    monkeypatch.setattr(m.backbone.vae, "encode", boom)
    monkeypatch.setattr(m.branch.image_encoder, "forward", boom)
    monkeypatch.setattr(m.branch.resampler, "forward", boom)
    gen = torch.Generator().manual_seed(0)
    from relgen.train.timesteps import make_timestep_sampler

    ctx = StepContext(gen, make_timestep_sampler("uniform", 1000, 0.5))
    for _ in range(2):
        out = m.training_step(m.next_batch(gen), ctx)
        out.loss.backward()
    assert set(out.logs) == {"diff", "kml", "cal"}


# ------------------------------------------------------------------------------------------
# data preparation


def test_training_boxes_of_the_released_hug_items_end_at_the_last_mask_cell(samples_dir):
    from relgen.data.readers import read_dreamrelation_folder
    from relgen.methods.relationbooth.method import draw_crops

    cfg = compose("method=relationbooth").method
    assert cfg.box_far_edge == "inclusive"
    items = read_dreamrelation_folder(samples_dir / "dreamrelation" / "hug")
    # DreamRelation's mask2bbox on the 128 x 128 masks at 1024 px: (first, first, last, last) cell / 128
    expected = {"0": [[28, 12, 74, 117], [40, 22, 118, 123]], "1": [[22, 11, 87, 125], [50, 46, 119, 126]]}
    for item in items[:2]:
        ((_, _, masks, _, boxes),) = draw_crops(item, cfg, 1024, 128, torch.Generator().manual_seed(0))
        assert (boxes * 128).tolist() == expected[item.id]
        for box, mask in zip(boxes, masks):  # the far edges are the last inside row and column
            rows, cols = torch.nonzero(mask.any(dim=1)).flatten(), torch.nonzero(mask.any(dim=0)).flatten()
            assert (box * 128).tolist() == [cols[0], rows[0], cols[-1], rows[-1]]


def test_square_images_need_one_cached_crop_and_keep_keypoints():
    m = _method("tiny_sd21", "method.num_crops=4", "method.crop_p=1.0")
    for prepared, raw in zip(m.items, m.data):
        assert prepared.num_crops == 1  # the resize-crop of a square image is the identity
        torch.testing.assert_close(prepared.crop_keypoints[0], raw.motion_keypoints)
        assert prepared.crop_masks.shape == (1, 2, 8, 8) and prepared.crop_dists.shape == (1, 8, 8, 8)


def test_non_square_items_get_distinct_cached_crops(shapes_root, tmp_path):
    from PIL import Image

    from relgen.data.readers import read_dreamrelation_folder

    root = tmp_path / "wide"
    shutil.copytree(shapes_root, root)
    for i in range(4):  # pad every motion image and its masks to 96 x 64 (content on the left)
        for rel in [f"videos/{i}/motion.png", f"masks/{i}/motion0.png", f"masks/{i}/motion1.png"]:
            img = Image.open(root / rel)
            wide = Image.new(img.mode, (96, 64))
            wide.paste(img, (0, 0))
            wide.save(root / rel)
        kp = torch.load(root / f"videos/{i}/motion_keyposes.pth")
        torch.save(kp * torch.tensor([64 / 96, 1.0]), root / f"videos/{i}/motion_keyposes.pth")
    data = read_dreamrelation_folder(root)
    m = _method("tiny_sd15", "method.num_crops=6", "method.crop_p=1.0", data=data)
    it, raw = m.items[0], data[0]
    assert 1 < it.num_crops <= 6 and it.crop_dists.shape[0] == it.num_crops
    assert len({tuple(b.flatten().tolist()) for b in it.crop_boxes}) > 1  # boxes moved with the crop
    x = raw.motion_keypoints[..., 0] * 96 / 64  # in units of the 64-px crop window
    right = x.argmax()
    for c in range(it.num_crops):  # keypoints moved with the crop: x' = clamp(x - x0 / 64, 0, 1), y' = y
        kp = it.crop_keypoints[c]
        shift = (x.flatten()[right] - kp[..., 0].flatten()[right]).item()
        assert -1e-6 <= shift <= 0.5 + 1e-6
        torch.testing.assert_close(kp[..., 0], (x - shift).clamp(0, 1), atol=1e-5, rtol=0)
        torch.testing.assert_close(kp[..., 1], raw.motion_keypoints[..., 1], atol=1e-6, rtol=0)
    again = _method("tiny_sd15", "method.num_crops=6", "method.crop_p=1.0", data=data)
    assert torch.equal(again.items[0].crop_dists, it.crop_dists)  # seeded, from the disk cache


def test_real_dreamrelation_sample_through_data_preparation(samples_dir):
    from relgen.data.readers import mask_to_box, read_dreamrelation_folder

    data = read_dreamrelation_folder(samples_dir / "dreamrelation" / "hug")
    m = _method("tiny_sd15", "method.resolution=64", data=data)
    tok = m.backbone.slots[0].tokenizer
    for prepared, raw in zip(m.items, data):
        start, end = prepared.span
        ids = tok(raw.prompt).input_ids
        assert ids[start:end] == tok("hug", add_special_tokens=False).input_ids  # "... hug."
        assert prepared.num_crops == 1 and prepared.crop_keypoints.shape == (1, 2, 17, 2)
        assert prepared.ref_keypoints.shape == (2, 17, 2) and prepared.ref_dists.shape == (2, 8, 8, 8)
        torch.testing.assert_close(prepared.crop_keypoints[0], raw.motion_keypoints, atol=1e-6, rtol=0)
        for e in range(2):  # boxes of the masks on the 8 x 8 latent grid, within a cell of the full box
            full = torch.tensor(raw.boxes[e])
            got = prepared.crop_boxes[0, e]
            x0, y0, x1, y1 = mask_to_box(prepared.crop_masks[0, e])  # far edges one cell past the last
            assert got.tolist() == [x0, y0, x1 - 1 / 8, y1 - 1 / 8]  # mask2bbox: at the last cell
            # the near edges within a cell of the full-resolution box; the far edges up to a cell
            # further inside (nearest-exact samples each cell's centre, then the last index)
            assert (got[:2] - full[:2]).abs().max() <= 1 / 8 + 1 / 64
            assert (full[2:] - got[2:]).max() <= 1 / 8 + 1 / 16 and (full[2:] - got[2:]).min() >= 0


def test_items_without_predicate_train_without_calibration(shapes_root, tmp_path, caplog):
    from relgen.data.readers import read_dreamrelation_folder
    from relgen.run import run_training

    root = tmp_path / "shake"
    shutil.copytree(shapes_root, root)
    prompts = json.loads((root / "prompts.json").read_text())
    for entry in prompts.values():  # as DreamRelation's released shake data: no predicate at all
        del entry["predicate"]
    (root / "prompts.json").write_text(json.dumps(prompts))
    data = read_dreamrelation_folder(root)
    folder = ("dataset=dreamrelation_folder", f"dataset.root={root}", "method.cal_max_side_fraction=0.5")

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="relgen"):
        assert run_training(compose("experiment=relationbooth_tiny", *folder, "dry_run=true"), str(tmp_path)) == 0
    said = [r.getMessage() for r in caplog.records if "calibration loss" in r.getMessage()]
    assert said == [f"relationbooth: predicate calibration loss off: {len(data)} of {len(data)} items have no "
                    f"'predicate' (first: {root / 'prompts.json'}: item '0'); add one to every item to train with it"]

    m = _method("tiny_sd15", "method.cal_max_side_fraction=0.5", data=data)
    assert m.calibration is False and m.cal_max_queries is None and m.items[0].span == (0, 0)
    out = m.compute_losses({"index": [0], "crop": [0]}, _ctx(100))
    assert out["cal"].item() == 0.0 and m.store.maps == {} and out["loss"].requires_grad
    torch.testing.assert_close(out["loss"], out["diff"] + 0.1 * out["kml"])

    with pytest.raises(DataError, match=r"prompts.json: item '0' has no 'predicate' but method.calibration=true"):
        run_training(compose("experiment=relationbooth_tiny", *folder, "method.calibration=true", "dry_run=true"),
                     str(tmp_path))
    with_predicates = _method("tiny_sd15", "method.cal_max_side_fraction=0.5")
    assert with_predicates.calibration is True and with_predicates.cal_max_queries == 16


def test_bad_items_are_named(shapes_root):
    from relgen.data.readers import read_dreamrelation_folder
    from relgen.methods.relationbooth.method import _check_item

    data = read_dreamrelation_folder(shapes_root)
    bad = copy.copy(data[1])
    bad.predicate = ["beneath"]
    with pytest.raises(DataError, match=r"item '1'.*predicate \['beneath'\] not found"):
        _method("tiny_sd15", data=[data[0], bad])
    bad = copy.copy(data[1])
    bad.motion_keypoints = torch.zeros(2, 17, 3)
    with pytest.raises(DataError, match=r"item '1': motion_keypoints has shape \(2, 17, 3\)"):
        _check_item(bad)


# ------------------------------------------------------------------------------------------
# training, export, reload


def test_training_changes_only_lora_and_export_reloads_bitwise(tmp_path):
    from accelerate import Accelerator

    from relgen.methods.relationbooth.artifact import RelationBoothArtifact
    from relgen.run import export_run
    from relgen.train.loop import Trainer

    overrides = ("method.cal_max_side_fraction=0.5", "method.export_kohya=true", "method.lora_alpha=8")
    cfg = compose("experiment=relationbooth_tiny", "backbone=tiny_sdxl", "trainer=debug", GEN_OFF,
                  "method.grad_accum=1", *overrides)
    m = _method("tiny_sdxl", *overrides)
    modules = {"unet": m.backbone.unet, "vae": m.backbone.vae, "branch": m.branch,
               **{f"te{i}": s.encoder for i, s in enumerate(m.backbone.slots)}}
    before = {f"{k}.{n}": p.detach().clone() for k, mod in modules.items() for n, p in mod.named_parameters()}
    Trainer(cfg, tmp_path, Accelerator(cpu=True), m.backbone, m).train()
    after = {f"{k}.{n}": p.detach() for k, mod in modules.items() for n, p in mod.named_parameters()}
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed == {f"unet.{n}" for n in m.lora_params}
    assert len(before) > 300  # UNet, processors, VAE, encoders, resampler, dummy tokens

    export = export_run(cfg, tmp_path, m)
    # each file is named after the relation the items share ("above"), recorded under its role
    lora_name, kohya_name = "relationbooth-above-lora.safetensors", "relationbooth-above-lora-kohya.safetensors"
    branch_name = "relationbooth-above-image-branch.safetensors"
    assert json.loads((export / "relgen.json").read_text())["files"] == {
        "lora": lora_name, "lora_kohya": kohya_name, "image_branch": branch_name, "image_encoder": "image_encoder",
        "image_branch_spec": "image_branch.json"}
    assert json.loads((export / "image_branch.json").read_text())["lora"]["file"] == lora_name
    generation = json.loads((export / "image_branch.json").read_text())["generation"]
    assert (generation["local_tokens_inference"], generation["local_token_encoder"]) == (False, None)
    from safetensors import safe_open

    with safe_open(str(export / lora_name), "pt") as f:
        keys, meta = list(f.keys()), f.metadata()
    assert len(keys) == 64 and all(k.startswith("unet.") and ".attn2." in k for k in keys)
    adapter = json.loads(meta["lora_adapter_metadata"])  # alpha != r only reloads right with it
    assert adapter["unet.r"] == 4 and adapter["unet.lora_alpha"] == 8.0
    with safe_open(str(export / kohya_name), "pt") as f:
        kohya = {k: f.get_tensor(k) for k in f.keys()}
    alphas = [v for k, v in kohya.items() if k.endswith(".alpha")]
    assert len(kohya) == 96 and all(k.startswith("lora_unet_") for k in kohya)
    assert len(alphas) == 32 and all(a.item() == 8.0 for a in alphas)

    fresh = load_tiny("tiny_sdxl")
    pipe = fresh.pipeline()
    art = RelationBoothArtifact.from_export(export)
    assert (art.lora_file, art.adapter_file) == (export / lora_name, export / branch_name)
    art.apply(pipe)
    art.apply(pipe)  # idempotent
    it = m.items[0]
    g = torch.Generator().manual_seed(3)
    noisy = torch.randn(1, 4, 8, 8, generator=g)
    added = {"text_embeds": it.pooled[None], "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]])}
    with torch.no_grad():
        want = m.backbone.unet(noisy, 100, it.crop_ehs[0][None], added_cond_kwargs=added,
                               cross_attention_kwargs={"boxes": it.crop_boxes[0][None]}).sample
        got = pipe.unet(noisy, 100, it.crop_ehs[0][None], added_cond_kwargs=added,
                        cross_attention_kwargs={"boxes": it.crop_boxes[0][None]}).sample
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    # the kohya file loads through diffusers to the same UNet
    kohya_pipe = load_tiny("tiny_sdxl").pipeline()
    kohya_art = RelationBoothArtifact.from_export(export)
    kohya_art.lora_file = export / kohya_name
    kohya_art.apply(kohya_pipe)
    with torch.no_grad():
        got = kohya_pipe.unet(noisy, 100, it.crop_ehs[0][None], added_cond_kwargs=added,
                              cross_attention_kwargs={"boxes": it.crop_boxes[0][None]}).sample
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    # the model card's line loads the LoRA into a plain diffusers pipeline (no image branch) by its name
    from peft.utils import get_peft_model_state_dict

    card = (export / "README.md").read_text()
    line = f'pipe.load_lora_weights("export", weight_name="{lora_name}")'
    assert line in card and f"`{kohya_name}` is the same LoRA in kohya's key layout" in card
    plain = load_tiny("tiny_sdxl").pipeline()
    plain.load_lora_weights(str(export), weight_name=lora_name)
    (adapter_name,) = plain.unet.peft_config  # the name diffusers gave it
    loaded = get_peft_model_state_dict(plain.unet, adapter_name=adapter_name)
    trained = get_peft_model_state_dict(m.backbone.unet)
    assert len(loaded) == len(trained) == 64 and all(torch.equal(loaded[k], trained[k]) for k in trained)
    # an export written before the names were recorded: the old fixed names, files a list
    old = {lora_name: "pytorch_lora_weights.safetensors", kohya_name: "pytorch_lora_weights_kohya.safetensors",
           branch_name: "image_branch.safetensors"}
    for new_name, old_name in old.items():
        (export / new_name).rename(export / old_name)
    meta = json.loads((export / "relgen.json").read_text())
    meta["files"] = [old.get(n, n) for n in meta["files"].values()]
    (export / "relgen.json").write_text(json.dumps(meta))
    spec = json.loads((export / "image_branch.json").read_text())
    spec["lora"]["file"] = "pytorch_lora_weights.safetensors"
    (export / "image_branch.json").write_text(json.dumps(spec))
    old_art = RelationBoothArtifact.from_export(export)
    assert (old_art.lora_file, old_art.adapter_file) == (export / "pytorch_lora_weights.safetensors",
                                                         export / "image_branch.safetensors")
    old_pipe = load_tiny("tiny_sdxl").pipeline()
    old_art.apply(old_pipe)
    with torch.no_grad():
        got = old_pipe.unet(noisy, 100, it.crop_ehs[0][None], added_cond_kwargs=added,
                            cross_attention_kwargs={"boxes": it.crop_boxes[0][None]}).sample
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    # the reloaded branch makes the same image tokens
    tokens = art.image_tokens(pipe, it.concept_images, it.entities, it.crop_boxes[0], local=False)
    torch.testing.assert_close(tokens[0], it.crop_ehs[0][77:], atol=1e-6, rtol=0)


def test_official_weights_import_for_generation(tmp_path):
    from relgen.methods.relationbooth.artifact import RelationBoothArtifact
    from relgen.methods.relationbooth.method import save_lora

    m = _method("tiny_sd15")
    with torch.no_grad():
        for p in m.lora_params.values():
            p.normal_(std=0.05)
    modules = nn.ModuleList(p if isinstance(p, nn.Module) else nn.Identity()
                            for p in m.backbone.unet.attn_processors.values())
    torch.save({"image_proj": {f"resampler.{k}": v for k, v in m.branch.resampler.state_dict().items()},
                "ms_adapter": modules.state_dict(), "dummy_image_tokens": m.branch.dummy_tokens.detach()},
               tmp_path / "ms_adapter.bin")
    save_lora(m.backbone.unet, tmp_path, sdxl=False, weight_name="pytorch_lora_weights.safetensors")  # DreamRelation's
    m.branch.image_encoder.save_pretrained(tmp_path / "clip")
    art = RelationBoothArtifact.from_official(tmp_path / "pytorch_lora_weights.safetensors",
                                              tmp_path / "ms_adapter.bin", image_encoder=str(tmp_path / "clip"),
                                              heads=4)
    assert art.branch.spec.resampler == m.branch.spec.resampler
    pipe = load_tiny("tiny_sd15").pipeline()
    art.apply(pipe)
    it = m.items[0]
    noisy = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    kw = dict(cross_attention_kwargs={"boxes": it.crop_boxes[0][None]})
    with torch.no_grad():
        want = m.backbone.unet(noisy, 100, it.crop_ehs[0][None], **kw).sample
        got = pipe.unet(noisy, 100, it.crop_ehs[0][None], **kw).sample
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------------------
# generation inputs


def test_pipeline_inputs_match_the_cfg_batch_layout(caplog):
    from relgen.methods.relationbooth import artifact as art_mod

    m = _method("tiny_sdxl")
    art = m.live_artifact()
    pipe = m.backbone.pipeline()
    it = m.items[0]
    art_mod._warned_default_layout = False
    with caplog.at_level(logging.WARNING, logger="relgen"):
        inputs = art.pipeline_inputs(pipe, ["a red circle", "a blue square"], images=it.concept_images,
                                     phrases=it.entities, local_tokens=False)
        art.pipeline_inputs(pipe, ["x"], images=it.concept_images, phrases=it.entities)
    assert caplog.text.count("default left/right layout") == 1
    pe, npe = inputs["prompt_embeds"], inputs["negative_prompt_embeds"]
    assert pe.shape == npe.shape == (2, 77 + 4 + 32, 64)
    assert torch.equal(npe[:, 77:], torch.zeros(2, 36, 64))
    assert torch.equal(pe[0, 77:], pe[1, 77:])
    neg_text = m.backbone.encode_prompts([m.cfg.negative_prompt]).hidden[0]
    torch.testing.assert_close(npe[0, :77], neg_text)
    boxes = inputs["cross_attention_kwargs"]["boxes"]
    expected = torch.tensor([[0.0, 0.2, 0.5, 0.8], [0.5, 0.2, 1.0, 0.8]])
    assert torch.equal(boxes, torch.stack([torch.zeros(2, 4)] * 2 + [expected] * 2))  # [negative, positive]
    assert inputs["pooled_prompt_embeds"].shape == (2, 32)
    # global-only tokens with the training item's own boxes reproduce the cached conditioning
    own = art.pipeline_inputs(pipe, [it.prompt], images=it.concept_images, phrases=it.entities,
                              boxes=it.crop_boxes[0], local_tokens=False)
    torch.testing.assert_close(own["prompt_embeds"][0], it.crop_ehs[0], atol=1e-6, rtol=0)
    # without references: the matching training item's
    default = art.pipeline_inputs(pipe, [it.prompt], local_tokens=False)
    assert default["cross_attention_kwargs"]["boxes"].shape == (2, 2, 4)
    # both guidance settings run
    for guidance in (5.0, 1.0):
        pipe(**own, num_inference_steps=2, guidance_scale=guidance, output_type="pt")


def test_local_tokens_at_generation_only_with_clipself_by_default():
    m = _method("tiny_sd15")
    art, pipe, it = m.live_artifact(), m.backbone.pipeline(), m.items[0]
    refs = dict(images=it.concept_images, phrases=it.entities, boxes=it.crop_boxes[0])
    # DreamRelation inference.py: no CLIPSelf checkpoint, no local tokens
    assert m.generation_defaults()["local_tokens_inference"] is False
    assert m.generation_defaults()["local_token_encoder"] is None
    default = art.pipeline_inputs(pipe, [it.prompt], **refs)["prompt_embeds"]
    torch.testing.assert_close(default[0], it.crop_ehs[0], atol=1e-6, rtol=0)  # global tokens only
    # the plain-encoder variant is an explicit option, recorded as such
    plain = _method("tiny_sd15", "method.local_tokens_inference=true")
    assert plain.generation_defaults()["local_tokens_inference"] is True
    assert plain.generation_defaults()["local_token_encoder"] == "image_encoder"
    with_local = plain.live_artifact().pipeline_inputs(plain.backbone.pipeline(), [it.prompt], **refs)["prompt_embeds"]
    assert (with_local[0, 77:] - default[0, 77:]).abs().max() > 1e-3
    from relgen.validation import validate

    assert validate(compose("method=relationbooth")) == []
    (line,) = validate(compose("method=relationbooth", "method.local_tokens_inference=true"))
    assert line.startswith("method.local_tokens_inference=true without method.clipself_checkpoint")


def test_num_images_per_prompt_repeats_the_boxes_per_image():
    m = _method("tiny_sdxl")
    art, pipe, it = m.live_artifact(), m.backbone.pipeline(), m.items[0]
    refs = dict(images=it.concept_images, phrases=it.entities, boxes=it.crop_boxes[0], local_tokens=False)
    latents = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    run = dict(num_inference_steps=2, output_type="pt", latents=latents)
    inputs = art.pipeline_inputs(pipe, ["a red circle", "a blue square"], **refs)
    assert inputs["cross_attention_kwargs"]["boxes"].shape == (4, 2, 4)  # [negative, positive] per prompt
    two_each = pipe(**inputs, num_images_per_prompt=2, **run).images
    # the same as every image given as its own prompt (DreamRelation's pipeline: repeat_interleave)
    each = art.pipeline_inputs(pipe, ["a red circle", "a red circle", "a blue square", "a blue square"], **refs)
    one_each = pipe(**each, **run).images
    assert two_each.shape == (4, 3, 64, 64)
    torch.testing.assert_close(two_each, one_each, atol=1e-5, rtol=0)
    assert not torch.allclose(two_each[1], two_each[2], atol=1e-3)  # the prompts differ


def test_bad_generation_boxes():
    m = _method("tiny_sd15")
    art, pipe, it = m.live_artifact(), m.backbone.pipeline(), m.items[0]
    for boxes, message in [
        ([[0.0, 0.2, 1.2, 0.8], [0.5, 0.2, 1.0, 0.8]], r"box 0 .* outside \[0, 1\]"),
        ([[0.6, 0.2, 0.5, 0.8], [0.5, 0.2, 1.0, 0.8]], r"box 0 .* x0 < x1"),
        ([[0.0, 0.2, 0.5, 0.8]], r"1 boxes for 2 reference images"),
    ]:
        with pytest.raises(DataError, match=r"method_options\.boxes: " + message):
            art.pipeline_inputs(pipe, ["x"], images=it.concept_images, phrases=it.entities, boxes=boxes)
    with pytest.raises(RelgenError, match="2 reference images but 1 phrases"):
        art.pipeline_inputs(pipe, ["x"], images=it.concept_images, phrases=["cat"])
    with pytest.raises(RelgenError, match="unknown method_options"):
        art.pipeline_inputs(pipe, ["x"], images=it.concept_images, phrases=it.entities, scales=[1.0])
