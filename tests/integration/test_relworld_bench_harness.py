"""The relworld benchmark draws and reads its images through the evaluation harness, and its
verdicts are those of the detector on the images :func:`relgen.generate.render` draws directly."""

from __future__ import annotations

import numpy as np
import pytest

from relgen.relworld import model as rb
from relgen.relworld import world as rw

SPEC = rw.WorldSpec()

pytestmark = pytest.mark.skipif(not rb.is_trained(), reason="relgen/relworld/weights/ is not built")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A textual inversion run and two RRNet runs (other seeds: other networks), one step each."""
    from relgen.testing import short_run

    root = tmp_path_factory.mktemp("bench-runs")
    ti = short_run(root / "ti", "method=textual_inversion", "backbone=relworld", "dataset=relworld_reversion",
                   "dataset.num_images=2", steps=1)
    rr = [short_run(root / f"rrnet{k}", "method=rrnet", "backbone=relworld", "dataset=relworld_rrnet",
                    "dataset.num_images=2", f"seed={k}", steps=1) for k in (0, 1)]
    return ti, rr


def _direct(texts, run, options, s, base: dict):
    """The images the benchmark drew before it went through the harness: relgen.generate.render
    with seeds s.seed .. s.seed + s.samples - 1, on the base model's pipeline (``base``: loaded
    once) or on a freshly loaded pipeline with the run's artifact applied."""
    import relgen
    from relgen.generate import GenerationOptions, render
    from relgen.plugin import Artifact
    from relgen.relworld import bench

    if run is None:
        if not base:
            base["pipeline"] = bench.load_pipeline(s.model)
        backbone, pipe = base["pipeline"]
        artifact = Artifact()
    else:
        loaded = relgen.load(run)
        backbone = loaded.load_backbone()
        pipe = backbone.pipeline()
        loaded.apply(pipe)
        artifact = loaded.artifact
    opts = GenerationOptions(seed=s.seed, num_images=s.samples, steps=s.steps, guidance=s.guidance,
                             batch_size=s.batch_size, method_options=dict(options))
    return render(pipe, artifact, texts, opts, backbone.cfg)


def _same_detection(x, y) -> bool:
    if x is None or y is None:
        return x is None and y is None
    return (x.shape, x.colour, x.iou) == (y.shape, y.colour, y.iou) and np.array_equal(x.mask, y.mask)


def test_bench_readings_equal_the_detectors_on_directly_rendered_images(runs, tmp_path, monkeypatch):
    import relgen.generate
    from relgen.relworld import bench
    from relgen.relworld.detector import Detector, DetectorConfig

    ti, (rr_a, rr_b) = runs
    s = bench.Settings(seed=3, samples=2, steps=4)
    # "a red square is above a blue circle" and its swap: the words of the RRNet runs' relation
    prompts = bench.rectification_prompts(SPEC, SPEC.biased[0], 1, 0, train_colours=("cyan", "red"))
    conditions = [bench.Condition("base, relation written", "written"),
                  bench.Condition("base, relation omitted", "omitted"),
                  bench.Condition("textual inversion", "relation_token", [ti]),
                  bench.Condition("RRNet", "written", [None], {"scale": 1.0})]
    groups = [([0], {"RRNet": [rr_a]}), ([1], {"RRNet": [rr_b]})]  # one network per prompt group
    task = bench.TaskResult("rectification", prompts, conditions, swapped=True)
    cache = tmp_path / "cache"
    bench.render_task(task, SPEC, s, groups, cache_dir=cache)

    strict, colour = Detector(SPEC), Detector(SPEC, DetectorConfig(match_shape=False))
    found, base = 0, {}
    for cond in conditions:
        for indices, runs_by_cond in (groups if cond.name == "RRNet" else [([0, 1], {})]):
            run = runs_by_cond.get(cond.name, cond.runs)[0]
            direct = _direct([cond.text(prompts[i], SPEC, bench.token_of(run)) for i in indices], run, cond.options, s,
                             base)
            for i, row in zip(indices, direct):
                p = prompts[i]
                assert len(task.images[cond.name][0][i]) == len(row) == s.samples
                for j, image in enumerate(row):
                    where = (cond.name, i, j)
                    assert np.array_equal(np.asarray(task.images[cond.name][0][i][j]), np.asarray(image)), where
                    for name, det in (("strict", strict), ("colour", colour)):
                        got = task.readings[cond.name][name][0][i][j]
                        want = det.read(np.asarray(image), p.a, p.relation, p.b)
                        assert (got.relation, got.geometry) == (want.relation, want.geometry), (name, *where)
                        assert _same_detection(got.a, want.a) and _same_detection(got.b, want.b), (name, *where)
                        found += (want.a is not None) + (want.b is not None)
    assert found > 0  # the comparison covers found objects, not only absent ones
    # the conditions draw different images: the texts, tokens and networks reach the generator
    images = {c.name: np.stack([np.asarray(im) for row in task.images[c.name][0] for im in row]) for c in conditions}
    names = [c.name for c in conditions]
    assert all(not np.array_equal(images[x], images[y]) for x in names for y in names if x < y)
    texts = [c.text(prompts[0], SPEC, bench.token_of(ti)) for c in conditions[:3]]
    assert texts == [prompts[0].text, f"a {rw.object_name(prompts[0].a)} and a {rw.object_name(prompts[0].b)}",
                     f"a {rw.object_name(prompts[0].a)} <R> a {rw.object_name(prompts[0].b)}"]

    # a rerun draws nothing: every image comes from the harness's cache, with the same readings
    calls = []
    real = relgen.generate.render
    monkeypatch.setattr(relgen.generate, "render", lambda *a, **k: calls.append(a[2]) or real(*a, **k))
    again = bench.TaskResult("rectification", prompts, conditions, swapped=True)
    bench.render_task(again, SPEC, s, groups, cache_dir=cache)
    assert calls == []
    for cond in conditions:
        flags = [[r.relation_ok for r in row] for row in task.readings[cond.name]["strict"][0]]
        assert [[r.relation_ok for r in row] for row in again.readings[cond.name]["strict"][0]] == flags
        assert all(np.array_equal(np.asarray(x), np.asarray(y)) for rx, ry in
                   zip(task.images[cond.name][0], again.images[cond.name][0]) for x, y in zip(rx, ry))
