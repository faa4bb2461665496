"""Searches: an Optuna search that resumes after a kill, pruning, sweep.csv and the summary, and
the SLURM submission file of a sweep."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")

SEARCH = ["-m", "experiment=search_reversion", "backbone=tiny_sd15", "dataset=shapes_reversion", "trainer=debug",
          "trainer.sample_at_end=false", "trainer.validate_every=1", "hydra.sweeper.n_trials=3",
          "hydra.sweeper.sampler.seed=0", "hydra.sweeper.pruner=null"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _rows(sweep: Path) -> list[dict]:
    if not (sweep / "sweep.csv").exists():
        return []
    with open(sweep / "sweep.csv", newline="") as f:
        return list(csv.DictReader(f))


def _study(sweep: Path):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name="relgen", storage=f"sqlite:///{sweep}/optuna.db")


def test_optuna_search_resumes_after_a_kill_and_reports_the_best_row(tmp_path):
    started = time.time()
    sweep = tmp_path / "search"
    args = [sys.executable, "-m", "relgen", *SEARCH, f"hydra.sweep.dir={sweep}"]
    proc = subprocess.Popen(args, cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        while len(_rows(sweep)) < 2 and proc.poll() is None and time.time() - started < 300:
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the whole sweep, mid-way
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()[-3000:]
    before = _study(sweep).trials
    assert len(before) in (2, 3)  # the third trial had been asked for, or not yet

    # the same command with the same folder continues the study to 3 finished trials, the
    # remaining one pruned at its first validation (a pruner every loss is above)
    resumed = subprocess.run(args + ["+hydra.sweeper.pruner._target_=optuna.pruners.ThresholdPruner",
                                     "+hydra.sweeper.pruner.upper=0.0"],
                             cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    elapsed = time.time() - started

    study = _study(sweep)
    states = [t.state for t in study.trials]
    interrupted = [t.number for t in study.trials if t.user_attrs.get("relgen_interrupted")]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 2
    assert states.count(optuna.trial.TrialState.PRUNED) == 1
    assert len(states) == 3 + len(interrupted)  # an interrupted trial is failed and replaced
    assert all(study.trials[n].state == optuna.trial.TrialState.FAIL for n in interrupted)
    assert not any(s == optuna.trial.TrialState.RUNNING for s in states)

    rows = _rows(sweep)
    assert [r["status"] for r in rows] == ["completed", "completed", "pruned"]
    assert [int(r["job"]) for r in rows] == [t.number for t in study.trials
                                             if t.state != optuna.trial.TrialState.FAIL]
    for row in rows:  # job n is trial n, in a folder named by its searched values
        trial = study.trials[int(row["job"])]
        folder = Path(row["run_dir"])
        assert folder.parent == sweep and folder.name.startswith(f"{trial.number:03d}_lr=")
        assert f"method.lr={trial.params['method.lr']}" in row["overrides"].split()
        if row["status"] == "completed":
            assert float(row["objective"]) == trial.value
            summary = json.loads((folder / "summary.json").read_text())
            assert summary["objective"]["value"] == float(row["objective"])
            assert summary["objective"]["direction"] == "minimize"
    pruned = [r for r in rows if r["status"] == "pruned"][0]
    assert pruned["steps"] == "1" and pruned["error"] == ""

    best_row = min((r for r in rows if r["status"] == "completed"), key=lambda r: float(r["objective"]))
    summary = json.loads((sweep / "summary.json").read_text())
    assert summary["best"]["job"] == int(best_row["job"]) == study.best_trial.number
    assert summary["best"]["objective"] == float(best_row["objective"]) == study.best_value
    assert summary["study"]["best_trial"] == study.best_trial.number
    assert (summary["completed"], summary["pruned"], summary["failed"]) == (2, 1, 0)
    assert sorted(Path(p).name for p in summary["plots"]) == [
        "objective_by_job.png", "objective_vs_method.lr.png", "objective_vs_method.steer_loss_weight.png",
        "objective_vs_method.temperature.png"]
    from PIL import Image

    for plot in summary["plots"]:
        with Image.open(plot) as image:
            assert image.format == "PNG" and image.size == (600, 400)
    assert f"relgen: sweep: best job {Path(best_row['run_dir']).name}" in resumed.stdout
    assert elapsed < 60 * (3 if os.cpu_count() <= 2 else 1), elapsed  # a shared 2-core machine gets slack


def test_job_folder_names_show_what_varies_shortened(tmp_path):
    from relgen.sweep import job_name

    (tmp_path / ".relgen-sweep.json").write_text(json.dumps({"varying": ["method.lr", "seed"]}))
    assert job_name(str(tmp_path), 7, ["backbone=tiny_sd15", "method.lr=0.00012345678", "seed=3",
                                       "dataset.root=/a b/c"]) == "007_lr=0.0001235,seed=3"
    assert job_name(str(tmp_path / "none"), 0, ["dataset.root=/a b/c"]) == "000_root=-a-b-c"


def test_slurm_submission_file_of_a_sweep(tmp_path, monkeypatch):
    """The relgen_slurm launcher submits one array job with the configured resources; sbatch is
    replaced by a stand-in that keeps the submission file (no scheduler needed)."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    import submitit
    from submitit.slurm import slurm

    submitted = []

    def fake_sbatch(self, submission_file_path):
        submitted.append(Path(submission_file_path).read_text())
        raise RuntimeError("stop after the submission file")

    monkeypatch.setattr(slurm.SlurmExecutor, "_make_submission_command", fake_sbatch)
    monkeypatch.setattr(slurm.SlurmExecutor, "affinity", staticmethod(lambda: 1))  # as if srun were there
    from hydra import compose, initialize_config_module
    from hydra.core.hydra_config import HydraConfig
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher

    from relgen.registry import register_builtin_schemas

    register_builtin_schemas()
    with initialize_config_module(config_module="relgen.conf", version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=relgen_slurm", "hydra.launcher.partition=gpu",
                                           f"hydra.sweep.dir={tmp_path}", "backbone=tiny_sd15"],
                      return_hydra_config=True)
    params = {k: v for k, v in cfg.hydra.launcher.items() if k != "_target_"}
    HydraConfig.instance().set_config(cfg)
    launcher = SlurmLauncher(**params)
    from hydra.core.utils import setup_globals
    from hydra.types import HydraContext

    setup_globals()
    launcher.setup(hydra_context=HydraContext(config_loader=_Loader(cfg), callbacks=_NoCallbacks()),
                   task_function=lambda c: 0.0, config=cfg)
    with pytest.raises(RuntimeError, match="stop after the submission file"):
        launcher.launch([["seed=1"], ["seed=2"]], initial_job_idx=0)
    (text,) = submitted
    lines = text.splitlines()
    assert "#SBATCH --array=0-1%2" in lines  # one array job, both tasks at once
    for expected in ("#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=1", "#SBATCH --cpus-per-task=8",
                     "#SBATCH --mem=48GB", "#SBATCH --time=240", "#SBATCH --nodes=1", "#SBATCH --ntasks-per-node=1"):
        assert expected in lines, (expected, text)
    # each array task runs the pickled sweep job with this interpreter; logs stay in the sweep folder
    assert f"{sys.executable} -u -m submitit.core._submit {tmp_path}/.submitit/%j" in lines[-1]
    assert f"#SBATCH --output={tmp_path}/.submitit/%A_%a/%A_%a_0_log.out" in lines
    assert submitit.__version__


class _NoCallbacks:
    def on_job_start(self, **kwargs):
        pass

    def on_job_end(self, **kwargs):
        pass


class _Loader:
    def __init__(self, cfg):
        self.cfg = cfg

    def load_sweep_config(self, master_config, sweep_overrides):
        return self.cfg


@pytest.mark.parametrize("method, params", [
    ("reversion", ["method.lr", "method.steer_loss_weight", "method.temperature"]),
    ("rrnet", ["method.lr", "method.max_steps", "method.neg_weight"]),
    ("relationbooth", ["method.lr", "method.rank", "method.kp_weight"]),
])
def test_search_presets_name_existing_keys_of_their_method(method, params):
    from hydra import compose, initialize_config_module
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    from relgen.testing import compose as compose_run
    from relgen.validation import validate

    from hydra_plugins.relgen_sweeper import ensure_registered

    ensure_registered()
    with initialize_config_module(config_module="relgen.conf", version_base="1.3"):
        cfg = compose("config", overrides=[f"experiment=search_{method}"], return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_ == "hydra_plugins.relgen_sweeper.RelgenOptunaSweeper"
    assert sweeper.sampler._target_ == "optuna.samplers.TPESampler" and sweeper.direction == "minimize"
    assert sweeper.storage == f"sqlite:///{cfg.hydra.sweep.dir}/optuna.db"
    assert sweeper.pruner._target_ == "optuna.pruners.MedianPruner"
    assert list(sweeper.params) == params
    run = compose_run(f"experiment=search_{method}")
    assert run.method.name == method and run.trainer.validate_every > 0
    for override in OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in sweeper.params.items()]):
        assert override.is_sweep_override()
        key = override.get_key_element()
        assert OmegaConf.select(run, key) is not None, key  # a key of the method's schema
        values = list(override.sweep_iterator()) if override.is_discrete_sweep() else [
            override.value().start, override.value().end]
        for value in values:  # both ends of every range pass the run's checks
            assert isinstance(validate(compose_run(f"experiment=search_{method}", f"{key}={value}")), list)


@pytest.mark.slow  # a Ray cluster takes most of a minute to start on a small machine
def test_ray_launcher_runs_a_sweep_on_a_local_cluster(tmp_path):
    """A Ray head started here on the loopback address runs both jobs of a sweep (relgen[ray])."""
    pytest.importorskip("hydra_plugins.hydra_ray_launcher")
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    import shutil
    import tempfile

    ray = Path(sys.executable).parent / "ray"
    env = {**ENV, "RAY_AUTH_MODE": "disabled"}  # a loopback-only cluster of this test; no token files
    temp = tempfile.mkdtemp(prefix="rg-ray-", dir="/tmp")  # Ray's socket paths must stay short
    head = subprocess.Popen([str(ray), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
                             "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.time() + 120
        while True:  # the head's GCS listens on the port
            assert head.poll() is None, head.stderr.read()[-3000:]
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.time() < deadline, "the Ray head did not start in 2 minutes"
                time.sleep(0.5)
        sweep = tmp_path / "sweep"
        proc = subprocess.run([sys.executable, "-m", "relgen", "-m", "hydra/launcher=relgen_ray",
                               f"hydra.launcher.ray.init.address=127.0.0.1:{port}",
                               "hydra.launcher.ray.remote.num_gpus=0", "hydra.launcher.ray.remote.num_cpus=1",
                               "backbone=tiny_sd15", "dataset=shapes_reversion", "trainer=debug",
                               "trainer.max_steps=1", "trainer.sample_at_end=false", "seed=1,2",
                               f"hydra.sweep.dir={sweep}"],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    finally:
        os.killpg(head.pid, signal.SIGKILL)  # the head and every Ray process it started
        head.wait(timeout=60)
        shutil.rmtree(temp, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"127.0.0.1:{port}" in proc.stderr + proc.stdout  # it joined this cluster, not a new one
    rows = sorted(_rows(sweep), key=lambda r: r["job"])
    assert [(r["job"], r["status"], Path(r["run_dir"]).name) for r in rows] == [
        ("0", "completed", "000_seed=1"), ("1", "completed", "001_seed=2")]
    for row in rows:
        assert (Path(row["run_dir"]) / "export" / "textual_inversion-R.safetensors").is_file()


def test_a_study_in_the_wrong_direction_stops_with_one_line(tmp_path):
    from relgen.errors import ConfigError
    from relgen.sweep import _check_direction, record_row

    run = tmp_path / "000_lr=1"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps({"steps": 2, "objective": {
        "name": "clip_t.clip_t", "value": 0.25, "direction": "maximize"}}))
    assert record_row(str(tmp_path), 0, ["method.lr=1"], str(run), "completed", 1.0) == 0.25
    _check_direction(tmp_path, [0], "maximize")
    _check_direction(tmp_path, [1], "minimize")  # not a job of this batch
    with pytest.raises(ConfigError, match=r"hydra.sweeper.direction=minimize, but trainer.objective=clip_t.clip_t is "
                                          r"maximized \(job 0 in .*sweep.csv\); set hydra.sweeper.direction=maximize"):
        _check_direction(tmp_path, [0], "minimize")
    assert _rows(tmp_path)[0] == {"job": "0", "status": "completed", "objective": "0.25", "name": "clip_t.clip_t",
                                  "direction": "maximize", "steps": "2", "seconds": "1.0", "run_dir": str(run),
                                  "overrides": "method.lr=1", "error": ""}
