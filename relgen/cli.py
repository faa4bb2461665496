"""Command-line entry points: ``python -m relgen`` (train), ``relgen.generate``, ``relgen.list``.

Exit status, the same for every entry point (``relgen``, ``relgen.generate``, ``relgen.list``,
``relgen.evaluate``, ``relgen.import_official``):

- 0: done.
- 2: the input is at fault: the command line (a bad override, an unknown key or config option,
  a ``--flag`` relgen does not take: Hydra's or argparse's report, then a ``relgen: hint:``
  line where one applies), the config, the data, the weights or a file (one
  ``relgen: error: ...`` line); a sweep in which a job failed. Nothing half-written is left
  behind.
- 1: an unexpected failure inside relgen (a traceback; please report it).
- 130: interrupted (Ctrl-C); the last checkpoint is intact.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Callable, Optional

# sets the quiet, offline-friendly library defaults; run_cli and the exit statuses are re-exported
from relgen.console import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_USAGE, run_cli  # noqa: F401
from relgen.hints import FLAG_KEYS, command_line_hints

_task_started = False  # a Hydra app's task function began: an exit 1 after this is a failure, not usage


def task_started() -> None:
    """Called first thing in a Hydra app's task function (see :func:`run_hydra_app`)."""
    global _task_started
    _task_started = True


def run_hydra_app(app: Callable[[], None], argv: Optional[list[str]] = None,
                  flag_keys: Optional[dict[str, str]] = None) -> None:
    """Run a ``@hydra.main`` app under relgen's exit-status rule.

    Hydra reports a refused command line or config (an override its grammar cannot read, an
    unknown key, a missing config option) and exits 1; that is the user's input, so relgen exits
    2, as for its own errors, after the hints of :func:`relgen.hints.command_line_hints`
    (argparse's "unrecognized arguments" exits 2 already and gets the hints too). An exit after
    the task function began keeps its status. ``flag_keys``: the peers' flags this command maps to
    its keys (default: the training flags of :data:`relgen.hints.FLAG_KEYS`).
    """
    try:
        app()
    except SystemExit as exc:
        if exc.code not in (0, None) and not _task_started:
            args = list(sys.argv[1:] if argv is None else argv)
            for hint in command_line_hints(args, FLAG_KEYS if flag_keys is None else flag_keys):
                print(f"relgen: hint: {hint}", file=sys.stderr)
            if exc.code == EXIT_FAILURE:
                sys.exit(EXIT_USAGE)
        raise


#: In a sweep folder: one line per finished job (number, exit status, overrides), appended by
#: each job's process and read once by the sweep's own process when every job is done.
JOBS_FILE = ".relgen-jobs.tsv"


def record_job(sweep_dir: str, num: int, overrides: str, code: int) -> None:
    """Append one job's outcome to the sweep's :data:`JOBS_FILE` (one small O_APPEND write)."""
    line = f"{num}\t{code}\t{overrides}\n".encode()
    fd = os.open(os.path.join(sweep_dir, JOBS_FILE), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def sweep_summary(sweep_dir: str) -> tuple[int, list[str]]:
    """The number of finished jobs and one ``#<num> <overrides> (exit <code>)`` per failed job."""
    path = os.path.join(sweep_dir, JOBS_FILE)
    if not os.path.exists(path):
        return 0, []
    with open(path) as f:
        rows = [line.rstrip("\n").split("\t", 2) for line in f if line.strip()]
    failed = [f"#{num} {overrides} (exit {code})" for num, code, overrides in sorted(rows, key=lambda r: int(r[0]))
              if code != "0"]
    return len(rows), failed


try:
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:  # pragma: no cover - Hydra < 1.1
    _HydraCallback = object


class RunFolderCallback(_HydraCallback):
    """Hydra callback: notes, before Hydra creates it, that this process makes the run folder.

    :func:`relgen.run.run_training` removes a folder it (or Hydra, for it) created when the run
    stops before training (dry runs, refused runs); a folder that existed is never removed.
    """

    def on_run_start(self, config, **kwargs) -> None:
        from omegaconf import OmegaConf

        from relgen.rundir import note_created

        path = OmegaConf.select(config, "hydra.run.dir")
        if path is not None and not os.path.exists(str(path)):
            note_created(str(path))

    def on_multirun_end(self, config, **kwargs) -> None:
        """One line for the whole sweep; a non-zero exit when a job failed (each job already
        printed its own one-line error)."""
        from omegaconf import OmegaConf

        sweep_dir = str(OmegaConf.select(config, "hydra.sweep.dir"))
        total, failed = sweep_summary(sweep_dir)
        try:
            os.remove(os.path.join(sweep_dir, JOBS_FILE))
        except OSError:
            pass
        if failed:
            print(f"relgen: sweep: {len(failed)} of {total} jobs failed: {'; '.join(failed)}", file=sys.stderr)
            sys.exit(EXIT_USAGE)
        print(f"relgen: sweep: all {total} jobs finished in {sweep_dir}")


def _hydra_record(cfg, hc) -> Callable:
    """Writes Hydra's ``.hydra/`` record (config, hydra config, overrides) into a run folder,
    once the run's checks have passed (Hydra itself is told not to: ``hydra.output_subdir: null``)."""

    def write(run_dir) -> None:
        from pathlib import Path

        from hydra.core.hydra_config import HydraConfig
        from omegaconf import OmegaConf

        folder = Path(run_dir) / ".hydra"
        folder.mkdir(exist_ok=True)
        OmegaConf.save(cfg, folder / "config.yaml")
        OmegaConf.save(HydraConfig.instance().cfg, folder / "hydra.yaml")
        OmegaConf.save(hc.overrides.task, folder / "overrides.yaml")

    return write


def _run_dir_given(hc) -> bool:
    """Whether ``hydra.run.dir`` was set on the command line."""
    for override in hc.overrides.hydra:
        if str(override).lstrip("+~").split("=", 1)[0] == "hydra.run.dir":
            return True
    return False


def train_main() -> None:
    """``python -m relgen method=<m> backbone=<b> dataset=<d> [trainer=...]``."""
    import hydra

    from relgen.registry import register_builtin_schemas

    register_builtin_schemas()  # before Hydra composes

    @hydra.main(config_path="pkg://relgen.conf", config_name="config", version_base="1.3")
    def _app(cfg) -> None:
        task_started()
        from hydra.core.hydra_config import HydraConfig

        from relgen.rundir import note_created
        from relgen.run import run_training

        hc = HydraConfig.get()
        run_dir = hc.runtime.output_dir
        multirun = hc.mode.name == "MULTIRUN"
        if multirun and not os.listdir(run_dir):
            note_created(run_dir)  # the job folder Hydra just made for this job
        default_run_dir = not multirun and not _run_dir_given(hc)
        code = run_cli(lambda: run_training(cfg, run_dir, default_run_dir=default_run_dir,
                                            write_extra=_hydra_record(cfg, hc)))
        if multirun:
            # The other jobs still run; the sweep reports every failure once at its end.
            record_job(hc.sweep.dir, hc.job.num, hc.job.override_dirname, code)
        elif code:
            sys.exit(code)

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    run_hydra_app(_app)
