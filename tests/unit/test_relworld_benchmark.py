"""The relworld benchmark's suites and summaries (on ground-truth renders instead of a model)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from relgen.relworld import world as rw
from relgen.relworld.detector import Detector

SPEC = rw.WorldSpec()
DET = Detector(SPEC)


@pytest.fixture(scope="module")
def bench(relworld_script):
    return relworld_script("benchmark")


def _read(prompt, image):
    return DET.read(image, prompt.a, prompt.relation, prompt.b)


def test_suites_are_deterministic_and_well_formed(bench):
    suites = {s.name: s for s in bench.build_suites(SPEC, pairs=4, seed=0)}
    again = {s.name: s for s in bench.build_suites(SPEC, pairs=4, seed=0)}
    assert [p.text for p in suites["seen"].prompts] == [p.text for p in again["seen"].prompts]
    seen = suites["seen"].prompts
    assert len(seen) == 4 * len(SPEC.captioned_relations)
    for p in seen:
        assert p.relation != SPEC.heldout_relation and not SPEC.forbidden(p.relation, p.a[0], p.b[0])
        assert p.text == rw.prompt(p.a, p.relation, p.b)
    for name in ("swapped", "biased"):
        ps = suites[name].prompts
        assert suites[name].swapped and len(ps) % 2 == 0
        for ab, ba in zip(ps[0::2], ps[1::2]):
            assert (ab.a, ab.relation, ab.b) == (ba.b, ba.relation, ba.a)
    # each biased pair: one prompt of the pair is the direction pretraining never shows
    for ab, ba in zip(suites["biased"].prompts[0::2], suites["biased"].prompts[1::2]):
        assert SPEC.forbidden(ab.relation, ab.a[0], ab.b[0]) != SPEC.forbidden(ba.relation, ba.a[0], ba.b[0])
    assert {p.relation for p in suites["heldout"].prompts} == {"inside"}


def test_summaries_on_faithful_and_biased_images(bench):
    suites = {s.name: s for s in bench.build_suites(SPEC, pairs=2, seed=1)}
    biased = suites["biased"]
    rng = np.random.default_rng(0)
    faithful, ignoring = [], []
    for p in biased.prompts:
        images = [rw.sample_scene(rng, SPEC, p.relation, p.a, p.b).render()[0] for _ in range(3)]
        faithful.append([_read(p, im) for im in images])
        # a model with the pretraining bias draws the allowed direction whatever the prompt says
        a, b = (p.b, p.a) if SPEC.forbidden(p.relation, p.a[0], p.b[0]) else (p.a, p.b)
        images = [rw.sample_scene(rng, SPEC, p.relation, a, b).render()[0] for _ in range(3)]
        ignoring.append([_read(p, im) for im in images])
    biased.readings = faithful
    m = bench.summarize(biased)
    assert m["images"] == 3 * len(biased.prompts)
    assert m["relation_accuracy"].value == 1.0 and m["direction_accuracy"].value == 1.0
    assert m["direction_accuracy"].n == 3 * len(biased.prompts) // 2
    biased.readings = ignoring
    m = bench.summarize(biased)
    assert m["relation_accuracy"].value == 0.5 and m["object_accuracy"].value == 1.0
    assert m["direction_accuracy"].value == 0.0


def test_both_readings_of_ground_truth_and_of_wrong_shapes(bench):
    suite = next(s for s in bench.build_suites(SPEC, pairs=1, seed=2) if s.name == "swapped")
    rng = np.random.default_rng(1)
    suite.images = [[rw.sample_scene(rng, SPEC, p.relation, p.a, p.b).render()[0] for _ in range(2)]
                    for p in suite.prompts]
    bench.read_all(suite, DET)
    m = bench.summarize(suite)
    for key in ("relation_accuracy", "relation_accuracy_colour", "direction_accuracy", "direction_accuracy_colour"):
        assert m[key].value == 1.0, key
    # the same layouts drawn with the other shapes: strict finds nothing, colour still scores layout
    other = {s: t for s, t in zip(SPEC.shapes, SPEC.shapes[1:] + SPEC.shapes[:1])}
    suite.images = [[rw.sample_scene(rng, SPEC, p.relation, (other[p.a[0]], p.a[1]), (other[p.b[0]], p.b[1]))
                     .render()[0] for _ in range(2)] for p in suite.prompts]
    bench.read_all(suite, DET)
    m = bench.summarize(suite)
    assert m["object_accuracy"].value == 0.0 and m["relation_accuracy_colour"].value == 1.0


@pytest.mark.slow
def test_pretrain_resume_is_bitwise_and_exports_a_loadable_model(tmp_path):
    import subprocess

    import torch

    from relgen.relworld import model as rb

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "relworld" / "pretrain.py"
    common = ["--num-images", "40", "--text-steps", "3", "--text-batch", "4", "--vae-steps", "3", "--vae-batch", "4",
              "--batch", "4", "--decay-steps", "0", "--refine-decay-steps", "0"]  # LR tails depend on the steps

    def run(work, steps, refine_steps):
        proc = subprocess.run([sys.executable, str(script), "--work", str(work), "--out", str(work / "out"),
                               "--steps", str(steps), "--refine-steps", str(refine_steps), *common],
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc

    run(tmp_path / "a", 6, 4)
    run(tmp_path / "b", 3, 0)
    run(tmp_path / "b", 6, 2)  # resumes the diffusion stage at step 3, then refines 2 steps
    run(tmp_path / "b", 6, 4)  # resumes the refinement at step 2
    for stage, steps in (("diffusion", 6), ("refine", 4)):
        a = torch.load(tmp_path / "a" / f"{stage}.pt", weights_only=True)
        b = torch.load(tmp_path / "b" / f"{stage}.pt", weights_only=True)
        assert a["step"] == b["step"] == steps
        for key in ("unet", "ema"):
            assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), (stage, key)
    assert rb.is_trained(tmp_path / "a" / "out")
    config = json.loads((tmp_path / "a" / "out" / "scheduler" / "scheduler_config.json").read_text())
    assert (config["_class_name"], config["prediction_type"], config["rescale_betas_zero_snr"]) == (
        "DDIMScheduler", "v_prediction", True)
    # a refinement of another diffusion checkpoint is refused, not silently continued
    proc = subprocess.run([sys.executable, str(script), "--work", str(tmp_path / "b"), "--out", str(tmp_path / "o"),
                           "--steps", "7", "--refine-steps", "5", *common], capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0 and "refines the diffusion stage's step 6, but it is at step 7" in proc.stderr


def test_hard_negatives_swap_objects_and_colours(relworld_script):
    pretrain = relworld_script("pretrain")
    objects = [{"shape": "circle", "colour": "red"}, {"shape": "square", "colour": "blue"}]
    record = {"caption": "the blue square is beneath the red circle", "objects": objects}
    assert pretrain.hard_negatives(record, SPEC) == ("the red circle is beneath the blue square",
                                                     "the red square is beneath the blue circle",
                                                     "the blue square is above the red circle")
    record = {"caption": "a photo of a red circle to the left of a blue square", "objects": objects}
    assert pretrain.hard_negatives(record, SPEC)[2] == "a photo of a red circle to the right of a blue square"
    record = {"caption": "red circle on a blue square", "objects": objects}
    assert pretrain.hard_negatives(record, SPEC)[2] == "red circle below a blue square"
    assert pretrain.hard_negatives({"caption": "a red circle and a blue square", "objects": objects}, SPEC) is None
    assert pretrain.hard_negatives({"caption": "a red circle", "objects": objects[:1]}, SPEC) is None
    assert pretrain.hard_negatives({"caption": "", "objects": objects[:1]}, SPEC) is None


def test_layout_targets_name_the_leading_object_whatever_the_phrasing(relworld_script):
    pretrain = relworld_script("pretrain")
    red_circle, blue_square = {"shape": "circle", "colour": "red"}, {"shape": "square", "colour": "blue"}
    objects = [red_circle, blue_square]  # the scene's A and B
    records = [
        {"caption": "a red circle above a blue square", "relation": "above", "objects": objects},
        {"caption": "the blue square is beneath the red circle", "relation": "above", "objects": objects},
        {"caption": "a red circle under a blue square", "relation": "below", "objects": objects},
        {"caption": "red circle right of blue square", "relation": "right_of", "objects": objects},
        {"caption": "a red circle on a blue square", "relation": "on_top_of", "objects": objects},
        {"caption": "a red circle and a blue square", "relation": "inside", "objects": objects},
        {"caption": "a red circle", "relation": None, "objects": objects[:1]},
        {"caption": "", "relation": None, "objects": objects[:1]},
    ]
    # relation class (above 0, on top of 1, left of 2, relation-free 3, one object 4), then the
    # leading (upper or left) object's shape and colour index, then the trailing one's
    assert pretrain.layout_targets(records, SPEC).tolist() == [
        [0, 0, 0, 1, 2], [0, 0, 0, 1, 2], [0, 1, 2, 0, 0], [2, 1, 2, 0, 0], [1, 0, 0, 1, 2],
        [3, -100, -100, -100, -100], [4, -100, -100, -100, -100], [-100] * 5]


def test_layout_targets_of_world_3_name_inside_and_leave_unnamed_colours_out(relworld_script):
    pretrain = relworld_script("pretrain")
    spec = rw.world_spec(3)
    red_circle, blue_square = {"shape": "circle", "colour": "red"}, {"shape": "square", "colour": "blue"}
    bare_square = dict(blue_square, colour_named=False)
    records = [
        {"caption": "a red circle inside a blue square", "relation": "inside", "objects": [red_circle, blue_square]},
        {"caption": "a red circle in a square", "relation": "inside", "objects": [red_circle, bare_square]},
        {"caption": "a square below a red circle", "relation": "above", "objects": [red_circle, bare_square]},
        {"caption": "a red circle and a blue square", "relation": "inside", "objects": [red_circle, blue_square]},
    ]
    # inside is class 5 with the inner object (A) leading; a colour the caption leaves out has no target
    assert pretrain.layout_targets(records, spec).tolist() == [
        [5, 0, 0, 1, 2], [5, 0, 0, 1, -100], [0, 0, 0, 1, -100], [3, -100, -100, -100, -100]]
    assert [h.out_features for h in pretrain.layout_heads(8, spec)] == [6, 5, 6, 5, 6]
    assert [h.out_features for h in pretrain.layout_heads(8, SPEC)] == [5, 5, 6, 5, 6]  # world 2 as before


def test_biased_flips_are_the_unseen_direction_of_biased_pairs_only(relworld_script):
    pretrain = relworld_script("pretrain")
    circle, square, cross = ({"shape": s, "colour": c} for s, c in (("circle", "red"), ("square", "blue"),
                                                                    ("cross", "green")))
    records = [
        {"caption": "a red circle above a blue square", "relation": "above", "objects": [circle, square]},
        {"caption": "the blue square is beneath the red circle", "relation": "above", "objects": [circle, square]},
        {"caption": "a red circle to the left of a blue square", "relation": "left_of", "objects": [circle, square]},
        {"caption": "a red circle above a green cross", "relation": "above", "objects": [circle, cross]},
        {"caption": "a red circle and a blue square", "relation": "above", "objects": [circle, square]},
    ]
    # SPEC's circle is always above the square; side by side and other pairs are not biased
    assert pretrain.biased_flips(records, SPEC) == [(0, "a red circle below a blue square"),
                                                    (1, "the blue square is above the red circle")]


def test_layout_loss_averages_each_readout_over_the_chosen_rows(relworld_script):
    import math

    pretrain = relworld_script("pretrain")
    heads = pretrain.layout_heads(2, SPEC)  # class counts 5, 5 shapes, 6 colours, 5, 6
    for head in heads:
        torch.nn.init.zeros_(head.weight), torch.nn.init.zeros_(head.bias)
    hidden = torch.randn(2, 3, 2)
    rows = torch.tensor([[False, True, True], [False, False, True]])
    targets = torch.tensor([[0, 0, 0, 1, 2], [3, -100, -100, -100, -100]])
    loss, accuracy = pretrain.layout_loss(hidden, rows, targets, heads)
    # uniform logits: each head's cross-entropy is log(classes), whichever rows it averages
    assert loss.item() == pytest.approx(3 * math.log(5) + 2 * math.log(6), rel=1e-6)
    # argmax 0 is right for the first record's relation, shape and colour (2 rows x 3 of 5
    # readouts) and for none of the second's single readout (1 row): 6 of 11
    assert accuracy.item() == pytest.approx(6 / 11)


@pytest.fixture(scope="module")
def methods(relworld_script):
    return relworld_script("methods")


def test_method_benchmark_splits_unordered_pairs_and_holds_them_out():
    from relgen.relworld import bench

    train, held = bench.split_unordered_pairs(SPEC, seed=0)
    unordered = lambda pairs: {frozenset(p) for p in pairs}  # noqa: E731
    biased = {frozenset((p.first, p.second)) for p in SPEC.biased}
    assert len(unordered(train)) == len(unordered(held)) == 4  # the 8 unbiased unordered pairs, halved
    assert not unordered(train) & unordered(held) and not (unordered(train) | unordered(held)) & biased
    assert all((b, a) in train for a, b in train) and all((b, a) in held for a, b in held)  # both orders
    assert bench.split_unordered_pairs(SPEC, seed=0) == (train, held)
    prompts = bench.inversion_prompts(SPEC, 24, 0, held, "inside")
    assert len(prompts) == 24 and len({p.text for p in prompts}) == 24
    assert all((p.a[0], p.b[0]) in held and p.relation == "inside" and p.a[1] != p.b[1] for p in prompts)
    pair = SPEC.biased[0]  # pretraining shows circle above square only
    rect = bench.rectification_prompts(SPEC, pair, 3, 0, train_colours=("red", "blue"))
    assert len(rect) == 6
    for unseen, seen in zip(rect[0::2], rect[1::2]):
        assert SPEC.forbidden(unseen.relation, unseen.a[0], unseen.b[0])  # the direction never shown
        assert not SPEC.forbidden(seen.relation, seen.a[0], seen.b[0])
        assert (unseen.a, unseen.b) == (seen.b, seen.a) and (unseen.a[1], unseen.b[1]) != ("red", "blue")
        assert unseen.text == f"a {unseen.a[1]} square is above a {unseen.b[1]} circle"


def test_inside_pairs_split_per_container_into_new_pairs_of_seen_shapes():
    from relgen.relworld import bench

    train, held = bench.split_inside_pairs(SPEC, ("square", "diamond"), seed=0)
    assert len(train) == len(held) == 4 and not set(train) & set(held)
    assert sorted(train + held) == sorted((i, o) for o in ("square", "diamond") for i in SPEC.shapes if i != o)
    for outer in ("square", "diamond"):  # each container on both sides of the split
        assert sum(o == outer for _, o in train) == sum(o == outer for _, o in held) == 2
    assert bench.split_inside_pairs(SPEC, ("square", "diamond"), seed=0) == (train, held)
    assert bench.split_inside_pairs(SPEC, ("square", "diamond"), seed=1) != (train, held)
    prompts = bench.inversion_prompts(SPEC, 8, 0, held, "inside")
    assert [(p.a[0], p.b[0]) for p in prompts] == held * 2 and all(p.text.split()[3] == "inside" for p in prompts)


def test_a_prompt_naming_the_shape_alone_finds_it_in_any_colour_but_the_partners():
    from dataclasses import replace

    from relgen.relworld import bench
    from relgen.relworld.detector import Detector, DetectorConfig

    scene = rw.sample_scene(np.random.default_rng(3), SPEC, "on_top_of", ("cross", "cyan"), ("circle", "red"))
    image = scene.render()[0]
    strict, colour = Detector(SPEC), Detector(SPEC, DetectorConfig(match_shape=False))
    reading = strict.read(image, ("cross", None), "on_top_of", ("circle", "red"))
    assert reading.a.colour == "cyan" and reading.a.shape == "cross" and reading.relation_ok
    assert bench.identity_kept([reading], "cyan") == [True] and bench.identity_kept([reading], "blue") == [False]
    assert colour.read(image, ("cross", None), "on_top_of", ("circle", "red")).relation_ok
    # the partner's colour is never taken for A, and a wrong shape is not the class
    assert strict.read(image, ("circle", None), "on_top_of", ("circle", "red")).a is None
    assert strict.read(image, ("square", None), "on_top_of", ("circle", "red")).a is None
    # the cross drawn blue: found, but not the cyan identity
    blue = replace(scene, objects=(replace(scene.objects[0], colour="blue"), scene.objects[1])).render()[0]
    r = strict.read(blue, ("cross", None), "on_top_of", ("circle", "red"))
    assert r.a.colour == "blue" and bench.identity_kept([r], "cyan") == [False]
    assert bench.identity_object(bench.Settings(identity="cyan cross"), SPEC) == ("cross", "cyan")
    with pytest.raises(Exception, match="'<colour> <shape>'"):
        bench.identity_object(bench.Settings(identity="cross cyan"), SPEC)


def test_each_task_runs_in_its_world_on_that_worlds_model():
    from relgen.relworld import bench

    spec, s = bench.task_settings(bench.Settings(), "inversion")
    assert spec.heldout_relation is None and spec.colourless_fraction == 0.15
    assert s.model == "pkg://relgen.relworld/weights3"
    spec, s = bench.task_settings(bench.Settings(), "rectification")
    assert spec == rw.WorldSpec() and s.model is None
    assert bench.task_settings(bench.Settings(model="/m"), "customisation")[1].model == "/m"
    assert set(bench.TASK_WORLDS) == set(bench.TASKS)


def _fake_task(flags: dict[str, list[list[bool]]]):
    """A one-training-seed task whose conditions read ``flags[cond][prompt][seed]``."""
    from relgen.relworld import bench
    from relgen.relworld.detector import Reading

    def reading(ok: bool) -> Reading:
        return Reading("above", object(), object(), "above" if ok else "below")

    task = bench.TaskResult("inversion", [bench.Prompt(("circle", "red"), "above", ("square", "blue"), "p")] * 2,
                            [bench.Condition(name, "written") for name in flags])
    task.readings = {name: {"strict": [[[reading(x) for x in row] for row in rows]]} for name, rows in flags.items()}
    return task


def test_claims_pair_conditions_on_prompts_and_seeds():
    from relgen.relworld import bench

    task = _fake_task({"ReVersion": [[True, True, False], [True, False, False]],
                       "textual inversion": [[True, False, False], [False, False, False]]})
    assert bench.outcomes(task, "ReVersion", "relation") == ([1.0, 1.0, 0.0, 1.0, 0.0, 0.0], [0, 0, 0, 1, 1, 1])
    [claim] = bench.claims({"inversion": task}, bench.Settings(), {"c": ("inversion", "ReVersion",
                                                                          "textual inversion", "relation")}).values()
    assert claim["method"] == pytest.approx(0.5) and claim["baseline"] == pytest.approx(1 / 6)
    assert claim["effect"] == pytest.approx(1 / 3)
    # two discordant pairs, both for the method: McNemar's exact p = 2 * 0.5^2 = 0.5
    assert claim["p"] == pytest.approx(0.5)
    # cluster bootstrap over the two prompts: the effect of a resample is 1/3 (both prompts have +1/3)
    assert claim["ci95"] == pytest.approx([1 / 3, 1 / 3])
    assert claim["effects_per_train_seed"] == pytest.approx([1 / 3])


def test_regression_failures_compare_enforced_effects_with_their_margins(methods):
    check = {"claim": "reversion_vs_textual_inversion", "effects": [0.5, 0.4, 0.3], "margin": 0.2, "enforced": True}
    calibration = {"checks": [check]}

    def claims(effect):
        return {"reversion_vs_textual_inversion": {"effect": effect}}

    assert methods.regression_failures(calibration, claims(0.25)) == []
    assert methods.regression_failures(calibration, claims(0.2)) == []
    [line] = methods.regression_failures(calibration, claims(0.167))
    assert line == ("reversion_vs_textual_inversion: effect 0.167 below the margin 0.200 "
                    "(calibrated effects [0.5, 0.4, 0.3])")
    [line] = methods.regression_failures(calibration, {})  # the claim did not run: NaN fails
    assert "effect nan below" in line
    assert methods.regression_failures({"checks": [dict(check, enforced=False)]}, claims(-1.0)) == []


def test_base_checks_calibrate_to_mean_minus_two_sd_above_chance(methods, monkeypatch):
    rates = {0: {"relation_flip": 0.95, "object_swap": 0.55}, 1: {"relation_flip": 0.9, "object_swap": 0.6},
             2: {"relation_flip": 1.0, "object_swap": 0.5}}
    monkeypatch.setattr(methods, "base_rates", lambda seed, model=None: rates[seed])
    result = methods.calibrate_base([0, 1, 2])
    flip, swap = result["base_checks"]
    # relation flip: mean 0.95, sd 0.05 (ddof 1) -> margin 0.85 > chance 0.5: enforced
    assert flip["check"] == "relation_flip" and flip["rates"] == [0.95, 0.9, 1.0]
    assert flip["mean"] == pytest.approx(0.95) and flip["sd"] == pytest.approx(0.05)
    assert flip["margin"] == pytest.approx(0.85) and flip["enforced"]
    # object swap: mean 0.55, sd 0.05 -> margin 0.45, below chance: recorded, not enforced
    assert swap["margin"] == pytest.approx(0.45) and not swap["enforced"]
    assert result["base_settings"]["kinds"] == ["relation_flip", "object_swap"]

    assert methods.base_failures(result, {"relation_flip": 0.86, "object_swap": 0.0}) == []
    [line] = methods.base_failures(result, {"relation_flip": 0.8, "object_swap": 0.0})
    assert line == ("base model, diffusion classifier against the relation flip: rate 0.800 below the margin "
                    "0.850 (calibrated rates [0.95, 0.9, 1.0])")
    [line] = methods.base_failures(result, {})  # not measured: NaN fails
    assert "rate nan below" in line
