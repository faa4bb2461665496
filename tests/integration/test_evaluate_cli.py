"""relgen.evaluate end to end on a tiny run: generation with shared seeds, caching, reports,
claims, scoring an image folder, a sweep of two runs, and bad input."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest

from relgen.errors import ConfigError, DataError
from relgen.evaluate import tiny
from relgen.evaluate.harness import evaluate
from relgen.testing import evaluation_run, run_relgen

PROMPTS = {"name": "shapes", "prompts": [
    {"text": "red circle {} blue square", "readable": "red circle above blue square", "a": "red circle",
     "b": "blue square", "predicate": "above", "swapped": "blue square above red circle"},
    {"text": "blue square {} red circle", "readable": "blue square above red circle", "a": "blue square",
     "b": "red circle", "predicate": "above", "swapped": "red circle above blue square", "order": 1},
]}
WORDS = ["red", "circle", "blue", "square", "above"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = evaluation_run(tmp_path_factory.mktemp("evaluate"), PROMPTS)
    models = {"clip": tiny.write_tiny_clip(root / "clip", words=WORDS),
              "owl": tiny.write_tiny_owlv2(root / "owl", words=WORDS),
              "llava": tiny.write_tiny_llava(root / "llava", words=WORDS)}
    return root, models


def _eval_overrides(models) -> dict:
    return {"device": "cpu", "clip": {"pretrained": str(models["clip"])},
            "detector": {"pretrained": str(models["owl"]), "threshold": 0.0},
            "judge": {"pretrained": str(models["llava"]), "dtype": "float32", "max_new_tokens": 4}}


def test_evaluate_a_run_against_the_base_model_then_rerun_from_the_cache(setup, monkeypatch):
    import relgen.generate

    root, models = setup
    calls = []
    real = relgen.generate.render
    monkeypatch.setattr(relgen.generate, "render", lambda *a, **k: calls.extend(a[2]) or real(*a, **k))
    out = evaluate(run_dir=str(root / "run"), prompts=str(root / "prompts.json"), num_images=3, progress=False,
                   metrics=["clip_t", "detector_relation", "vlm_relation"], eval=_eval_overrides(models))
    assert out.parent == root / "run" / "eval" and out.name.startswith("shapes-")
    res = json.loads((out / "results.json").read_text())
    assert res["schema"] == "relgen.evaluate/1" and res["seeds"] == [0, 1, 2] and res["baseline"] == "base"
    assert [c["name"] for c in res["conditions"]] == ["base", "method"]
    # base renders the relation written out, the run its own token; every seed of both
    assert sorted(calls) == sorted(["red circle above blue square", "blue square above red circle",
                                    "red circle <R> blue square", "blue square <R> red circle"])
    assert len(res["images"]) == 2 * 2 * 3
    for cond in ("base", "method"):
        per = [i["scores"]["clip_t"]["values"]["clip_t"] for i in res["images"] if i["condition"] == cond]
        est = res["results"][cond]["clip_t"]["clip_t"]
        assert est["value"] == pytest.approx(np.mean(per)) and est["n"] == 6 and est["clusters"] == 2
        assert est["interval"] == "cluster_bootstrap" and est["ci95"][0] <= est["value"] <= est["ci95"][1]
        flags = [i["scores"]["detector_relation"]["values"]["relation_accuracy"] for i in res["images"]
                 if i["condition"] == cond]
        assert res["results"][cond]["detector_relation"]["relation_accuracy"]["value"] == pytest.approx(np.mean(flags))
        assert res["unparsed"][cond] == sum(i["scores"]["vlm_relation"]["unparsed"] for i in res["images"]
                                            if i["condition"] == cond)
    claim = res["claims"]["method_vs_base/detector_relation.relation_accuracy"]
    assert set(claim) == {"metric", "method", "baseline", "effect", "ci95", "p"}
    assert claim["effect"] == pytest.approx(claim["method"] - claim["baseline"]) and 0 <= claim["p"] <= 1
    # the claim is stats.claim on the per-image outcomes paired by (prompt, seed)
    from relgen.evaluate import stats

    by = {(i["condition"], i["prompt"], i["seed"]): i["scores"]["detector_relation"]["values"]["relation_accuracy"]
          for i in res["images"]}
    pairs = sorted({(p, s) for _, p, s in by})
    expected = stats.claim("detector_relation.relation_accuracy", [by[("method", p, s)] for p, s in pairs],
                           [by[("base", p, s)] for p, s in pairs], [p for p, _ in pairs])
    assert claim["method"] == pytest.approx(expected["method"]) and claim["p"] == pytest.approx(expected["p"])
    assert claim["effect"] == pytest.approx(expected["effect"])
    tests = {c["output"]: c["test"] for c in res["comparisons"]}
    assert tests["relation_accuracy"] == "mcnemar_exact" and tests["clip_t"] == "paired_bootstrap"
    report = (out / "report.md").read_text()
    assert "## detector_relation" in report and "Paired comparisons with `base`" in report
    assert (out / res["grids"][0]).is_file() and not list(out.parent.glob("*.partial"))

    # a rerun generates nothing and scores nothing new
    calls.clear()
    out2 = evaluate(run_dir=str(root / "run"), prompts=str(root / "prompts.json"), num_images=3, progress=False,
                    metrics=["clip_t", "detector_relation", "vlm_relation"], eval=_eval_overrides(models),
                    out_dir=str(root / "again"))
    assert calls == []
    res2 = json.loads((out2 / "results.json").read_text())
    assert res2["results"] == res["results"] and res2["claims"] == res["claims"]


def test_score_an_image_folder_with_the_relworld_detector(tmp_path):
    from PIL import Image

    from relgen.generate import slug
    from relgen.relworld import world as rw
    from relgen.relworld.detector import Detector

    spec, det = rw.WorldSpec(), Detector(rw.WorldSpec())
    prompts, expected = [], {}
    for i, relation in enumerate(spec.relations[:3]):
        scene = rw.sample_scene(np.random.default_rng([9, i]), spec, relation)
        a, b = [(o.shape, o.colour) for o in scene.objects]
        text = rw.prompt(a, relation, b, spec)
        prompts.append({"id": f"p{i}", "text": text, "a": rw.object_name(a), "b": rw.object_name(b),
                        "predicate": spec.phrases[relation][0], "relation": relation,
                        "objects": {"a": list(a), "b": list(b)}})
        image, _ = scene.render()
        for cond, img in (("base", np.full_like(image, 240)), ("method", image)):
            folder = tmp_path / "images" / cond / slug(f"p{i}")
            folder.mkdir(parents=True)
            Image.fromarray(img).save(folder / "0000.png")
            expected[(cond, f"p{i}")] = det.read(img, a, relation, b).relation_ok
    (tmp_path / "p.json").write_text(json.dumps({"name": "world", "prompts": prompts}))
    out = evaluate(images_dir=str(tmp_path / "images"), prompts=str(tmp_path / "p.json"), num_images=1,
                   metrics=["relworld"], progress=False, eval={"device": "cpu"})
    res = json.loads((out / "results.json").read_text())
    got = {(i["condition"], i["prompt"]): i["scores"]["relworld"]["values"]["relation_accuracy"] for i in res["images"]}
    assert got == {k: float(v) for k, v in expected.items()}
    assert sum(expected.values()) == 3  # ground-truth renders are right, blank images wrong
    # one image per prompt: independent outcomes, Wilson
    assert res["results"]["method"]["relworld"]["relation_accuracy"]["interval"] == "wilson"
    assert res["claims"]["method_vs_base/relworld.relation_accuracy"]["effect"] == pytest.approx(1.0)


def test_bad_input_fails_with_one_clear_error(setup, tmp_path):
    root, models = setup
    (tmp_path / "norun").mkdir()
    with pytest.raises(ConfigError, match="run_dir=.*norun.*export"):
        evaluate(run_dir=str(tmp_path / "norun"), prompts=str(root / "prompts.json"), progress=False)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"prompts": [{"text": "cat on box", "a": "cat", "b": "box"}]}))
    with pytest.raises(DataError, match=r"bad.json: prompts\[0\]: 'predicate' must be a non-empty string"):
        evaluate(run_dir=str(root / "run"), prompts=str(bad), progress=False)
    bad.write_text(json.dumps({"prompts": [{"text": "cat on box", "a": "cat", "b": "box", "predicate": "under"}]}))
    with pytest.raises(DataError, match=r"prompts\[0\].*'under' are not in 'cat on box'"):
        evaluate(run_dir=str(root / "run"), prompts=str(bad), progress=False)
    with pytest.raises(ConfigError, match="unknown metric 'clipt'"):
        evaluate(run_dir=str(root / "run"), prompts=str(root / "prompts.json"), metrics=["clipt"], progress=False)
    proc = run_relgen(f"run_dir={tmp_path / 'norun'}", f"prompts={root / 'prompts.json'}",
                      f"output_root={tmp_path / 'out'}", module="relgen.evaluate")
    lines = [l for l in proc.stderr.splitlines() if l.startswith("relgen: error:")]
    assert proc.returncode == 2 and len(lines) == 1 and "export" in lines[0], proc.stderr[-2000:]


def test_a_sweep_of_two_runs_writes_one_comparison_report(setup, tmp_path, monkeypatch):
    root, models = setup
    shutil.copytree(root / "run", tmp_path / "run_b", ignore=shutil.ignore_patterns("eval"))
    from relgen.evaluate.__main__ import main

    # the Hydra app in this process (the exit-code path runs as a subprocess in the bad-input test)
    monkeypatch.setattr(sys, "argv", ["relgen.evaluate", "-m", f"run_dir={root / 'run'},{tmp_path / 'run_b'}",
                                      f"prompts={root / 'prompts.json'}", "metrics=[clip_t]", "num_images=2",
                                      "eval.device=cpu", f"eval.clip.pretrained={models['clip']}",
                                      f"output_root={tmp_path / 'out'}"])
    main()
    (sweep,) = (tmp_path / "out" / "eval-multirun").iterdir()
    data = json.loads((sweep / "comparison.json").read_text())
    assert [j["job"] for j in data["jobs"]] == ["0", "1"]
    assert len(data["rows"]) == 4 and data["columns"] == ["clip_t.clip_t", "clip_t.clip_entity"]
    md = (sweep / "comparison.md").read_text()
    assert f"run_dir={tmp_path / 'run_b'}" in md and "method_vs_base/clip_t.clip_t" in md
    # the copy has the same weights: the same images, so the same numbers
    assert data["rows"][0]["cells"] == data["rows"][2]["cells"] and data["rows"][1]["cells"] == data["rows"][3]["cells"]
