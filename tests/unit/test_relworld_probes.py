"""relworld pretraining language v2, the bind stage's pieces, and the diffusion-classifier probe."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from relgen.relworld import model as rb
from relgen.relworld import probes
from relgen.relworld import world as rw


def test_heldout_share_makes_relation_free_captions_no_cue():
    spec = rw.WorldSpec()
    share = spec.free_fraction / (len(spec.captioned_relations) + spec.free_fraction)
    assert share == pytest.approx(0.1 / 5.1)
    # u below the share draws the held-out relation, the rest splits evenly over the named five
    assert spec.pretraining_relation(0.0) == "inside"
    assert spec.pretraining_relation(share - 1e-9) == "inside"
    assert spec.pretraining_relation(share + 1e-9) == spec.captioned_relations[0]
    assert spec.pretraining_relation(0.999999) == spec.captioned_relations[-1]
    step = (1 - share) / 5
    assert [spec.pretraining_relation(share + (k + 0.5) * step) for k in range(5)] == list(spec.captioned_relations)
    # so among relation-free captions the held-out relation is one relation among six:
    # P(inside | free) = share / (share + (1 - share) * free_fraction) = 1 / 6
    assert share / (share + (1 - share) * spec.free_fraction) == pytest.approx(1 / 6)
    assert rw.WorldSpec(heldout_share=0.0).pretraining_relation(0.0) == spec.captioned_relations[0]
    with pytest.raises(Exception, match="heldout_share"):
        rw.WorldSpec(heldout_share=1.0)


def test_probe_scenes_captions_and_forbidden_direction():
    spec = rw.WorldSpec()
    biased = {frozenset((p.first, p.second)) for p in spec.biased}
    for s in probes.probe_scenes(spec, 12, seed=3):
        (a, b), relation = ((o.shape, o.colour) for o in s.scene.objects), s.scene.relation
        assert frozenset((a[0], b[0])) not in biased
        assert s.captions == {
            "true": rw.prompt(a, relation, b), "relation_flip": rw.prompt(a, probes.OPPOSITE[relation], b),
            "object_swap": rw.prompt(b, relation, a), "colour_swap": rw.prompt((a[0], b[1]), relation, (b[0], a[1]))}
    for s in probes.probe_scenes(spec, 12, seed=3, forbidden=True):
        a, b = (o.shape for o in s.scene.objects)
        assert spec.forbidden(s.scene.relation, a, b)
    # deterministic for a seed
    assert [s.captions for s in probes.probe_scenes(spec, 5, 1)] == [s.captions for s in probes.probe_scenes(spec, 5, 1)]


@pytest.fixture(scope="module")
def shipped():
    from diffusers import DDPMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(rb.shipped_model_folder(), safety_checker=None)
    return pipe, DDPMScheduler.from_config(pipe.scheduler.config)


def test_caption_errors_share_the_noise_between_captions(shipped):
    """Identical captions get bitwise-identical errors (same noisy inputs); the errors are the
    mean squared v error, recomputed here by hand for one scene, caption and draw."""
    pipe, sched = shipped
    scenes = probes.probe_scenes(rw.WorldSpec(), 3, seed=0)
    twins = [probes.ProbeScene(s.scene, {"true": s.captions["true"], "again": s.captions["true"],
                                         "swap": s.captions["object_swap"]}) for s in scenes]
    err = probes.caption_errors(pipe.unet, pipe.text_encoder, pipe.tokenizer, pipe.vae, sched, twins,
                                timesteps=(700,), noises=1, seed=5, batch_size=4)
    assert np.array_equal(err["true"], err["again"])
    assert not np.array_equal(err["true"], err["swap"])
    with torch.no_grad():
        image = torch.from_numpy(scenes[0].scene.render()[0]).permute(2, 0, 1)[None].float() / 127.5 - 1
        x0 = pipe.vae.encode(image).latent_dist.mean * pipe.vae.config.scaling_factor
        eps = torch.randn((3, 1, *x0.shape[1:]), generator=torch.Generator().manual_seed(5))[0]
        t = torch.tensor([700])
        ids = pipe.tokenizer([scenes[0].captions["true"]], padding="max_length", max_length=77,
                             return_tensors="pt").input_ids
        pred = pipe.unet(sched.add_noise(x0, eps, t), t, pipe.text_encoder(ids)[0]).sample
        expected = (pred - sched.get_velocity(x0, eps, t)).pow(2).mean().item()
    assert err["true"][0] == pytest.approx(expected, rel=1e-4)
    # ``kinds`` scores only the captions named, on the same noisy inputs
    some = probes.caption_errors(pipe.unet, pipe.text_encoder, pipe.tokenizer, pipe.vae, sched, twins,
                                 timesteps=(700,), noises=1, seed=5, batch_size=4, kinds=("true", "swap"))
    assert list(some) == ["true", "swap"]
    assert some["true"] == pytest.approx(err["true"], rel=1e-5) and some["swap"] == pytest.approx(err["swap"], rel=1e-5)


def test_bind_loss_is_the_logistic_loss_on_the_relative_gap(relworld_script):
    pretrain = relworld_script("pretrain")
    err, neg = torch.tensor([0.2, 0.3, 0.5]), torch.tensor([0.3, 0.3, 0.1])
    got = pretrain.bind_loss(err, neg, tau=0.05)
    # (0.2 - 0.3) / (0.05 * 0.25) = -8; 0 / ... = 0; (0.5 - 0.1) / (0.05 * 0.3) = 26.67
    expected = [math.log1p(math.exp(-8.0)), math.log(2.0), math.log1p(math.exp(0.4 / 0.015))]
    assert got.tolist() == pytest.approx(expected, rel=1e-5)
    # the scale is detached: only the gap carries a gradient
    e = torch.tensor([0.2], requires_grad=True)
    pretrain.bind_loss(e, torch.tensor([0.3]), tau=0.05).sum().backward()
    s = 1 / (1 + math.exp(8.0))  # sigmoid(-8)
    assert e.grad.item() == pytest.approx(s / (0.05 * 0.25), rel=1e-5)


def test_bind_negatives_skip_biased_pairs_and_free_captions(relworld_script):
    from transformers import CLIPTokenizer

    pretrain = relworld_script("pretrain")
    tok = CLIPTokenizer.from_pretrained(rb.shipped_model_folder() / "tokenizer")
    spec = rw.WorldSpec()

    def record(caption, a, b):
        return {"caption": caption, "objects": [{"shape": a[0], "colour": a[1]}, {"shape": b[0], "colour": b[1]}]}

    records = [record("a red triangle above a blue cross", ("triangle", "red"), ("cross", "blue")),
               record("a red circle above a blue square", ("circle", "red"), ("square", "blue")),  # biased pair
               record("a red triangle and a blue cross", ("triangle", "red"), ("cross", "blue"))]
    ids, ok = pretrain.bind_negatives(records, spec, tok)
    assert ok.tolist() == [True, False, False]
    decoded = [tok.decode(ids[0, k], skip_special_tokens=True) for k in range(2)]
    assert decoded == ["a blue cross above a red triangle", "a red triangle below a blue cross"]


def test_attention_shares_sum_to_one_and_leave_the_output_unchanged(shipped):
    pipe, sched = shipped
    scenes = probes.probe_scenes(rw.WorldSpec(), 4, seed=1)
    shares = probes.attention_shares(pipe.unet, pipe.text_encoder, pipe.tokenizer, pipe.vae, sched, scenes,
                                     timesteps=(500,))
    assert set(shares) == {"bos", "words", "eot", "padding"}
    assert sum(shares.values()) == pytest.approx(1.0, abs=1e-5)
    assert all(0 <= v <= 1 for v in shares.values())
    # the processors are restored: the UNet's output is what it was before the probe
    assert all(type(p).__name__ != "_RecordingProcessor" for p in pipe.unet.attn_processors.values())


def test_row_mask_kinds():
    ids = torch.tensor([[49406, 320, 1000, 49407, 49407, 49407]])
    eos = 49407
    assert probes.row_mask(ids, eos, "eot").tolist() == [[False, False, False, True, False, False]]
    assert probes.row_mask(ids, eos, "eot_and_padding").tolist() == [[False, False, False, True, True, True]]
    assert probes.row_mask(ids, eos, "all").all()
    with pytest.raises(ValueError, match="rows must be one of"):
        probes.row_mask(ids, eos, "padding")


def test_oracle_prompts_put_the_unseen_order_first():
    spec = rw.WorldSpec()
    orders = probes.oracle_prompts(spec, per_pair=2)
    assert len(orders) == 4 * len(spec.biased)
    for (a, r, b), (b2, r2, a2) in zip(orders[0::2], orders[1::2]):
        assert (a, r, b) == (a2, r2, b2) and spec.forbidden(r, a[0], b[0]) and not spec.forbidden(r, b[0], a[0])


class _PrefixSum(torch.nn.Module):
    """A text encoder whose row i is the sum of the embeddings of tokens 0..i: it sees every
    earlier word but not their order (a causal bag of words)."""

    def __init__(self, vocab: int):
        super().__init__()
        self.table = torch.nn.Embedding(vocab, 16)
        torch.nn.init.normal_(self.table.weight, generator=torch.Generator().manual_seed(0))

    def forward(self, ids):
        return (self.table(ids).cumsum(dim=1),)


def test_caption_margins_see_through_a_bag_of_words():
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(rb.shipped_model_folder() / "tokenizer")
    margins = probes.caption_margins(_PrefixSum(len(tok)), tok, rw.WorldSpec())
    # 5 shapes: 20 ordered pairs x (above, left of); circle/square above and triangle/diamond left
    # of, both ways round, are the biased ones
    assert {g: {c: m["captions"] for c, m in d.items()} for g, d in margins.items()} == {
        "unbiased": {"relation_flip": 36, "object_swap": 36}, "biased": {"relation_flip": 4, "object_swap": 4}}
    for group in margins.values():
        # swapping the objects keeps the bag of words: every row after the last word is the same
        swap = group["object_swap"]
        assert swap["eot"] == pytest.approx(1.0) and swap["padding"] == pytest.approx(1.0)
        # the opposite relation is another word
        assert group["relation_flip"]["eot"] < 0.999 and group["relation_flip"]["padding"] < 0.999
