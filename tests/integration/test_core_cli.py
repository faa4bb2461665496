"""The command line end to end: train, generate, list, dry runs, errors, sweeps, plugins."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from relgen.testing import run_relgen

FIXTURE_PLUGIN = Path(__file__).resolve().parents[1] / "fixtures" / "relgen_demo_plugin"


def _one_error_line(proc):
    lines = [l for l in proc.stderr.strip().splitlines() if l.startswith("relgen: error:")]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(lines) == 1, proc.stderr[-2000:]
    return lines[0]


def test_train_generate_and_load_into_a_diffusers_pipeline(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_relgen("backbone=tiny_sd15", "dataset=shapes_reversion", "trainer=debug", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "export" in proc.stdout and str(run_dir) in proc.stdout
    for name in ("config.yaml", "metrics.csv", "summary.json", "samples/final.png",
                 "export/textual_inversion-R.safetensors", "export/relgen.json", "checkpoints/step-000002/state.pt"):
        assert (run_dir / name).exists(), name
    assert not (run_dir / "tensorboard").exists()  # the debug preset turns TensorBoard off
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["method"] == "textual_inversion"

    proc = run_relgen(f"run_dir={run_dir}", "prompt=red circle <R> blue square", "num_images=2", "steps=2",
                      module="relgen.generate")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = run_dir / "generate" / "0001"
    assert proc.stdout.strip() == str(out / "textual_inversion-tiny_sd15-prompts.png")
    assert len(list((out / "red_circle_R_blue_square").glob("*.png"))) == 2
    # a second call never overwrites the first: it gets the next numbered folder
    proc = run_relgen(f"run_dir={run_dir}", "prompt=red circle <R> blue square", "num_images=1", "steps=2",
                      "seed=7", "height=32", "width=48", "guidance=3", "scheduler=ddim",
                      "negative_prompt=blurry", module="relgen.generate")
    assert proc.returncode == 0, proc.stderr[-3000:]
    second = run_dir / "generate" / "0002"
    image = Image.open(second / "red_circle_R_blue_square" / "0000.png")
    assert image.size == (48, 32)
    record = json.loads((second / "generation.json").read_text())
    assert record["seeds"] == [7] and record["prompts"] == ["red circle <R> blue square"]
    assert {k: record["settings"][k] for k in ("steps", "guidance", "scheduler", "height", "width",
                                                "negative_prompt")} == {
        "steps": 2, "guidance": 3, "scheduler": "ddim", "height": 32, "width": 48, "negative_prompt": "blurry"}
    assert len(list((out / "red_circle_R_blue_square").glob("*.png"))) == 2  # the first results are intact

    # relgen.load applies the artifact to a user's own pipeline, loaded from disk by diffusers
    import relgen
    from diffusers import StableDiffusionPipeline

    loaded = relgen.load(run_dir)
    from relgen.backbones.loading import materialize_tiny
    from omegaconf import OmegaConf
    from relgen.config import BackboneConfig

    bcfg = OmegaConf.merge(OmegaConf.structured(BackboneConfig), loaded.meta["backbone"])
    pipe = StableDiffusionPipeline.from_pretrained(materialize_tiny(bcfg))
    loaded.apply(pipe)
    learned = load_file(str(run_dir / "export" / "textual_inversion-R.safetensors"))["<R>"]
    tid = pipe.tokenizer.convert_tokens_to_ids("<R>")
    assert torch.equal(pipe.text_encoder.get_input_embeddings().weight[tid], learned)
    # diffusers' own loader reads our export to the same row
    pipe2 = StableDiffusionPipeline.from_pretrained(materialize_tiny(bcfg))
    pipe2.load_textual_inversion(str(run_dir / "export" / "textual_inversion-R.safetensors"), token="<R>")
    tid2 = pipe2.tokenizer.convert_tokens_to_ids("<R>")
    assert torch.equal(pipe2.text_encoder.get_input_embeddings().weight[tid2], learned)


def test_list_prints_every_registered_name():
    proc = run_relgen(module="relgen.list")
    assert proc.returncode == 0, proc.stderr
    for name in ("textual_inversion", "reversion", "rrnet", "relationbooth", "sd15", "sd21_base", "sd21",
                 "sdxl", "tiny_sdxl", "shapes_rrnet", "dreamrelation_folder"):
        assert f"  {name} " in proc.stdout


def test_help_does_not_import_dgl():
    code = ("import sys; sys.argv=['relgen','--help']\n"
            "from relgen.cli import train_main\n"
            "try:\n    train_main()\nexcept SystemExit:\n    pass\n"
            "print('DGL' if 'dgl' in sys.modules else 'NODGL')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert "NODGL" in proc.stdout and "method" in proc.stdout, proc.stdout + proc.stderr


def test_dry_run_checks_without_loading_weights(tmp_path):
    # sd15's hub weights are not here: the dry run says so in one line; a local folder passes (nothing is loaded)
    line = _one_error_line(run_relgen("backbone=sd15", "dry_run=true", f"hydra.run.dir={tmp_path}"))
    assert "'runwayml/stable-diffusion-v1-5' is not in the Hugging Face cache" in line
    from conftest import local_weights

    proc = run_relgen("backbone=sd15", f"backbone.pretrained={local_weights()}", "dry_run=true",
                      f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "dry run ok" in proc.stdout and "no weights were loaded" in proc.stdout
    assert not (tmp_path / "checkpoints").exists()


def test_config_errors_at_compose_time(tmp_path):
    for bad, expect in [("method.lr=abc", "method.lr"), ("method.lrr=1", "method.lrr"),
                        ("method=nosuch", "method/nosuch"), ("backbone=nosuch", "backbone/nosuch"),
                        ("dataset=nosuch", "dataset/nosuch")]:
        proc = run_relgen(bad, f"hydra.run.dir={tmp_path}")
        assert proc.returncode != 0 and expect in proc.stderr, (bad, proc.stderr[-1500:])
    proc = run_relgen("method=nosuch", f"hydra.run.dir={tmp_path}")
    assert "textual_inversion" in proc.stderr  # the available options are listed


def test_missing_weights_missing_dataset_and_empty_folder(tmp_path):
    line = _one_error_line(run_relgen("backbone=sd15", f"hydra.run.dir={tmp_path / 'a'}",
                                      env={"HF_HUB_OFFLINE": "1"}))
    assert "runwayml/stable-diffusion-v1-5" in line and "backbone.pretrained=" in line
    line = _one_error_line(run_relgen("dataset=reversion_folder", f"dataset.root={tmp_path / 'nope'}",
                                      "dry_run=true", f"hydra.run.dir={tmp_path / 'b'}"))
    assert "nope" in line and "dataset.root" in line
    (tmp_path / "empty").mkdir()
    line = _one_error_line(run_relgen("dataset=reversion_folder", f"dataset.root={tmp_path / 'empty'}",
                                      "dry_run=true", f"hydra.run.dir={tmp_path / 'c'}"))
    assert "empty" in line
    assert not (tmp_path / "a" / "checkpoints").exists()


def test_corrupt_image_and_bad_template(tmp_path):
    root = tmp_path / "rel"
    root.mkdir()
    (root / "0.png").write_bytes(b"not a png")
    (root / "text.json").write_text(json.dumps({"0.png": ["cat {} stone"]}))
    line = _one_error_line(run_relgen("dataset=reversion_folder", f"dataset.root={root}",
                                      f"hydra.run.dir={tmp_path / 'r'}", "trainer=debug"))
    assert "0.png" in line
    assert not (tmp_path / "r" / "checkpoints").exists() and not (tmp_path / "r" / "export").exists()
    from PIL import Image

    Image.new("RGB", (8, 8)).save(root / "0.png")
    (root / "text.json").write_text(json.dumps({"0.png": ["cat stone"]}))
    line = _one_error_line(run_relgen("dataset=reversion_folder", f"dataset.root={root}", "dry_run=true",
                                      f"hydra.run.dir={tmp_path / 's'}"))
    assert "text.json" in line and "{}" in line


def test_sweep_failing_job_does_not_stop_the_others(tmp_path):
    proc = run_relgen("-m", "backbone=tiny_sd15", "trainer=debug", "trainer.max_steps=1",
                      "dataset=reversion_folder,shapes_reversion", f"hydra.sweep.dir={tmp_path}", timeout=900)
    # job 0 (reversion_folder without root) fails, job 1 still runs; the sweep reports failure
    assert proc.returncode == 2
    suffix = ",trainer.max_steps=1,trainer=debug"
    # the failed job stopped before training: its folder is gone again; a job folder is named by
    # its number and the overrides that vary across the sweep
    jobs = sorted(p.name for p in tmp_path.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert jobs == ["001_dataset=shapes_reversion"], jobs
    # sweep.csv: a row per job, the failed one with its one-line error, the other with its objective
    with open(tmp_path / "sweep.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["job"], r["status"]) for r in rows] == [("0", "failed"), ("1", "completed")]
    assert rows[0]["error"].startswith("dataset reversion_folder: set dataset.root= to the dataset folder")
    assert rows[0]["objective"] == ""
    assert rows[0]["overrides"] == "backbone=tiny_sd15 trainer=debug trainer.max_steps=1 dataset=reversion_folder"
    summary = json.loads((tmp_path / jobs[0] / "summary.json").read_text())
    assert float(rows[1]["objective"]) == summary["objective"]["value"]
    assert rows[1]["run_dir"] == str(tmp_path / jobs[0]) and rows[1]["direction"] == "minimize"
    sweep = json.loads((tmp_path / "summary.json").read_text())
    assert (sweep["jobs"], sweep["completed"], sweep["failed"], sweep["best"]["job"]) == (2, 1, 1, 1)
    assert (tmp_path / jobs[0] / "export" / "textual_inversion-R.safetensors").exists()
    # the job's own one-line error, one line for the sweep, and no traceback
    assert "relgen: error: dataset reversion_folder: set dataset.root= to the dataset folder" in proc.stderr
    assert (f"relgen: sweep: 1 of 2 jobs failed: #0 backbone=tiny_sd15,dataset=reversion_folder{suffix} (exit 2)"
            in proc.stderr.splitlines())
    assert "Traceback" not in proc.stderr and "JobFailed" not in proc.stderr


def test_joblib_launcher_runs_jobs_in_parallel_processes(tmp_path):
    proc = run_relgen("-m", "hydra/launcher=relgen_local", "hydra.launcher.n_jobs=2", "backbone=tiny_sd15",
                      "dataset=shapes_reversion", "trainer=debug", "trainer.max_steps=1", "seed=1,2",
                      f"hydra.sweep.dir={tmp_path}", timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = sorted(p for p in tmp_path.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert [p.name for p in jobs] == ["000_seed=1", "001_seed=2"], [p.name for p in jobs]
    a, b = (load_file(str(p / "export" / "textual_inversion-R.safetensors"))["<R>"] for p in jobs)
    assert not torch.equal(a, b)  # different seeds, different draws


def test_third_party_plugin_through_an_entry_point(tmp_path):
    site = tmp_path / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                          "--target", str(site), str(FIXTURE_PLUGIN)], capture_output=True, text=True, timeout=900)
    assert pip.returncode == 0, pip.stderr[-2000:]
    import os

    env = {"PYTHONPATH": str(site) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    listing = run_relgen(module="relgen.list", env=env)
    assert "demo_ti" in listing.stdout and "[plugin relgen_demo]" in listing.stdout, listing.stderr
    run_dir = tmp_path / "run"
    proc = run_relgen("method=demo_ti", "backbone=tiny_sd15", "dataset=shapes_reversion", "trainer=debug",
                      f"hydra.run.dir={run_dir}", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((run_dir / "summary.json").read_text())["method"] == "demo_ti"
    assert (run_dir / "export" / "demo_ti-demo.safetensors").exists()
    assert "demo_token_" in (run_dir / "config.yaml").read_text()  # the plugin's own schema field


def test_slurm_launcher_preset_composes():
    proc = run_relgen("hydra/launcher=relgen_slurm", "--cfg", "hydra")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "SlurmLauncher" in proc.stdout and "gpus_per_node: 1" in proc.stdout


def test_two_process_cpu_run_with_gloo(tmp_path):
    """torchrun --nproc_per_node 2 with trainer.cpu=true: accelerate's MULTI_CPU (gloo); rank 0 owns the run."""
    run_dir = tmp_path / "ddp"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "relgen",
                           "backbone=tiny_sd15", "dataset=shapes_reversion", "trainer=debug", "trainer.cpu=true",
                           f"hydra.run.dir={run_dir}"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["num_processes"] == 2
    assert summary["lr"] == pytest.approx(2.5e-4 * 2 * 4 * 2)  # scale_lr counts both processes
    assert proc.stdout.count("relgen: trained") == 1  # only rank 0 reports and exports
    assert (run_dir / "export" / "textual_inversion-R.safetensors").exists()


def test_generate_help_lists_every_option(capsys):
    from relgen.generate import OPTIONS, main

    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m relgen.generate run_dir=")
    for key in ("run_dir", "prompt", "height", "width", "steps", "guidance", "scheduler", "seed",
                "negative_prompt", "step", "out_dir", "method_options"):
        assert key in OPTIONS and f"\n  {key} " in out
    assert "euler_a" in out  # the scheduler choices


def test_portable_names():
    from relgen.generate import slug

    assert slug("red circle <R> blue square") == "red_circle_R_blue_square"
    assert slug('a: "cat"/dog?*|\\') == "a_cat_dog"
    assert slug("w=0.5") == "w=0.5" and slug("con") == "prompt_con" and slug("<>") == "prompt"
