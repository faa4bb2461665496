"""Sweeps that search: readable job folders, ``sweep.csv``, the end-of-sweep summary, and an
Optuna sweeper that resumes and prunes.

* Job folders are named ``<job number>_<the overrides that vary across the sweep>``, keys
  shortened to their last component and numbers to four significant digits
  (``hydra.sweep.subdir: ${relgen_job_name:...}``, see :func:`job_name`).
* Every job appends one row to ``<sweep>/sweep.csv`` when it ends (completed, failed with its
  one-line error, or pruned), from whichever machine runs it (joblib, SLURM, Ray).
* :class:`SweepCallback` writes the header and the list of varying keys when the sweep starts,
  and ``summary.json`` plus labelled PNG plots when it ends.
* :class:`RelgenOptunaSweeper` (``hydra/sweeper=relgen_optuna``, needs ``relgen[search]``) is
  Hydra's Optuna sweeper with the study in ``<sweep>/optuna.db``: running the same command with
  ``hydra.sweep.dir=<that sweep>`` continues it to ``n_trials`` finished trials; with
  ``hydra.sweeper.pruner`` set, each trial reports its validation losses and stops when the
  pruner says so.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import re
import sys
from pathlib import Path
from typing import Any, Optional

# job folder names are made where run folder names are (the config's resolver reads them there)
from relgen.rundir import HIDDEN_KEYS, SWEEP_INFO, _short_value, job_name  # noqa: F401
from relgen.validation import metric_objective_parts  # noqa: F401 (a config check, used here too)

log = logging.getLogger("relgen")

SWEEP_CSV = "sweep.csv"
SWEEP_FIELDS = ["job", "status", "objective", "name", "direction", "steps", "seconds", "run_dir", "overrides",
                "error"]
SUMMARY = "summary.json"


# ---------------------------------------------------------------------------------- sweep.csv
def _append(path: Path, row: list[Any]) -> None:
    """One CSV row in one O_APPEND write (rows of parallel jobs never interleave)."""
    buffer = io.StringIO()
    csv.writer(buffer).writerow(row)
    data = buffer.getvalue().encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def ensure_header(sweep_dir: Path) -> Path:
    path = Path(sweep_dir) / SWEEP_CSV
    Path(sweep_dir).mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return path
    buffer = io.StringIO()
    csv.writer(buffer).writerow(SWEEP_FIELDS)
    try:
        os.write(fd, buffer.getvalue().encode())
    finally:
        os.close(fd)
    return path


def record_row(sweep_dir: str, num: int, overrides: list[str], run_dir: str, status: str,
               seconds: float, error: str = "") -> Optional[float]:
    """Append this job's row to ``sweep.csv``; returns its objective (None when there is none).

    The objective, its direction and the step come from the run's ``summary.json``.
    """
    summary: dict[str, Any] = {}
    try:
        with open(Path(run_dir) / SUMMARY) as f:
            summary = json.load(f)
    except (OSError, ValueError):
        pass
    objective = summary.get("objective") or {}
    value = objective.get("value")
    if status == "completed" and value is None:
        status = "failed"
        error = error or "no objective in summary.json"
    path = ensure_header(Path(sweep_dir))
    _append(path, [num, status, "" if value is None else repr(float(value)), objective.get("name", ""),
                   objective.get("direction", ""), summary.get("steps", ""), f"{seconds:.1f}", run_dir,
                   " ".join(overrides), error.replace("\n", " ")[:500]])
    return None if value is None else float(value)


def read_rows(sweep_dir: Path) -> list[dict[str, str]]:
    path = Path(sweep_dir) / SWEEP_CSV
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def row_params(row: dict[str, str]) -> dict[str, str]:
    params = {}
    for item in (row.get("overrides") or "").split():
        key, sep, value = item.lstrip("+~").partition("=")
        if sep and key not in HIDDEN_KEYS:
            params[key] = value
    return params


# ---------------------------------------------------------------------------------- the callback
try:
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:  # pragma: no cover - Hydra < 1.1
    _HydraCallback = object


def _varying_keys(config) -> list[str]:
    """Override keys that take several values: sweeps on the command line and the Optuna
    sweeper's ``params``."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    args = list(OmegaConf.to_container(config.hydra.overrides.task, resolve=False))
    params = OmegaConf.select(config, "hydra.sweeper.params")
    if params:
        args += [f"{k}={v}" for k, v in params.items()]
    keys = []
    for override in OverridesParser.create().parse_overrides(args):
        if override.is_sweep_override() and override.get_key_element() not in keys:
            keys.append(override.get_key_element())
    return keys


class SweepCallback(_HydraCallback):
    """Hydra callback of every relgen sweep (grid or search, any launcher)."""

    def on_multirun_start(self, config, **kwargs) -> None:
        from omegaconf import OmegaConf

        sweep_dir = Path(str(OmegaConf.select(config, "hydra.sweep.dir")))
        ensure_header(sweep_dir)
        info = sweep_dir / SWEEP_INFO
        if not info.exists():  # a resumed sweep keeps its names
            info.write_text(json.dumps({"varying": _varying_keys(config)}))

    def on_multirun_end(self, config, **kwargs) -> None:
        from omegaconf import OmegaConf

        sweep_dir = Path(str(OmegaConf.select(config, "hydra.sweep.dir")))
        sweeper = OmegaConf.select(config, "hydra.sweeper")
        storage = study_name = None
        if sweeper is not None and "storage" in sweeper:
            storage, study_name = sweeper.get("storage"), sweeper.get("study_name")
        try:
            summary = summarize(sweep_dir, storage=storage, study_name=study_name)
        except Exception as exc:  # the sweep's jobs are done; a summary problem must not hide them
            print(f"relgen: sweep: no summary: {exc}", file=sys.stderr)
            return
        best = summary.get("best")
        if best:
            print(f"relgen: sweep: best job {Path(best['run_dir']).name}: {summary['objective']}="
                  f"{best['objective']:.6g} ({summary['direction']}); summary in {sweep_dir / SUMMARY}")


# ---------------------------------------------------------------------------------- the summary
def _number(text: str) -> Optional[float]:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def summarize(sweep_dir: Path, storage: Optional[str] = None, study_name: Optional[str] = None,
              plots: bool = True) -> dict[str, Any]:
    """``summary.json`` of a sweep from its ``sweep.csv`` (and its Optuna study, when there is one).

    The best job is the best completed row (each job's last row counts); its spread over seeds
    is the mean and sample standard deviation of the rows that differ from it only in ``seed``.
    """
    sweep_dir = Path(sweep_dir)
    rows = {}
    for row in read_rows(sweep_dir):
        rows[row["job"]] = row  # a job's last row
    rows_list = sorted(rows.values(), key=lambda r: int(r["job"]))
    done = [r for r in rows_list if r["status"] == "completed" and _number(r["objective"]) is not None]
    direction = next((r["direction"] for r in done if r["direction"]), "minimize")
    name = next((r["name"] for r in done if r["name"]), "val_loss")
    sign = 1.0 if direction == "minimize" else -1.0
    summary: dict[str, Any] = {
        "objective": name, "direction": direction, "jobs": len(rows_list),
        "completed": len(done), "failed": sum(r["status"] == "failed" for r in rows_list),
        "pruned": sum(r["status"] == "pruned" for r in rows_list), "sweep_csv": str(sweep_dir / SWEEP_CSV),
    }
    if done:
        best = min(done, key=lambda r: (sign * float(r["objective"]), int(r["job"])))
        params = row_params(best)
        same = [r for r in done if {k: v for k, v in row_params(r).items() if k != "seed"}
                == {k: v for k, v in params.items() if k != "seed"}]
        values = [float(r["objective"]) for r in same]
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else None
        summary["best"] = {
            "job": int(best["job"]), "objective": float(best["objective"]), "overrides": best["overrides"],
            "params": params, "run_dir": best["run_dir"], "config": str(Path(best["run_dir"]) / "config.yaml"),
            "over_seeds": {"n": len(values), "mean": mean, "std": std,
                           "seeds": [row_params(r).get("seed", "") for r in same], "values": values},
        }
    if storage:
        summary["study"] = _study_summary(storage, study_name)
    if plots and done:
        summary["plots"] = [str(p) for p in plot_sweep(sweep_dir, rows_list, name, direction)]
    from relgen.train.loop import write_json

    write_json(sweep_dir / SUMMARY, summary)
    return summary


def _study_summary(storage: str, study_name: Optional[str]) -> dict[str, Any]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=study_name, storage=storage)
    states: dict[str, int] = {}
    for trial in study.trials:
        states[trial.state.name.lower()] = states.get(trial.state.name.lower(), 0) + 1
    out: dict[str, Any] = {"storage": storage, "study_name": study.study_name, "trials": states}
    try:
        best = study.best_trial
    except ValueError:  # no completed trial
        return out
    out.update({"best_trial": best.number, "best_value": best.value, "best_params": best.params})
    return out


def plot_sweep(sweep_dir: Path, rows: list[dict[str, str]], name: str, direction: str) -> list[Path]:
    """``objective_by_job.png`` and one ``objective_vs_<key>.png`` per varying override."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("relgen: sweep: no plots (pip install \"relgen[search]\" for matplotlib)", file=sys.stderr)
        return []
    done = [r for r in rows if r["status"] == "completed" and _number(r["objective"]) is not None]
    written = []
    fig, ax = plt.subplots(figsize=(6, 4))
    jobs = [int(r["job"]) for r in done]
    values = [float(r["objective"]) for r in done]
    ax.scatter(jobs, values, label="completed job")
    best, running = [], None
    for v in values:
        running = v if running is None else (min(running, v) if direction == "minimize" else max(running, v))
        best.append(running)
    ax.step(jobs, best, where="post", color="tab:red", label="best so far")
    pruned = [r for r in rows if r["status"] == "pruned" and _number(r["objective"]) is not None]
    if pruned:
        ax.scatter([int(r["job"]) for r in pruned], [float(r["objective"]) for r in pruned], marker="x",
                   color="gray", label="pruned (last validation)")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("job (trial) number")
    ax.set_ylabel(f"{name} ({direction})")
    ax.set_title(f"{name} by job: {sweep_dir.name}")
    ax.legend()
    fig.tight_layout()
    path = sweep_dir / "objective_by_job.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    written.append(path)
    keys: list[str] = []
    for r in done:
        for key in row_params(r):
            if key not in keys:
                keys.append(key)
    for key in keys:
        raw = [row_params(r).get(key, "") for r in done]
        if len(set(raw)) < 2:
            continue
        numbers = [_number(v) for v in raw]
        fig, ax = plt.subplots(figsize=(6, 4))
        if all(n is not None for n in numbers):
            ax.scatter(numbers, values)
            if min(numbers) > 0 and max(numbers) / min(numbers) >= 100:
                ax.set_xscale("log")
        else:
            labels = sorted(set(raw))
            ax.scatter([labels.index(v) for v in raw], values)
            ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
        ax.set_xlabel(key)
        ax.set_ylabel(f"{name} ({direction})")
        ax.set_title(f"{name} against {key}")
        fig.tight_layout()
        safe = re.sub(r"[^\w.]", "_", key)
        path = sweep_dir / f"objective_vs_{safe}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


# ---------------------------------------------------------------------------------- pruning
def pruning_hook(cfg=None):
    """In a trial of :class:`RelgenOptunaSweeper` with a pruner: ``hook(step, val_loss) -> stop``
    reporting each validation loss to the study; else None (also when the run's objective is not
    the validation loss: its intermediate values would not be the study's objective)."""
    try:
        from hydra.core.hydra_config import HydraConfig
    except ImportError:  # pragma: no cover
        return None
    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    sweeper = hc.sweeper
    if hc.mode is None or hc.mode.name != "MULTIRUN" or sweeper.get("pruner") is None or not sweeper.get("storage"):
        return None
    if cfg is not None and cfg.trainer.objective != "val_loss":
        log.warning("relgen: hydra.sweeper.pruner is ignored: trainer.objective=%s is scored only at the end",
                    cfg.trainer.objective)
        return None
    import optuna
    from hydra.utils import instantiate

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=sweeper.study_name, storage=sweeper.storage,
                              pruner=instantiate(sweeper.pruner))
    # the sweeper launches trial n as job n (RelgenOptunaSweeper.sweep)
    trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, int(hc.job.num))
    trial = optuna.trial.Trial(study, trial_id)

    def hook(step: int, value: float) -> bool:
        trial.report(value, step)
        return trial.should_prune()

    return hook


# ---------------------------------------------------------------------------------- the search
def _check_direction(sweep_dir: Path, numbers: list[int], direction: str) -> None:
    """The study optimises in the direction of the runs' objective, or the sweep stops with one line."""
    from relgen.errors import ConfigError

    for row in read_rows(sweep_dir):
        if int(row["job"]) in numbers and row["status"] == "completed" and row["direction"] not in ("", direction):
            raise ConfigError(f"hydra.sweeper.direction={direction}, but trainer.objective={row['name']} is "
                              f"{row['direction']}d (job {row['job']} in {sweep_dir / SWEEP_CSV}); set "
                              f"hydra.sweeper.direction={row['direction']}")


def optuna_search(impl: Any, pruner: Any, arguments: list[str]) -> None:
    """The sweep of :class:`hydra_plugins.relgen_sweeper.RelgenOptunaSweeper`: Hydra's Optuna
    sweeper loop (``impl`` is its ``OptunaSweeperImpl``) with resume and pruning.

    The study is created or loaded from ``impl.storage``. Trials a killed sweep left running are
    marked failed (user attribute ``relgen_interrupted``) and not counted, so the sweep runs
    until ``n_trials`` trials have finished (completed, pruned or failed). Job ``n`` is trial
    ``n``: folder names, ``sweep.csv`` rows and the pruning reports of the job use it.
    """
    import optuna
    from hydra.core.utils import JobStatus
    from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides
    from optuna.trial import TrialState

    from relgen.train.loop import Pruned

    impl._process_searchspace_config()
    distributions, fixed = create_params_from_overrides(impl._parse_sweeper_params_config() + list(arguments))
    for key in fixed:
        distributions.pop(key, None)
    storage = impl.storage
    if isinstance(storage, str) and storage.startswith("sqlite:///"):
        Path(storage[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(study_name=impl.study_name, storage=storage, sampler=impl.sampler,
                                directions=impl._get_directions(), pruner=pruner or optuna.pruners.NopPruner(),
                                load_if_exists=True)
    rows = {int(r["job"]): r for r in read_rows(Path(str(impl.sweep_dir)))}
    finished = 0
    for trial in study.get_trials(deepcopy=False):
        if trial.state in (TrialState.RUNNING, TrialState.WAITING):
            row = rows.get(trial.number)
            value = _number(row["objective"]) if row else None
            if row and row["status"] == "completed" and value is not None:
                # the job ended but the sweep was killed before it told the study
                study._storage.set_trial_values(trial._trial_id, [value])
                study._storage.set_trial_state(trial._trial_id, TrialState.COMPLETE)
            elif row and row["status"] in ("pruned", "failed"):
                study._storage.set_trial_state(trial._trial_id, TrialState.PRUNED if row["status"] == "pruned"
                                               else TrialState.FAIL)
            else:  # killed with its job: not counted, so that a new trial takes its place
                study._storage.set_trial_user_attr(trial._trial_id, "relgen_interrupted", True)
                study._storage.set_trial_state(trial._trial_id, TrialState.FAIL)
                continue
        elif trial.state == TrialState.FAIL and trial.user_attrs.get("relgen_interrupted"):
            continue
        finished += 1
    remaining = impl.n_trials - finished
    log.info("relgen: optuna study %s in %s: %d of %d trials finished, %d to run", study.study_name, storage,
             finished, impl.n_trials, max(remaining, 0))
    while remaining > 0:
        batch = min(remaining, impl.n_jobs)
        trials = [study.ask() for _ in range(batch)]
        first = trials[0].number
        if [t.number for t in trials] != list(range(first, first + batch)):
            raise RuntimeError(f"optuna study {study.study_name}: another process adds trials to it; give this "
                               "sweep its own hydra.sweep.dir or hydra.sweeper.study_name")
        overrides = impl._configure_trials(trials, distributions, fixed)
        returns = impl.launcher.launch(overrides, initial_job_idx=first)
        _check_direction(Path(str(impl.sweep_dir)), [t.number for t in trials], study.direction.name.lower())
        for trial, ret in zip(trials, returns):
            if ret.status == JobStatus.FAILED:  # the task raised: pruned, or an unexpected error
                state = TrialState.PRUNED if isinstance(ret._return_value, Pruned) else TrialState.FAIL
                study.tell(trial, state=state)
                continue
            try:
                value = float(ret.return_value)
            except (TypeError, ValueError):
                value = math.nan
            if math.isfinite(value):
                study.tell(trial, values=[value])
            else:  # a failed run (its sweep.csv row holds the error)
                study.tell(trial, state=TrialState.FAIL)
        remaining -= batch
    try:
        best = study.best_trial
    except ValueError:
        log.warning("relgen: optuna study %s: no trial completed", study.study_name)
        return
    log.info("relgen: best trial #%d: %.6g with %s", best.number, best.value, best.params)


# ---------------------------------------------------------------------------------- metric objectives
#: Metrics whose smaller values are better; every other relgen.evaluate output is maximised.
MINIMIZED_METRICS = {"fid"}


def metric_objective(cfg, run_dir: Path, step: int) -> dict[str, Any]:
    """Score the run's final export with ``relgen.evaluate`` (``trainer.objective_eval``: its settings)
    and return summary.json's ``objective``: the method condition's value of the metric's output."""
    from omegaconf import OmegaConf

    from relgen.errors import ConfigError
    from relgen.evaluate import evaluate

    metric, output = metric_objective_parts(cfg.trainer.objective)
    settings = OmegaConf.to_container(cfg.trainer.objective_eval, resolve=True) if cfg.trainer.objective_eval else {}
    settings.setdefault("include_base", False)  # only the run's own images are needed
    settings["metrics"] = [metric]
    log.info("relgen: scoring the export for trainer.objective=%s", cfg.trainer.objective)
    report = evaluate(run_dir=str(run_dir), progress=False, **settings)
    results = json.loads((Path(report) / "results.json").read_text())
    runs = [c["name"] for c in results["conditions"] if c["kind"] == "run"]
    if not runs:
        raise ConfigError(f"trainer.objective={cfg.trainer.objective}: the evaluation in {report} scored no "
                          "condition of this run")
    # the run's first condition (RRNet: its first λ of trainer.objective_eval.lambdas or method.grid_scales)
    condition = runs[0]
    if metric in results.get("set_metrics", {}):
        value = results["set_metrics"][metric][condition][output]  # {fid, n, n_reference}
    else:
        value = results["results"][condition][metric][output]["value"]
    return {"name": f"{metric}.{output}", "value": float(value),
            "direction": "minimize" if metric in MINIMIZED_METRICS else "maximize", "step": int(step),
            "condition": condition, "report": str(Path(report) / "results.json")}
