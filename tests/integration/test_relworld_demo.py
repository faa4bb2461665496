"""The demo's scoring step: before/after counts of an RRNet run on relworld, read by the detector."""

from __future__ import annotations

import json

import numpy as np
import pytest

from relgen.relworld import model as rb
from relgen.testing import short_run


@pytest.mark.skipif(not rb.is_trained(), reason="relgen/relworld/weights/ is not built")
def test_demo_counts_are_the_detectors_verdicts_on_its_grid(tmp_path, capsys):
    from relgen.relworld import bench, demo
    from relgen.relworld import world as rw

    run = short_run(tmp_path / "run", "method=rrnet", "backbone=relworld", "dataset=relworld_rrnet",
                    "backbone.inference_steps=4", steps=2)
    assert demo.main([str(run), "--pairs", "1", "--seeds", "2", "--scale", "1"]) == 0
    printed = capsys.readouterr().out
    result = json.loads((run / "demo" / "demo.json").read_text())
    rel = json.loads((run / "export" / "relation.json").read_text())
    assert result["relation"] == f"{rel['A']} {rel['relation']} {rel['B']}"
    unseen, seen = result["prompts"]  # one object-swapped pair: the unseen direction first
    assert unseen.split()[2] == rel["A"] and seen.split()[2] == rel["B"]
    # the counts are the strict detector's verdicts on the same renders
    # rendered here directly (relgen.load + relgen.generate.render) and read by the detector itself
    import relgen
    from relgen.generate import GenerationOptions, render
    from relgen.relworld.detector import Detector

    spec = rw.WorldSpec()
    det = Detector(spec)
    prompts = bench.rectification_prompts(spec, rw.BiasedPair(rel["B"], rel["A"], rel["relation"]), 1, 0,
                                          (rel["ARB"].split()[1], rel["BRA"].split()[1]))
    loaded = relgen.load(run)
    backbone = loaded.load_backbone()
    pipe = backbone.pipeline()
    loaded.apply(pipe)
    for name, lam in zip(result["counts"], (0.0, 1.0)):
        opts = GenerationOptions(seed=0, num_images=2, method_options={"scale": lam})
        rows = render(pipe, loaded.artifact, [p.text for p in prompts], opts, backbone.cfg)
        ok = [[det.read(np.asarray(img), p.a, p.relation, p.b).relation_ok for img in row]
              for p, row in zip(prompts, rows)]
        c = result["counts"][name]
        assert (c["unseen_direction_right"], c["seen_direction_right"]) == (sum(ok[0]), sum(ok[1]))
        assert c["direction_right"] == sum(x and y for x, y in zip(*ok)) and c["of"] == 2
    before, after = result["counts"].values()
    assert f"{before['direction_right']}/2 before, {after['direction_right']}/2 after" in printed
    assert (run / "demo" / "before_after.png").exists()


def test_demo_refuses_a_run_that_is_not_rrnet(tmp_path, capsys):
    from relgen.relworld import demo

    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "relgen.json").write_text(json.dumps({"method": "reversion"}))
    assert demo.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "'reversion'" in err and str(tmp_path) in err
