"""No dead ends: a run cut off in its export or final grid is finished by resume=latest, a rerun
leaves no duplicate metrics rows, a refused run never removes a folder another run holds, and
nested keys are classed on resume."""

import csv
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from relgen.errors import ConfigError, RelgenError
from relgen.run import run_training
from relgen.testing import compose
from relgen.train import checkpoint as ckpt
from relgen.train import drift

TI = ["method=textual_inversion", "backbone=tiny_sd15", "dataset=shapes_reversion", "trainer=debug",
      "method.batch_size=1", "method.grad_accum=1", "trainer.sample_at_end=false", "trainer.max_steps=2",
      "trainer.report_to=[]"]
EMBEDS = "textual_inversion-R.safetensors"


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted run, for the finished ones to be compared with."""
    run = tmp_path_factory.mktemp("straight") / "run"
    assert run_training(compose(*TI), run) == 0
    return run


def _steps(run_dir) -> list[int]:
    with open(run_dir / "metrics.csv") as f:
        return [int(row["step"]) for row in csv.DictReader(f)]


class Killed(BaseException):
    """Stands in for SIGKILL: nothing after it runs (not even ``except Exception``)."""


def test_a_kill_during_the_export_is_finished_by_resume_latest(tmp_path, monkeypatch, straight):
    from relgen.methods.textual_inversion.method import TextualInversion

    run = tmp_path / "run"
    real = TextualInversion.export

    def killed(self, out_dir):
        real(self, out_dir)  # the file is half-way to the final export/ when the process dies
        raise Killed()

    monkeypatch.setattr(TextualInversion, "export", killed)
    with pytest.raises(Killed):
        run_training(compose(*TI), run)
    monkeypatch.setattr(TextualInversion, "export", real)
    assert not (run / "export").exists() and not (run / "summary.json").exists()
    # rerunning the command names the way out, and that way works
    with pytest.raises(ConfigError, match=r"already holds checkpoints; its training reached step 2 but its export "
                                          r"or final sample grid was not written; pass resume=latest to write them"):
        run_training(compose(*TI), run)
    assert run_training(compose(*TI, "resume=latest"), run) == 0
    a, b = load_file(str(run / "export" / EMBEDS)), load_file(str(straight / "export" / EMBEDS))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["resumed_at_step"] == 2
    assert summary["final"] == json.loads((straight / "summary.json").read_text())["final"]
    assert _steps(run) == [1, 2]
    # now it is finished: nothing left to train
    with pytest.raises(ConfigError, match=r"nothing to train"):
        run_training(compose(*TI, "resume=latest"), run)


def test_a_kill_during_the_final_grid_is_finished_by_resume_latest(tmp_path, monkeypatch):
    from relgen.train.loop import Trainer

    run = tmp_path / "run"
    cfg = [*TI, "trainer.sample_at_end=true", "trainer.num_samples=1", "method.sample_steps=1",
           "method.num_sample_prompts=1"]
    real = Trainer.sample_grid

    def killed(self, tag):
        raise Killed()

    monkeypatch.setattr(Trainer, "sample_grid", killed)
    with pytest.raises(Killed):
        run_training(compose(*cfg), run)
    monkeypatch.setattr(Trainer, "sample_grid", real)
    assert (run / "export" / EMBEDS).is_file() and not (run / "samples" / "final.png").exists()
    assert run_training(compose(*cfg, "resume=latest"), run) == 0
    assert (run / "samples" / "final.png").is_file()
    assert json.loads((run / "summary.json").read_text())["samples"] == str(run / "samples" / "final.png")


def test_a_rerun_after_a_kill_before_the_first_checkpoint_logs_each_step_once(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    # what a run killed after logging step 1, before its first checkpoint, leaves behind
    (run / "metrics.csv").write_text("step,loss,lr\n1,0.5,0.001\n")
    assert run_training(compose(*TI), run) == 0
    assert _steps(run) == [1, 2]


def test_a_refused_run_leaves_a_folder_another_run_holds(tmp_path):
    """Two runs started together in a new folder: both believe they made it; the one refused
    by the lock removes nothing, and the holder's files stay."""
    from relgen import rundir

    run = tmp_path / "new" / "run"
    rundir.note_created(run)  # this process was about to create it (as Hydra's callback notes)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time, pathlib\n"
                               "from relgen.rundir import RunLock\n"
                               "run = pathlib.Path(sys.argv[1]); RunLock(run).acquire()\n"
                               "(run / 'metrics.csv').write_text('step\\n')\n"
                               "print('ready', flush=True); time.sleep(60)\n", str(run)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(ConfigError, match=rf"{run}: in use by another relgen run \(pid {holder.pid}\)"):
            run_training(compose(*TI), run)
        assert (run / "metrics.csv").read_text() == "step\n" and rundir.is_locked(run)
    finally:
        holder.kill()
        holder.wait()
    # a folder this process made and nobody holds still goes when its run is refused
    other = tmp_path / "mine"
    with pytest.raises(ConfigError):
        run_training(compose(*TI, "method.lr=-1"), other)
    assert not other.exists()


def test_nested_keys_are_compared_and_classed():
    refused = drift.compare({"method": {"optimizer_args": {}}},
                            {"method": {"optimizer_args": {"amsgrad": True}}})
    assert refused.refused == ["method.optimizer_args.amsgrad"] and refused.applied == {}
    assert drift.compare({"method": {"optimizer_args": {"amsgrad": True}}},
                         {"method": {"optimizer_args": {}}}).refused == ["method.optimizer_args.amsgrad"]
    assert drift.compare({"method": {"optimizer_args": {"eps": 1e-8, "betas": [0.9, 0.99]}}},
                         {"method": {"optimizer_args": {"eps": 1e-6, "betas": [0.9, 0.99]}}}
                         ).refused == ["method.optimizer_args.eps"]
    # a key a newer version added directly to a group is still not compared
    assert drift.compare({"method": {"lr": 1.0}}, {"method": {"lr": 1.0, "optimizer": "adamw"}}).refused == []


def test_resume_with_a_new_optimizer_argument_is_refused_and_writes_nothing(tmp_path, straight):
    run = tmp_path / "run"
    shutil.copytree(straight, run)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    with pytest.raises(ConfigError, match=r"cannot resume with changed method\.optimizer_args\.amsgrad: the "
                                          r"checkpoint's state depends on them"):
        run_training(compose(*TI, "+method.optimizer_args.amsgrad=true", "trainer.max_steps=3",
                             "resume=latest"), run)
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_a_blown_up_update_stops_naming_the_last_good_checkpoint(tmp_path):
    run = tmp_path / "run"
    base = [*TI, "trainer.checkpoint_every=1", "method.scale_lr=false", "method.lr=0.001"]
    assert run_training(compose(*base), run) == 0
    # method.lr=1e30 on resume: finite, but the token row jumps to ~1e30
    with pytest.raises(RelgenError, match=r"^step 3: a trained parameter \(\(1, 32\)\) reached \|x\| = 9\.99e\+29, above "
                                          r"trainer.max_abs_weight=10000 \(the update blew up\); stopping, the last "
                                          r"good checkpoint is .*step-000002 \(resume=latest continues from it\); "
                                          r"lower method.lr"):
        run_training(compose(*base, "method.lr=1e30", "trainer.max_steps=4", "resume=latest"), run)
    assert [p.name for p in ckpt.checkpoint_dirs(run)] == ["step-000001", "step-000002"]
    # a blown-up checkpoint is never named as the good one
    state = ckpt.load_checkpoint(run / "checkpoints" / "step-000002")
    state["method_state"]["rows.text_encoder"] *= 1e30
    torch.save(state, run / "checkpoints" / "step-000002" / "state.pt")
    assert ckpt.oversized_tensors(state["method_state"], 1e4) == ["rows.text_encoder"]
    assert ckpt.oversized_tensors(state["method_state"], None) == []


def test_a_flat_sample_grid_is_reported(tmp_path, monkeypatch):
    from PIL import Image

    import relgen.generate as generate
    from relgen.grid import flat_images

    black, grey = Image.new("RGB", (8, 8)), Image.new("RGB", (8, 8), (120, 121, 120))
    noise = Image.frombytes("RGB", (8, 8), bytes(range(192)))
    assert flat_images([[black, noise], [grey]]) == (2, 3)

    monkeypatch.setattr(generate, "render", lambda pipe, artifact, prompts, opts, cfg, progress=False:
                        [[black] * opts.num_images for _ in prompts])
    run = tmp_path / "run"
    assert run_training(compose(*TI, "trainer.sample_at_end=true", "trainer.num_samples=2",
                                "method.num_sample_prompts=1"), run) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["sample_warnings"] == [
        f"{run / 'samples' / 'final.png'}: 2 of 2 sample images are a single flat colour (black when the trained "
        "tensors blew up); look at the grid, lower method.lr or check the data"]


def test_exported_files_follow_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        assert run_training(compose(*TI), tmp_path / "run") == 0
    finally:
        os.umask(old)
    export = tmp_path / "run" / "export"
    modes = {p.name: p.stat().st_mode & 0o777 for p in [export, *export.iterdir()]}
    assert modes == {"export": 0o750, EMBEDS: 0o640, "relgen.json": 0o640, "README.md": 0o640}


def test_a_misspelt_experiment_fails_listing_the_presets():
    from hydra.errors import MissingConfigException

    from relgen.cli import unknown_preset
    from relgen.testing import run_relgen

    assert unknown_preset(["experiment=rrnet_paper", "method.lr=1"]) is None
    assert unknown_preset(["--config-dir", "mine", "experiment=mine"]) is None
    with pytest.raises(MissingConfigException):  # the Python API fails too, no silent default
        compose("experiment=rrnet_papr")
    done = run_relgen("experiment=rrnet_papr", "dry_run=true", timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "relgen: error: experiment=rrnet_papr is not a preset; did you mean experiment=rrnet_paper? known: "
        "relationbooth_paper, relationbooth_relworld, relationbooth_tiny, reversion_paper, rrnet_paper, "
        "search_relationbooth, search_reversion, search_rrnet")


def test_a_folder_that_cannot_be_written_is_one_line(tmp_path, monkeypatch, capsys):
    import errno
    from pathlib import Path

    from relgen.cli import run_cli

    cache = tmp_path / "cache"
    real = Path.mkdir

    def read_only(self, *args, **kwargs):
        if str(self).startswith(str(cache)):
            raise PermissionError(errno.EROFS, "Read-only file system", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only)
    code = run_cli(lambda: run_training(compose(*TI, f"cache_dir={cache}"), tmp_path / "run"))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"relgen: error: {cache}")
    assert err[0].endswith(": cannot write the file or folder there (Read-only file system); the folder is "
                           "read-only for this user; choose a writable output_root / cache_dir")
    assert not (tmp_path / "run").exists()
    # any other OSError is a bug and keeps its traceback
    with pytest.raises(FileNotFoundError):
        run_cli(lambda: open(tmp_path / "missing"))



def test_help_is_relgens_own_and_names_every_shipped_option():
    from pathlib import Path

    from relgen.testing import run_relgen

    done = run_relgen("--help", timeout=120)
    assert done.returncode == 0
    assert done.stdout.startswith("relgen: train a relation method on a text-to-image backbone")
    assert "Powered by Hydra" not in done.stdout
    conf = Path(__file__).resolve().parents[2] / "conf"
    for group in ("method", "backbone", "dataset", "trainer", "experiment"):
        names = sorted(p.stem for p in (conf / group).glob("*.yaml"))
        block = re.search(rf"\n  {group}=(.*?)\n(?:  [a-z]+=|\n)", done.stdout, re.S).group(1)
        missing = [n for n in names if not re.search(rf"\b{n}\b", block)]
        assert names and not missing, (group, missing)
    evaluate = run_relgen("--help", module="relgen.evaluate", timeout=120)
    assert evaluate.returncode == 0 and "Powered by Hydra" not in evaluate.stdout
    assert evaluate.stdout.startswith("relgen.evaluate: render a finished run and its baselines with shared seeds")
    for name in ("reversion_benchmark", "rrnet_pairs", "relworld_relation", "vlm_relation", "relworld"):
        assert name in evaluate.stdout


def test_a_misspelt_key_or_option_is_one_line_saying_what_was_meant():
    from relgen.cli import composition_error

    assert composition_error(["method=rrnet", "method.lr=0.1", "hydra.run.dir=x"]) is None
    assert composition_error(["-m", "seed=0,1"]) is None  # sweeps are Hydra's
    assert composition_error(["method.lrr=1"]) == (
        "method.lrr is not a key of method; did you mean method.lr? (to add a new key, write +method.lrr=...; "
        "relgen --help lists the groups)")
    assert composition_error(["method=rrnet", "trainer.max_step=3"]).startswith(
        "trainer.max_step is not a key of trainer; did you mean trainer.max_steps?")
    assert composition_error(["method.lr=abc"]) == "method.lr: Value 'abc' of type 'str' could not be converted to Float"
    assert composition_error(["method=rrnett"]) == (
        "method=rrnett is not an option (method/rrnett not found); did you mean method=rrnet? known: relationbooth, "
        "reversion, rrnet, textual_inversion")
