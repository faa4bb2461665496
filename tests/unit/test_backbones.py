import pytest
import torch

from relgen.errors import ConfigError, RelgenError
from relgen.testing import compose, load_tiny


@pytest.mark.parametrize("name,pad_is_bang,n_enc,width", [
    ("tiny_sd15", False, 1, 32), ("tiny_sd21", True, 1, 32), ("tiny_sdxl", None, 2, 64)])
def test_tokenize_pad_eos_and_eot(name, pad_is_bang, n_enc, width):
    bb = load_tiny(name)
    ids = bb.tokenize(["a cat", "a red circle above a blue square"])
    assert len(ids) == n_enc and all(i.shape == (2, 77) for i in ids)
    for slot, slot_ids in zip(bb.slots, ids):
        assert slot_ids[0, 0] == slot.bos_id and slot_ids[0, 3] == slot.eos_id
        # pad after EOT is "!" (id of "!") for SD2 and SDXL's second tokenizer, EOS for SD1.5
        bang = slot.tokenizer.convert_tokens_to_ids("!")
        assert slot_ids[0, 4].item() == (bang if slot.pad_id == bang else slot.eos_id)
    if pad_is_bang is not None:
        assert (bb.slots[0].pad_id == bb.slots[0].tokenizer.convert_tokens_to_ids("!")) == pad_is_bang
    else:
        assert bb.slots[0].pad_id == bb.slots[0].eos_id and bb.slots[1].pad_id == 0
    assert bb.eot_positions(ids[0]).tolist() == [3, 8]
    cond = bb.encode_text(ids)
    assert cond.hidden.shape == (2, 77, width) and cond.eot.tolist() == [3, 8]
    assert (cond.pooled is None) == (n_enc == 1)


def test_sdxl_conditioning_is_penultimate_states_of_both_encoders():
    bb = load_tiny("tiny_sdxl")
    ids = bb.tokenize(["a cat on a book"])
    cond = bb.encode_text(ids)
    h1 = bb.slots[0].encoder(ids[0], output_hidden_states=True).hidden_states[-2]
    out2 = bb.slots[1].encoder(ids[1], output_hidden_states=True)
    assert torch.equal(cond.hidden, torch.cat([h1, out2.hidden_states[-2]], -1))
    assert torch.equal(cond.pooled, out2.text_embeds)
    assert bb.time_ids(2, 64, 64).tolist() == [[64, 64, 0, 0, 64, 64]] * 2


def test_v_prediction_target_equals_get_velocity_and_x0_inverts():
    bb = load_tiny("tiny_sd21")
    assert bb.prediction_type == "v_prediction"
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    t = torch.tensor([1, 400, 999])
    target = bb.training_target(x0, noise, t)
    assert torch.equal(target, bb.noise_scheduler.get_velocity(x0, noise, t))
    noisy = bb.add_noise(x0, noise, t)
    assert torch.allclose(bb.pred_x0(target, noisy, t), x0, atol=1e-4)
    bb15 = load_tiny("tiny_sd15")
    assert torch.equal(bb15.training_target(x0, noise, t), noise)
    assert torch.allclose(bb15.pred_x0(noise, bb15.add_noise(x0, noise, t), t), x0, atol=1e-3)


def test_placeholder_token_keeps_pooled_output_on_eos():
    bb = load_tiny("tiny_sdxl")
    ids_before = bb.tokenize(["a cat"])
    pooled_before = bb.encode_text(ids_before).pooled
    new = bb.add_placeholder_tokens(["<R>"], "and")
    for slot, (tid,) in zip(bb.slots, new):
        assert tid > slot.eos_id  # larger than EOS: legacy argmax pooling would land on it
        w = slot.encoder.get_input_embeddings().weight
        assert torch.equal(w[tid], w[slot.tokenizer.convert_tokens_to_ids("and</w>")])
        assert slot.encoder.config.eos_token_id == slot.eos_id
    ids = bb.tokenize(["a cat <R>"])
    assert ids[0][0, 3].item() == new[0][0]
    # the pooled output reads the EOS row: it equals the EOS-position state of the last layer
    out = bb.slots[1].encoder(ids[1])
    eos = bb.eot_positions(ids[1], slot=1)
    # pooled = text_projection(last_hidden[eos]); compare through the projection
    expected = bb.slots[1].encoder.text_projection(out.last_hidden_state[0, eos[0]])
    assert torch.allclose(out.text_embeds[0], expected, atol=1e-6)
    assert not torch.equal(pooled_before, bb.encode_text(ids).pooled)


def test_placeholder_errors():
    bb = load_tiny("tiny_sd15")
    with pytest.raises(ConfigError, match="'cat</w>' is already a token in the text_encoder tokenizer"):
        bb.add_placeholder_tokens(["cat</w>"], "and")
    # a plain word reads as its word token; added, it would also capture "and" inside "band"
    with pytest.raises(ConfigError, match="'and' already reads as the existing token 'and</w>' in the "
                                          "text_encoder tokenizer"):
        bb.add_placeholder_tokens(["and"], "and")
    with pytest.raises(ConfigError, match="must be a single token"):
        bb.add_placeholder_tokens(["<X>"], "zebracorn")


def test_placeholder_must_be_new_to_both_sdxl_tokenizers():
    from relgen.backbones.base import placeholder_conflict

    bb = load_tiny("tiny_sdxl")
    for slot in bb.slots:
        assert placeholder_conflict(slot.tokenizer, "and") == "already reads as the existing token 'and</w>'"
        assert placeholder_conflict(slot.tokenizer, "AND") == "already reads as the existing token 'and</w>'"
        assert placeholder_conflict(slot.tokenizer, "<R>") is None
    with pytest.raises(ConfigError, match=r"'and' already reads as .* in the clip_l tokenizer"):
        bb.add_placeholder_tokens(["and"], "and")


def test_save_pretrained_round_trip_through_real_loader(tmp_path):
    """A tiny model saved with save_pretrained loads through backbone=sd15's real path."""
    from relgen.backbones.loading import load_backbone

    tiny = load_tiny("tiny_sd15")
    tiny.pipeline().save_pretrained(tmp_path / "model")
    cfg = compose("backbone=sd15", f"backbone.pretrained={tmp_path / 'model'}").backbone
    bb = load_backbone(cfg)
    ids = bb.tokenize(["a cat"])
    assert torch.equal(bb.encode_text(ids).hidden, tiny.encode_text(ids).hidden)
    x, t = torch.randn(1, 4, 8, 8), torch.tensor([5])
    cond = bb.encode_text(ids)
    assert torch.equal(bb.unet_forward(x, t, cond), tiny.unet_forward(x, t, cond))
    assert type(bb.inference_scheduler()).__name__ == "PNDMScheduler"


def test_prediction_type_mismatch_is_refused(tmp_path):
    from relgen.backbones.loading import load_backbone

    load_tiny("tiny_sd21").pipeline().save_pretrained(tmp_path / "m")
    cfg = compose("backbone=sd21_base", f"backbone.pretrained={tmp_path / 'm'}").backbone
    with pytest.raises(ConfigError, match="predicts 'v_prediction'"):
        load_backbone(cfg)


def test_missing_real_weights_one_line_error(monkeypatch):
    from relgen.backbones.loading import load_backbone

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = compose("backbone=sd15").backbone
    with pytest.raises(RelgenError) as err:
        load_backbone(cfg)
    msg = str(err.value)
    assert "\n" not in msg and "runwayml/stable-diffusion-v1-5" in msg and "backbone.pretrained=" in msg


def test_single_file_missing_is_clear(tmp_path):
    from relgen.backbones.loading import load_backbone

    cfg = compose("backbone=sdxl", f"backbone.pretrained={tmp_path / 'nope.safetensors'}").backbone
    with pytest.raises(RelgenError, match="does not exist"):
        load_backbone(cfg)
