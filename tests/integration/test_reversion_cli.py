"""reversion end to end: short runs on every tiny backbone, the ablation sweep, generation, bad data."""

import csv
import json
from pathlib import Path

import pytest
import torch

from conftest import grid_cells
from relgen.testing import compose, run_relgen

# <job number>_<the overrides that vary, by their last key component>, in the grid's order
SWEEP_JOBS = [
    "000_steer_loss_weight=0,timestep_sampler=uniform",
    "001_steer_loss_weight=0,timestep_sampler=relation_focal",
    "002_steer_loss_weight=0.01,timestep_sampler=uniform",
    "003_steer_loss_weight=0.01,timestep_sampler=relation_focal",
]

_RUNS: dict[str, Path] = {}


def trained_run(backbone: str, tmp_path_factory) -> Path:
    """A 2-step reversion run (trainer=debug) on ``backbone``, trained in-process once per module.

    tiny_sd15 keeps the full recipe (4 micro-batches per step) and the final sample grid; the
    other backbones take one micro-batch per step to keep the suite fast.
    """
    from relgen.run import run_training

    if backbone not in _RUNS:
        run_dir = tmp_path_factory.mktemp(f"run-{backbone}")
        quick = [] if backbone == "tiny_sd15" else ["method.grad_accum=1", "trainer.sample_at_end=false"]
        cfg = compose("method=reversion", f"backbone={backbone}", "dataset=shapes_reversion", "trainer=debug", *quick)
        assert run_training(cfg, str(run_dir)) == 0
        _RUNS[backbone] = run_dir
    return _RUNS[backbone]


def read_metrics(path: Path) -> list[dict[str, float]]:
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


@pytest.mark.parametrize("backbone,keys", [("tiny_sd15", ["text_encoder"]), ("tiny_sd21", ["text_encoder"]),
                                           ("tiny_sdxl", ["clip_g", "clip_l"])])
def test_short_run_on_each_tiny_backbone(backbone, keys, tmp_path_factory):
    import relgen
    from relgen.train.checkpoint import load_checkpoint

    run_dir = trained_run(backbone, tmp_path_factory)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["backbone"] == backbone
    assert (run_dir / "export" / "reversion-R.safetensors").is_file()
    assert (run_dir / "samples" / "final.png").is_file() == (backbone == "tiny_sd15")
    accum = 4 if backbone == "tiny_sd15" else 1
    rows = read_metrics(run_dir / "metrics.csv")
    assert [r["step"] for r in rows] == [1.0, 2.0]
    for r in rows:
        assert r["lr"] == pytest.approx(2.5e-4 * 2 * accum)  # scale_lr: base x batch x accumulation
        assert r["loss_denoise"] > 0 and r["loss_steer"] > 0
        # each logged value is the mean over the 4 micro-batches, so the weighting holds for the means
        assert r["loss"] == pytest.approx(r["loss_denoise"] + 0.01 * r["loss_steer"], rel=1e-6)
    loaded = relgen.load(run_dir)
    assert loaded.method == "reversion" and sorted(loaded.artifact.rows) == keys
    last = sorted((run_dir / "checkpoints").iterdir())[-1]
    state = load_checkpoint(last)["method_state"]
    for key in keys:
        assert torch.equal(loaded.artifact.rows[key], state[f"rows.{key}"])  # export == last checkpoint
        assert loaded.artifact.rows[key].shape == (1, 32)


def test_generate_renders_benchmark_prompts_of_a_relation(tmp_path_factory, capsys):
    from relgen.generate import main

    run_dir = trained_run("tiny_sd15", tmp_path_factory)
    out = run_dir / "gen"
    capsys.readouterr()  # drop what training printed
    code = main([f"run_dir={run_dir}", "relation=painted_on", "num_images=1", "steps=2", "limit=2",
                 f"out_dir={out}"])
    assert code == 0
    # one grid for the relation (not one per prompt); portable names: "<R>" -> "R"
    grid = "reversion-tiny_sd15-relation_painted_on.png"
    assert sorted(p.name for p in out.iterdir()) == sorted([grid, "generation.json", "guitar_R_canvas", "guitar_R_paper"])
    assert [p.name for p in (out / "guitar_R_paper").iterdir()] == ["0000.png"]
    assert capsys.readouterr().out.split() == [str(out / grid)]
    assert grid_cells(out / grid) == (2, 1)  # rows = the two prompts, one seed
    record = json.loads((out / "generation.json").read_text())
    assert record["prompts"] == ["guitar <R> paper", "guitar <R> canvas"] and record["seeds"] == [0]
    assert record["images"] == ["guitar_R_paper/0000.png", "guitar_R_canvas/0000.png"]
    assert record["settings"]["steps"] == 2 and record["settings"]["height"] == 64
    # an out_dir that holds results is refused, not overwritten
    assert main([f"run_dir={run_dir}", "prompt=x <R> y", "num_images=1", "steps=2", f"out_dir={out}"]) == 2
    assert f"out_dir={out} already holds files" in capsys.readouterr().err


def test_ablation_sweep_over_steering_and_importance_sampling(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_relgen("-m", "method=reversion", "backbone=tiny_sd15", "dataset=shapes_reversion", "trainer=debug",
                      "method.steer_loss_weight=0,0.01",
                      "method.timestep_sampler=uniform,relation_focal", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == SWEEP_JOBS
    first = {}
    for job in SWEEP_JOBS:
        folder = sweep / job
        assert (folder / "export" / "reversion-R.safetensors").is_file()
        meta = json.loads((folder / "export" / "relgen.json").read_text())["method_config"]
        weight = 0.01 if "weight=0.01" in job else 0.0
        sampler = "uniform" if "uniform" in job else "relation_focal"
        assert (meta["steer_loss_weight"], meta["timestep_sampler"]) == (weight, sampler)
        rows = read_metrics(folder / "metrics.csv")
        for r in rows:
            assert r["loss"] == pytest.approx(r["loss_denoise"] + weight * r["loss_steer"], rel=1e-6)
            if weight == 0:
                assert r["loss"] == r["loss_denoise"]
        first[(weight, sampler)] = rows[0]["loss_denoise"]
    # step 1 sees the same data, noise and timesteps whatever the steering weight
    assert first[(0.0, "uniform")] == first[(0.01, "uniform")]
    assert first[(0.0, "relation_focal")] == first[(0.01, "relation_focal")]
    assert first[(0.0, "uniform")] != first[(0.0, "relation_focal")]


def write_folder(root: Path, text: dict, images: list[str]) -> Path:
    from PIL import Image

    root.mkdir(parents=True)
    for name in images:
        Image.new("RGB", (8, 8), "red").save(root / name)
    (root / "text.json").write_text(json.dumps(text))
    return root


def test_missing_image_fails_dry_run_with_one_line(tmp_path):
    root = write_folder(tmp_path / "rel", {"0.png": ["cat {} stone"], "1.png": ["dog {} stone"]}, ["0.png"])
    proc = run_relgen("method=reversion", "dataset=reversion_folder", f"dataset.root={root}", "dry_run=true",
                      f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("relgen: error: ")
    assert str(root / "text.json") in lines[0] and "'1.png'" in lines[0] and "does not exist" in lines[0]


def test_template_without_placeholder_fails_with_one_line(tmp_path, capsys):
    from relgen.cli import run_cli
    from relgen.run import run_training

    root = write_folder(tmp_path / "rel", {"0.png": ["cat {} stone", "cat on stone"]}, ["0.png"])
    cfg = compose("method=reversion", "dataset=reversion_folder", f"dataset.root={root}", "dry_run=true")
    assert run_cli(lambda: run_training(cfg, str(tmp_path / "run"))) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and str(root / "text.json") in lines[0] and "'cat on stone'" in lines[0]
    assert "exactly one '{}'" in lines[0]


def test_dry_run_of_the_paper_experiment_composes(tmp_path, capsys):
    from relgen.run import run_training

    root = write_folder(tmp_path / "painted_on", {"0.png": ["cat {} stone"]}, ["0.png"])
    from conftest import local_weights
    from relgen.errors import ConfigError

    cfg = compose("experiment=reversion_paper", f"dataset.root={root}", "dry_run=true")
    with pytest.raises(ConfigError, match="'runwayml/stable-diffusion-v1-5' is not in the Hugging Face cache"):
        run_training(cfg, str(tmp_path / "run"))  # the hub weights are not here; said before anything loads
    cfg = compose("experiment=reversion_paper", f"dataset.root={root}", "dry_run=true",
                  f"backbone.pretrained={local_weights()}")
    assert run_training(cfg, str(tmp_path / "run")) == 0
    assert "method=reversion backbone=sd15 dataset=reversion_folder (1 images" in capsys.readouterr().out
