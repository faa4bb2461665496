"""RRNet method: graph construction from data, EOT adjustment, loss, schedule, artifact."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import warnings

import pytest
import torch

from relgen.data.readers import read_rrnet_folder
from relgen.data.registry import open_dataset
from relgen.errors import ConfigError
from relgen.graph._dgl import import_dgl
from relgen.plugin import StepContext
from relgen.methods.rrnet.artifact import RRNetArtifact, first_token_rows, rectify
from relgen.methods.rrnet.method import RRNet, pair_loss
from relgen.testing import compose, load_tiny
from relgen.train.timesteps import make_timestep_sampler

PAIRS = [("ARB", "BRA"), ("ARB", "A"), ("ARB", "B"), ("BRA", "B"), ("BRA", "A")]
EDGES = {  # (src, dst) per edge type of one relation graph, as RRNet's released GNN.py
    "link_oo": ([0, 1], [0, 1]),
    "link_or": ([0], [0]),
    "link_ro": ([0], [1]),
    "link_oe": ([0, 1, 0], [1, 1, 0]),
    "link_re": ([0], [1]),
}


def _cfg(*overrides: str):
    return compose("method=rrnet", "backbone=tiny_sd21", "dataset=shapes_rrnet", *overrides)


def _method(backbone, data, *overrides: str, seed: int = 0) -> RRNet:
    torch.manual_seed(seed)
    return RRNet(_cfg(*overrides).method, backbone, data)


@pytest.fixture(scope="module")
def sd21():
    return load_tiny("tiny_sd21")


@pytest.fixture(scope="module")
def shapes():
    cfg = _cfg()
    return open_dataset(cfg.dataset, cfg.cache_dir).load()


def _graph_edges(graph) -> dict[str, tuple[list[int], list[int]]]:
    out = {}
    for etype in graph.etypes:
        src, dst = graph.edges(etype=etype)
        out[etype] = (src.tolist(), dst.tolist())
    return out


# --------------------------------------------------------------------------- graph from data


def test_graph_of_official_place_sample(samples_dir, sd21):
    data = read_rrnet_folder(samples_dir / "rrnet" / "place")
    method = _method(sd21, data)
    assert (method.relation.ARB, method.relation.BRA) == ("a book is placed on a bowl",
                                                          "a bowl is placed on the book")
    g_arb, g_bra = import_dgl().unbatch(method.graph)
    for graph in (g_arb, g_bra):
        assert {nt: graph.num_nodes(nt) for nt in graph.ntypes} == {"eot": 2, "object": 2, "relation": 1}
        assert _graph_edges(graph) == EDGES

    tok, enc = sd21.slots[0].tokenizer, sd21.slots[0].encoder
    ids = {w: tok(w, add_special_tokens=False).input_ids for w in ("book", "placed", "bowl")}
    assert all(len(v) == 1 for v in ids.values())
    weight = enc.get_input_embeddings().weight
    row = {w: weight[v[0]] for w, v in ids.items()}
    # Objects [A, B] in the ARB graph, mirrored to [B, A] in the BRA graph; R in both.
    assert torch.equal(g_arb.nodes["object"].data["h"], torch.stack([row["book"], row["bowl"]]))
    assert torch.equal(g_bra.nodes["object"].data["h"], torch.stack([row["bowl"], row["book"]]))
    assert torch.equal(g_arb.nodes["relation"].data["h"], row["placed"].unsqueeze(0))
    assert torch.equal(g_bra.nodes["relation"].data["h"], row["placed"].unsqueeze(0))

    # EOT nodes: [object sentence of the subject, the prompt]; EOT = untruncated length - 1.
    def eot_output(prompt: str) -> torch.Tensor:
        pos = len(tok(prompt).input_ids) - 1
        ids_ = sd21.tokenize([prompt])
        assert int(ids_[0][0, pos]) == tok.eos_token_id != tok.pad_token_id  # SD 2 pads with "!"
        with torch.no_grad():
            return sd21.encode_text(ids_).hidden[0, pos]

    expect_arb = torch.stack([eot_output("this is a photo of book"), eot_output("a book is placed on a bowl")])
    expect_bra = torch.stack([eot_output("this is a photo of bowl"), eot_output("a bowl is placed on the book")])
    torch.testing.assert_close(g_arb.nodes["eot"].data["h"], expect_arb, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_bra.nodes["eot"].data["h"], expect_bra, rtol=1e-5, atol=1e-6)
    assert method.text.eot.tolist() == [len(tok(p).input_ids) - 1 for p in method.text.prompts]


def test_exemplars_are_preprocessed_by_vae_image_processor(samples_dir, sd21):
    from diffusers.image_processor import VaeImageProcessor
    from PIL import Image

    from relgen.data.images import load_image, load_image_vae_processor

    data = read_rrnet_folder(samples_dir / "rrnet" / "place")
    processor = VaeImageProcessor(vae_scale_factor=sd21.vae_scale)  # lanczos, as in diffusers 0.18.0
    assert processor.config.resample == "lanczos"
    path = data[0].images["ARB"][0]
    with Image.open(path) as image:
        expected = processor.preprocess(image.convert("RGB"), height=512, width=512)[0]
    ours = load_image_vae_processor(path, 512, vae_scale_factor=sd21.vae_scale)
    assert torch.equal(ours, expected)
    # a bicubic PIL resize is not what the released code trains on
    assert (load_image(path, 512, resample="bicubic") - expected).abs().max() > 0.05

    method = _method(sd21, data)
    paths = [p for key in ("A", "B", "ARB", "BRA") for p in method.relation.images[key]]
    pixels = []
    for p in paths:
        with Image.open(p) as image:
            pixels.append(processor.preprocess(image.convert("RGB"), height=64, width=64)[0])
    with torch.no_grad():
        want = torch.cat([sd21.encode_latent_dist(torch.stack(pixels[i:i + 4])) for i in range(0, len(paths), 4)])
    torch.testing.assert_close(method.latent_dists, want, rtol=1e-5, atol=1e-5)


def test_unknown_image_resample_fails_at_validation():
    from relgen.validation import validate

    with pytest.raises(ConfigError, match=r"method.image_resample='cubic' .* use one of bicubic, bilinear, lanczos"):
        validate(_cfg("method.image_resample=cubic"))


def test_multi_piece_word_warns_and_uses_first_piece(sd21):
    tok, enc = sd21.slots[0].tokenizer, sd21.slots[0].encoder
    ids = tok("rests", add_special_tokens=False).input_ids
    assert len(ids) == 3
    with pytest.warns(UserWarning, match=r"RRNet word 'rests' is 3 tokens .*only the first piece 're'"):
        rows = first_token_rows([(tok, enc)], ["placed", "rests"])
    weight = enc.get_input_embeddings().weight
    assert torch.equal(rows[1], weight[ids[0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        first_token_rows([(tok, enc)], ["placed"])  # a single-token word does not warn


def test_sdxl_nodes_concatenate_both_encoders_and_pooled_is_untouched(shapes, monkeypatch):
    bb = load_tiny("tiny_sdxl")
    method = _method(bb, shapes)
    assert [s.width for s in bb.slots] == [32, 32] and bb.cond_width == 64
    rel = method.relation
    parts = [[s.encoder.get_input_embeddings().weight[s.tokenizer(w, add_special_tokens=False).input_ids[0]]
              for s in bb.slots] for w in (rel.A, rel.R, rel.B)]
    assert torch.equal(method.text.rows, torch.stack([torch.cat(p) for p in parts]))
    assert method.relation_deltas().shape == (2, 2, 64)

    seen = []
    real = bb.unet_forward
    monkeypatch.setattr(bb, "unet_forward", lambda noisy, t, cond, **kw: seen.append(cond) or real(noisy, t, cond, **kw))
    gen = torch.Generator().manual_seed(0)
    method.training_step(method.next_batch(gen), StepContext(gen, make_timestep_sampler("uniform", 1000)))
    assert len(seen) == 2 and seen[0] is seen[1]
    assert torch.equal(seen[0].pooled, method.text.pooled[[0, 1]])  # adjust_pooled=false


# --------------------------------------------------------------------------- the adjustment


def test_rectify_changes_only_the_first_eot_row_including_bang_padding(sd21, shapes):
    method = _method(sd21, shapes)
    hidden, eot = method.text.hidden[[0, 1]], method.text.eot[[0, 1]]
    ids = sd21.tokenize(method.text.prompts[:2])[0]
    pad = sd21.slots[0].pad_id
    assert pad != sd21.slots[0].eos_id
    assert bool((ids[0, eot[0] + 1:] == pad).all())  # positions after EOT are "!" tokens
    delta = torch.randn(2, hidden.shape[-1], generator=torch.Generator().manual_seed(1))
    out = rectify(hidden, eot, delta, 0.6)
    for b in range(2):
        keep = [i for i in range(hidden.shape[1]) if i != int(eot[b])]
        assert torch.equal(out[b, keep], hidden[b, keep])
        assert torch.equal(out[b, eot[b]], hidden[b, eot[b]] + 0.6 * delta[b])
    # Per-prompt scales; λ = 0 is the identity.
    out = rectify(hidden, eot, delta, torch.tensor([0.0, 1.0]))
    assert torch.equal(out[0], hidden[0])
    assert torch.equal(out[1, eot[1]], hidden[1, eot[1]] + delta[1])


def test_rectify_eot_and_padding_moves_every_row_from_the_first_eot_on():
    hidden = torch.arange(2 * 5 * 3, dtype=torch.float32).view(2, 5, 3)
    eot = torch.tensor([2, 4])
    delta = torch.tensor([[1.0, 2.0, 3.0], [-1.0, 0.0, 1.0]])
    out = rectify(hidden, eot, delta, torch.tensor([0.5, 2.0]), "eot_and_padding")
    expected = hidden.clone()
    expected[0, 2:] += 0.5 * delta[0]
    expected[1, 4:] += 2.0 * delta[1]
    assert torch.equal(out, expected)
    # the released rows: the first EOT row only
    only = rectify(hidden, eot, delta, torch.tensor([0.5, 2.0]))
    assert torch.equal(only[0, 3:], hidden[0, 3:]) and torch.equal(only[0, 2], hidden[0, 2] + 0.5 * delta[0])
    with pytest.raises(ConfigError, match="method.edit_rows"):
        rectify(hidden, eot, delta, 1.0, "padding")


def test_eot0_feature_is_ignored_unless_eot_self_loops(sd21, shapes):
    def moved(method, row):  # the method's own graph with one EOT output changed
        hidden = method.text.hidden.clone()
        e = method.text.eot[row]
        hidden[row, e] = hidden[row, e] * -3.0 + 1.0
        with torch.no_grad():
            return method.relation_deltas(method.build_graph(dataclasses.replace(method.text, hidden=hidden)))

    faithful = _method(sd21, shapes)
    with torch.no_grad():
        base = faithful.relation_deltas()
    # Row 2 = "this is a photo of {A}", the eot0 feature of the ARB graph.
    assert torch.equal(moved(faithful, 2), base)  # no delta changes, bit for bit

    loops = _method(sd21, shapes, "method.eot_self_loops=true")
    with torch.no_grad():
        base = loops.relation_deltas()
    after = moved(loops, 2)
    assert (after[0, 0] - base[0, 0]).norm() > 0.1 * base[0, 0].norm()  # A's object-prompt delta moves
    assert torch.equal(after[0, 1], base[0, 1])  # no edge carries eot0 to the ARB node
    after = moved(loops, 0)  # the ARB prompt's own EOT output
    assert (after[0, 1] - base[0, 1]).norm() > 0.1 * base[0, 1].norm()


# --------------------------------------------------------------------------- loss and schedule


def test_pair_loss_hand_computed_and_sign():
    target = torch.zeros(2, 4, 2, 2)
    loss, pos, neg = pair_loss(target + 1, target, target + 2, target)
    assert (pos.item(), neg.item(), loss.item()) == (1.0, 4.0, 10 * 1 - 2 * 4)
    worse_neg, _, neg3 = pair_loss(target + 1, target, target + 3, target)
    assert (neg3.item(), worse_neg.item()) == (9.0, 10 * 1 - 2 * 9)
    assert worse_neg < loss  # a larger negative MSE lowers the loss
    clamped, _, raw = pair_loss(target + 1, target, target + 3, target, neg_clamp=5.0)
    assert (clamped.item(), raw.item()) == (10 * 1 - 2 * 5, 9.0)
    custom, _, _ = pair_loss(target + 1, target, target + 2, target, pos_weight=1.0, neg_weight=0.5)
    assert custom.item() == 1 - 0.5 * 4


def test_five_pair_schedule_in_official_order_with_epoch_draws(sd21, shapes):
    method = _method(sd21, shapes)
    rel = method.relation
    assert {k: len(v) for k, v in rel.images.items()} == {"A": 3, "B": 3, "ARB": 3, "BRA": 3}
    gen = torch.Generator().manual_seed(7)
    batches = [method.next_batch(gen) for _ in range(10)]

    ref = torch.Generator().manual_seed(7)  # one draw per folder, A, B, ARB, BRA, per epoch
    draws = [{k: int(torch.randint(0, 3, (1,), generator=ref)) for k in ("A", "B", "ARB", "BRA")}
             for _ in range(2)]
    assert draws[0] != draws[1]
    assert torch.equal(gen.get_state(), ref.get_state())  # nothing drawn mid-epoch
    offsets = {"A": 0, "B": 3, "ARB": 6, "BRA": 9}
    expected = [(e, p, PAIRS[p], (offsets[PAIRS[p][0]] + draws[e][PAIRS[p][0]],
                                  offsets[PAIRS[p][1]] + draws[e][PAIRS[p][1]]))
                for e in range(2) for p in range(5)]
    assert [(b["epoch"], b["pair"], b["prompts"], b["images"]) for b in batches] == expected
    assert expected[:5] == [
        (0, 0, ("ARB", "BRA"), (6 + draws[0]["ARB"], 9 + draws[0]["BRA"])),
        (0, 1, ("ARB", "A"), (6 + draws[0]["ARB"], 0 + draws[0]["A"])),
        (0, 2, ("ARB", "B"), (6 + draws[0]["ARB"], 3 + draws[0]["B"])),
        (0, 3, ("BRA", "B"), (9 + draws[0]["BRA"], 3 + draws[0]["B"])),
        (0, 4, ("BRA", "A"), (9 + draws[0]["BRA"], 0 + draws[0]["A"])),
    ]
    # The latents rows belong to the right folders.
    paths = [p for k in ("A", "B", "ARB", "BRA") for p in rel.images[k]]
    assert paths[batches[1]["images"][1]].parent.name == rel.A
    assert paths[batches[3]["images"][0]].parent.name == rel.BRA_dir

    # The schedule position and the epoch's draws are part of the state.
    method.epoch, method.pair = 0, 0
    gen = torch.Generator().manual_seed(7)
    for _ in range(7):
        method.next_batch(gen)
    state, gen_state = method.state_dict(), gen.get_state()
    rest = [method.next_batch(gen)["images"] for _ in range(3)]
    other = _method(sd21, shapes, seed=1)
    other.load_state_dict(state)
    gen.set_state(gen_state)
    assert [other.next_batch(gen)["images"] for _ in range(3)] == rest


def test_training_step_uses_setup_features_backbone_target_and_one_noise(sd21, shapes, monkeypatch):
    method = _method(sd21, shapes)

    def refuse(*args, **kwargs):
        raise AssertionError("a frozen encoder ran inside the training step")

    monkeypatch.setattr(sd21.slots[0].encoder, "forward", refuse)
    monkeypatch.setattr(sd21.vae, "encode", refuse)
    calls = []
    real = sd21.unet_forward

    def spy(noisy, t, cond, **kwargs):
        out = real(noisy, t, cond, **kwargs)
        calls.append((noisy.clone(), t.clone(), cond, out.detach().clone()))
        return out

    monkeypatch.setattr(sd21, "unet_forward", spy)
    sampler = make_timestep_sampler("relation_focal", 1000, 0.5)
    gen = torch.Generator().manual_seed(3)
    ac = sd21.noise_scheduler.alphas_cumprod
    hidden, eot = method.text.hidden, method.text.eot
    with torch.no_grad():
        deltas = method.relation_deltas()
    for pair in range(2):
        calls.clear()
        batch = method.next_batch(gen)
        replay = torch.Generator()
        replay.set_state(gen.get_state())
        out = method.training_step(batch, StepContext(gen, sampler))
        z = sd21.sample_latents(method.latent_dists[list(batch["images"])], replay)
        noise = torch.randn(z.shape, generator=replay)
        t = sampler(1, replay)
        (noisy_pos, t_pos, cond, out_pos), (noisy_neg, t_neg, cond_neg, out_neg) = calls
        assert t_pos.tolist() == t_neg.tolist() == [int(t)] * 2  # one timestep for the pair
        a = ac[t].view(1, 1, 1, 1)
        assert torch.equal(noisy_pos, a.sqrt() * z + (1 - a).sqrt() * noise)
        assert torch.equal(noisy_neg, a.sqrt() * z.flip(0) + (1 - a).sqrt() * noise)  # same noise
        # tiny_sd21 predicts v: v = √ᾱ·ε − √(1−ᾱ)·x0, on the swapped latents for the negative.
        v_pos = a.sqrt() * noise - (1 - a).sqrt() * z
        v_neg = a.sqrt() * noise - (1 - a).sqrt() * z.flip(0)
        l_pos = ((out_pos - v_pos) ** 2).mean()
        l_neg = ((out_neg - v_neg) ** 2).mean()
        torch.testing.assert_close(out.loss.detach(), 10 * l_pos - 2 * l_neg, rtol=1e-5, atol=1e-6)
        assert out.logs["loss_pos"] == pytest.approx(l_pos.item(), rel=1e-5)
        assert out.logs["loss_neg"] == pytest.approx(l_neg.item(), rel=1e-5)
        assert cond_neg is cond
        # Only the first EOT rows differ from the cached conditioning.
        rows = [("ARB", "BRA", "A", "B").index(k) for k in batch["prompts"]]
        for b, r in enumerate(rows):
            keep = [i for i in range(hidden.shape[1]) if i != int(eot[r])]
            assert torch.equal(cond.hidden[b, keep], hidden[r, keep])
        if pair == 0:  # ARB and BRA: eot1 deltas of their own graphs, λ = 1, no noise
            torch.testing.assert_close(cond.hidden[0, eot[0]], hidden[0, eot[0]] + deltas[0, 1])
            torch.testing.assert_close(cond.hidden[1, eot[1]], hidden[1, eot[1]] + deltas[1, 1])
            arb, bra = hidden[0, eot[0]] + deltas[0, 1], hidden[1, eot[1]] + deltas[1, 1]
            cos = torch.nn.functional.cosine_similarity(arb, bra, dim=0).item()
            assert out.logs["eot_cos_arb_bra"] == pytest.approx(cos, rel=1e-5)
        else:  # ARB vs A: A's delta is eot0 of the ARB graph plus 0.05·N(0, I)
            extra = torch.randn(deltas.shape[-1], generator=replay)
            torch.testing.assert_close(cond.hidden[1, eot[2]], hidden[2, eot[2]] + deltas[0, 0] + 0.05 * extra)
        out.loss.backward()
    grads = [p.grad for p in method.gnn.parameters()]
    assert sum(float(g.abs().sum()) for g in grads if g is not None) > 0


def test_bad_method_options_are_config_errors(shapes):
    with pytest.raises(ConfigError, match="method.relation='nope'.*known: above"):
        RRNet.check_data(_cfg("method.relation=nope").method, shapes)
    with pytest.raises(ConfigError, match="batch_size=2"):
        RRNet.check_data(_cfg("method.batch_size=2").method, shapes)
    with pytest.raises(ConfigError, match="adjust_pooled=true is not implemented"):
        RRNet.check_data(_cfg("method.adjust_pooled=true").method, shapes)


# --------------------------------------------------------------------------- artifact


def _train_a_little(method: RRNet, steps: int = 2) -> None:
    opt = torch.optim.AdamW(method.gnn.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    sampler = make_timestep_sampler("relation_focal", 1000, 0.5)
    for _ in range(steps):
        out = method.training_step(method.next_batch(gen), StepContext(gen, sampler))
        out.loss.backward()
        opt.step()
        opt.zero_grad()


def test_export_and_official_checkpoint_give_the_same_deltas(sd21, shapes, tmp_path):
    method = _method(sd21, shapes)
    _train_a_little(method)
    files = method.export(tmp_path)
    names = {role: f.name for role, f in files.items()}
    assert names == {"network": "rrnet-above.safetensors", "relation": "relation.json"}  # the relation folder
    exported = RRNet.load_artifact(tmp_path, {"method_config": {}, "files": names})
    from safetensors.torch import load_file

    assert set(load_file(str(files["network"]))) == set(method.gnn.state_dict())  # DGL key names
    official_path = tmp_path / "gat_placed"
    torch.save(method.gnn.state_dict(), official_path)
    rel = method.relation
    official = RRNetArtifact.from_official(official_path, A=rel.A, R=rel.R, B=rel.B, width=32)

    pipe = sd21.pipeline()
    prompts = [rel.ARB, rel.BRA]
    ours = exported.prompt_deltas(pipe, prompts)
    theirs = official.prompt_deltas(pipe, prompts)
    assert torch.equal(ours, theirs)
    with torch.no_grad():
        trained = method.relation_deltas()[:, 1]  # [ARB's, BRA's] from the training graph
    torch.testing.assert_close(ours, trained, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(ours[0], ours[1])  # the swapped prompt gets the swapped graph


def test_pipeline_inputs_edit_only_the_eot_row(sd21, shapes):
    method = _method(sd21, shapes)
    artifact = method.live_artifact()
    pipe = sd21.pipeline()
    rel = method.relation

    def encode(prompts):
        return pipe.encode_prompt(prompt=prompts, device=pipe.device, num_images_per_prompt=1,
                                  do_classifier_free_guidance=True)

    prompts = [rel.ARB, rel.BRA]
    plain, negative = encode(prompts)
    inputs = artifact.pipeline_inputs(pipe, prompts, scales=[0.6, 1.0])
    assert set(inputs) == {"prompt_embeds", "negative_prompt_embeds"}
    assert torch.equal(inputs["negative_prompt_embeds"], negative)  # the pipeline's own "" encoding
    eot = [len(pipe.tokenizer(p).input_ids) - 1 for p in prompts]
    deltas = artifact.prompt_deltas(pipe, prompts)
    for b, scale in enumerate([0.6, 1.0]):
        keep = [i for i in range(plain.shape[1]) if i != eot[b]]
        assert torch.equal(inputs["prompt_embeds"][b, keep], plain[b, keep])
        torch.testing.assert_close(inputs["prompt_embeds"][b, eot[b]], plain[b, eot[b]] + scale * deltas[b])
    # λ = 0 reproduces the plain pipeline exactly.
    assert torch.equal(artifact.pipeline_inputs(pipe, prompts, scale=0.0)["prompt_embeds"], plain)
    # The relation's own BRA prompt gets the swapped roles.
    assert artifact.words_for(rel.BRA) == (rel.B, rel.R, rel.A)

    # Any prompt with its own words (the released demo: user-given A, R, B; λ 0.6 default).
    other = "a star is below a cross"
    user = artifact.pipeline_inputs(pipe, [other], A="star", R="below", B="cross")
    base = encode([other])[0]
    pos = len(pipe.tokenizer(other).input_ids) - 1
    delta = artifact.prompt_deltas(pipe, [other], A="star", R="below", B="cross")[0]
    torch.testing.assert_close(user["prompt_embeds"][0, pos], base[0, pos] + 0.6 * delta)
    assert not torch.allclose(delta, deltas[0])
    with pytest.raises(ConfigError, match="does not contain the A word 'circle'"):
        artifact.pipeline_inputs(pipe, ["a dog is above a cat"])
    with pytest.raises(ConfigError, match="unknown RRNet option"):
        artifact.pipeline_inputs(pipe, [rel.ARB], lam=1.0)


def test_modules_do_not_import_dgl():
    code = ("import sys, relgen.methods.rrnet.method, relgen.methods.rrnet.artifact, relgen.methods.rrnet.config\n"
            "assert 'dgl' not in sys.modules, 'dgl imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=600, capture_output=True)


def test_paper_experiment_composes_and_dry_runs(tmp_path, capsys):
    from relgen.data.shapes import write_shapes_rrnet
    from relgen.run import run_training

    root = write_shapes_rrnet(tmp_path / "rr", relations=[("circle", "above", "square"), ("star", "below", "cross")],
                              images_per_folder=1, size=16)
    cfg = compose("experiment=rrnet_paper", f"dataset.root={root}", "dry_run=true")
    assert (cfg.method.name, cfg.backbone.name, cfg.dataset.name) == ("rrnet", "sd21_base", "rrnet_folder")
    assert (cfg.backbone.resolution, cfg.backbone.prediction_type) == (512, "epsilon")
    m = cfg.method
    assert (m.lr, m.weight_decay, m.max_steps, m.batch_size, m.grad_accum, m.lr_scheduler) == \
        (3e-4, 0.01, 500, 1, 1, "constant")
    assert (m.timestep_sampler, m.focal_alpha, m.pos_weight, m.neg_weight, m.noise_weight) == \
        ("relation_focal", 0.5, 10.0, 2.0, 0.05)
    assert (m.sample_steps, m.sample_guidance, m.inference_scale, m.hidden_size, m.num_heads) == (30, 7.5, 0.6, 512, 2)
    # the hub's sd21-base is not here: the dry run says so at once; with a local folder it passes
    with pytest.raises(ConfigError, match="'stabilityai/stable-diffusion-2-1-base' is not in the Hugging Face cache"):
        run_training(cfg, str(tmp_path / "run"))
    from conftest import local_weights

    cfg = compose("experiment=rrnet_paper", f"dataset.root={root}", "dry_run=true",
                  f"backbone.pretrained={local_weights('tiny_sd21')}")
    assert run_training(cfg, str(tmp_path / "run")) == 0  # no weights loaded
    assert "2 relations" in capsys.readouterr().out
    # A relation name that is not in the dataset fails before any weights load.
    with pytest.raises(ConfigError, match="method.relation='beside'.*known: above, below"):
        run_training(compose("experiment=rrnet_paper", f"dataset.root={root}", "dry_run=true",
                             f"backbone.pretrained={local_weights('tiny_sd21')}", "method.relation=beside"),
                     str(tmp_path / "run2"))
    # The bare run: the shipped relworld model on relworld's object-swapped prompt pairs.
    cfg = compose("method=rrnet")
    assert (cfg.backbone.name, cfg.dataset.name) == ("relworld", "relworld_rrnet")


def test_object_sentence_keeps_the_word_as_given():
    from relgen.methods.rrnet.artifact import object_sentence

    # RRNet's released dataset.py: f"this is a photo of {obj}", no lower-casing
    assert object_sentence("Book") == "this is a photo of Book"
    assert object_sentence("toy truck", "a {} here") == "a toy truck here"
