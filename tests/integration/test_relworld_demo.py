"""The demo's scoring step: before/after counts of an RRNet run on relworld, read by the detector."""

from __future__ import annotations

import json

import numpy as np
import pytest

from relgen.relworld import model as rb
from relgen.testing import short_run


@pytest.mark.skipif(not rb.is_trained(), reason="relgen/relworld/weights/ is not built")
def test_demo_counts_are_the_readers_verdicts_on_its_own_pair(tmp_path, capsys):
    from relgen.relworld import demo
    from relgen.relworld.detector import Detector, DetectorConfig

    run = short_run(tmp_path / "run", "method=rrnet", "backbone=relworld", "dataset=relworld_rrnet",
                    "backbone.inference_steps=4", steps=2)
    assert demo.main([str(run), "--seeds", "2", "--scales", "0,1", "--pairs", "1", "--pair-seeds", "1"]) == 0
    printed = capsys.readouterr().out
    result = json.loads((run / "demo" / "demo.json").read_text())
    rel = json.loads((run / "export" / "relation.json").read_text())
    assert result["relation"] == f"{rel['A']} {rel['relation']} {rel['B']}"
    # the run's own object-swapped pair, the unseen direction first
    assert result["prompts"] == [rel["ARB"], rel["BRA"]]
    assert list(result["counts"]) == ["0", "1"] and result["generalisation"]["of"] == 1
    # the counts are the readers' verdicts on the same renders, rendered here directly
    # (relgen.load + relgen.generate.render): relation by colour, objects by colour and shape
    import relgen
    from relgen.generate import GenerationOptions, render

    colour, strict = Detector(config=DetectorConfig(match_shape=False)), Detector()
    words = rel["ARB"].split()
    a, b = (rel["A"], words[1]), (rel["B"], words[-2])
    pair = [(a, rel["relation"], b), (b, rel["relation"], a)]
    loaded = relgen.load(run)
    backbone = loaded.load_backbone()
    pipe = backbone.pipeline()
    loaded.apply(pipe)
    for key, lam in (("0", 0.0), ("1", 1.0)):
        opts = GenerationOptions(seed=0, num_images=2, method_options={"scale": lam})
        rows = render(pipe, loaded.artifact, result["prompts"], opts, backbone.cfg)
        ok = [[colour.read(np.asarray(img), *p).relation_ok for img in row] for p, row in zip(pair, rows)]
        objects = [sum(strict.read(np.asarray(img), *p).both_present for img in row) for p, row in zip(pair, rows)]
        c = result["counts"][key]
        assert (c["unseen_direction_right"], c["seen_direction_right"]) == (sum(ok[0]), sum(ok[1]))
        assert c["direction_right"] == sum(x and y for x, y in zip(*ok)) and c["of"] == 2
        assert c["objects_right"] == objects
        assert f"λ = {key}: '{rel['ARB']}' right {sum(ok[0])}/2" in printed
    assert "other colours (not trained" in printed
    assert (run / "demo" / "before_after.png").exists()


def test_verdict_reasons_name_what_the_reader_saw():
    from relgen.relworld import bench, demo
    from relgen.relworld.detector import Detection, Reading

    def det(cx, cy):
        return Detection("square", "red", np.zeros((4, 4), bool), 1.0, cx, cy)

    p = bench.Prompt(("square", "cyan"), "above", ("circle", "red"), "a cyan square is above a red circle")
    up, down = det(8, 2), det(8, 12)
    assert demo.why(Reading("above", up, down, "above"), Reading("above", up, down, "above"), p) == \
        ("right", "square on top")
    assert demo.why(Reading("above", down, up, "below"), Reading("above", down, up, "below"), p) == \
        ("wrong", "circle on top")
    assert demo.why(Reading("above", None, down, None), Reading("above", None, down, None), p) == \
        ("wrong", "square not found")
    # relation right by colour, the circle's shape not read: amber, and says so
    assert demo.why(Reading("above", up, down, "above"), Reading("above", up, None, None), p) == \
        ("partly", "square on top; circle misshapen")


def test_demo_refuses_a_run_that_is_not_rrnet(tmp_path, capsys):
    from relgen.relworld import demo

    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "relgen.json").write_text(json.dumps({"method": "reversion"}))
    assert demo.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "'reversion'" in err and str(tmp_path) in err
