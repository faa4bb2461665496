"""RRNet end to end: runs on every tiny backbone, bitwise resume, relation and λ sweeps, bad data."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from PIL import Image

from conftest import grid_cells
from relgen.run import run_training
from relgen.testing import compose, run_relgen as _run_relgen


def run_relgen(*args: str, **kwargs):
    # The tiny models gain nothing from a second thread, and on a busy 2-core machine
    # OpenMP threads spinning against other processes make each step many times slower.
    return _run_relgen(*args, env={"OMP_NUM_THREADS": "1"}, **kwargs)


def _train(run_dir: Path, *overrides: str, backbone: str = "tiny_sd21") -> Path:
    cfg = compose("method=rrnet", f"backbone={backbone}", "dataset=shapes_rrnet", "trainer=debug",
                  "trainer.sample_at_end=false", *overrides)
    assert run_training(cfg, str(run_dir)) == 0
    return run_dir


def _one_error_line(proc) -> str:
    lines = [line for line in proc.stderr.strip().splitlines() if line.startswith("relgen: error:")]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(lines) == 1, proc.stderr[-2000:]
    return lines[0]


def test_resume_mid_epoch_is_bitwise(tmp_path):
    straight = _train(tmp_path / "straight", "trainer.max_steps=4")
    half = _train(tmp_path / "half", "trainer.max_steps=2")
    after_two = (half / "export" / "rrnet-above.safetensors").read_bytes()
    import torch

    state = torch.load(half / "checkpoints" / "step-000002" / "state.pt", weights_only=True)
    assert {k: v for k, v in state["method_state"]["schedule"].items() if k != "draw"} == {"epoch": 0, "pair": 2}
    _train(half, "trainer.max_steps=4", "resume=latest")
    gat = (straight / "export" / "rrnet-above.safetensors").read_bytes()
    assert (half / "export" / "rrnet-above.safetensors").read_bytes() == gat
    assert after_two != gat

    def rows(run):
        with open(run / "metrics.csv") as f:
            return list(csv.DictReader(f))

    assert rows(half) == rows(straight)
    assert [r["step"] for r in rows(straight)] == ["1", "2", "3", "4"]
    assert {"loss", "loss_pos", "loss_neg", "eot_cos_arb_bra"} <= set(rows(straight)[0])


@pytest.mark.parametrize("backbone,widths", [("tiny_sd15", [32]), ("tiny_sdxl", [32, 32])])
def test_short_run_per_backbone(tmp_path, backbone, widths):
    run = _train(tmp_path / backbone, "trainer.sample_at_end=true", "method.sample_steps=2", backbone=backbone)
    rel = json.loads((run / "export" / "relation.json").read_text())
    assert rel["node_widths"] == widths and rel["in_dim"] == rel["out_dim"] == sum(widths)
    assert (rel["A"], rel["R"], rel["B"], rel["backbone"]) == ("circle", "above", "square", backbone)
    # ARB and BRA, one image each, at λ = 0 (the base model) and each of the run's grid scales
    assert grid_cells(run / "samples" / "final.png") == (2, 6)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["method"] == "rrnet"


def test_relation_sweep_then_scale_grid(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_relgen("-m", "method=rrnet", "backbone=tiny_sd21", "dataset=shapes_rrnet", "trainer=debug",
                      "trainer.sample_at_end=false", "dataset.relations=[circle above square,star below cross]",
                      "method.relation=above,below",
                      f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = {name: next(sweep.glob(f"*_relation={name}")) for name in ("above", "below")}
    words = {}
    for job in jobs.values():
        rel = json.loads((job / "export" / "relation.json").read_text())
        words[rel["relation"]] = (rel["A"], rel["R"], rel["B"], rel["ARB"])
    assert words == {"above": ("circle", "above", "square", "a circle is above a square"),
                     "below": ("star", "below", "cross", "a star is below a cross")}

    run = jobs["below"]
    proc = run_relgen(f"run_dir={run}", "method_options.scales=[0,0.5,1]", "num_images=1", "steps=2",
                      module="relgen.generate")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = run / "generate" / "0001"  # the first generation of this run
    grid = out / "rrnet-tiny_sd21-lambda.png"  # named after the run and what the grid holds
    assert proc.stdout.strip() == str(grid)
    assert grid_cells(grid) == (2, 3)  # columns = λ, rows = ARB and BRA (one seed each)
    for prompt in ("a_star_is_below_a_cross", "a_cross_is_below_a_star"):
        assert sorted(p.name for p in (out / prompt).iterdir()) == ["lambda=0", "lambda=0.5", "lambda=1"]
    cells = [Image.open(out / "a_star_is_below_a_cross" / f"lambda={w}" / "0000.png") for w in ("0", "1")]
    assert cells[0].tobytes() != cells[1].tobytes()  # λ changes the image (same seed)
    record = json.loads((out / "generation.json").read_text())
    assert record["prompts"] == ["a star is below a cross", "a cross is below a star"]
    assert record["settings"]["method_options"] == {"scales": [0, 0.5, 1]} and record["seeds"] == [0]


def _rrnet_folder(root: Path) -> Path:
    from relgen.data.shapes import write_shapes_rrnet

    write_shapes_rrnet(root, images_per_folder=2, size=16)
    return root / "above"


@pytest.mark.parametrize("case", ["missing_key", "prompt_without_word", "empty_folder"])
def test_bad_rrnet_folder_is_one_line_naming_the_file(tmp_path, case):
    folder = _rrnet_folder(tmp_path / "data")
    index = folder / "index.json"
    data = json.loads(index.read_text())
    if case == "missing_key":
        del data["BRA_dir"]
        expect = f"{index}: missing key 'BRA_dir'"
    elif case == "prompt_without_word":
        data["ARB"] = "a circle is over a square"
        expect = f"{index}: 'ARB' prompt 'a circle is over a square' does not contain the R word 'above'"
    else:
        for image in (folder / "circle").iterdir():
            image.unlink()
        expect = f"{folder / 'circle'}: image folder for 'A'"
    index.write_text(json.dumps(data))
    proc = run_relgen("method=rrnet", "dataset=rrnet_folder", f"dataset.root={folder}", "dry_run=true",
                      cwd=tmp_path)
    assert expect in _one_error_line(proc)
