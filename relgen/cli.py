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
    global _task_started
    _task_started = False  # a command run again in the same process (tests) starts afresh
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


def unknown_preset(argv: list[str]) -> str | None:
    """One line for an ``experiment=<name>`` that names no shipped preset (``None`` when it names one).

    Only the shipped presets are known here: with ``--config-dir``/``-cd`` or a search-path
    override the name is left to Hydra, which also fails on a missing one.
    """
    import difflib
    from importlib import resources

    if any(a.startswith(("--config-dir", "-cd", "--config-path", "-cp")) or "searchpath" in a for a in argv):
        return None
    for arg in argv:
        key, sep, value = arg.partition("=")
        if key.lstrip("+~") != "experiment" or not sep or value in ("", "null") or "," in value:
            continue
        folder = resources.files("relgen.conf") / "experiment"
        known = sorted(p.name[:-len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))
        if value in known:
            return None
        close = difflib.get_close_matches(value, known, n=1)
        hint = f"did you mean experiment={close[0]}? " if close else ""
        return f"experiment={value} is not a preset; {hint}known: {', '.join(known)}"
    return None


def composition_error(argv: list[str], config_name: str = "config", command: str = "relgen") -> str | None:
    """One line for command-line overrides Hydra cannot compose (``None`` when they compose).

    A misspelt key says which key was meant (``method.lrr`` -> ``did you mean method.lr?``), a
    value of the wrong type names the key and the type, an unknown group option lists the known
    ones. Sweeps, Hydra's own flags and config-dir options are left to Hydra. ``config_name``: the
    primary config the command composes (``command`` is named in the hint).
    """
    import difflib

    from omegaconf import OmegaConf

    from relgen.config import compose_config
    from relgen.config import compose_run as _compose_run

    def compose_run(*overrides: str):  # the run config registers the built-in schemas first
        return _compose_run(*overrides) if config_name == "config" else compose_config(config_name, *overrides)

    if any(a.startswith("-") for a in argv):
        return None
    overrides = [a for a in argv if not a.lstrip("+~").startswith(("hydra.", "hydra/"))]
    try:
        compose_run(*overrides)
        return None
    except Exception as exc:  # noqa: BLE001 - Hydra's composition errors, turned into one line below
        error = exc
    cause = error.__cause__
    key = getattr(cause, "full_key", None)
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if key and type(cause).__name__ in ("ConfigAttributeError", "ConfigKeyError"):
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        rest = [a for a in overrides if a.lstrip("+~").split("=", 1)[0] != key]
        try:
            cfg = compose_run(*rest)
            node = OmegaConf.select(cfg, parent) if parent else cfg
            known = [f"{parent}.{k}" if parent else str(k) for k in node.keys()]
        except Exception:  # noqa: BLE001 - no suggestion then
            known = []
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]}? " if close else ""
        where = f" of {parent}" if parent else ""
        if config_name != "config":  # a command's own keys: nothing to add
            return f"{key} is not a key{where} of {command}; {hint}({command} --help lists the keys)"
        return (f"{key} is not a key{where}; {hint}(to add a new key, write +{key}=...; "
                f"relgen --help lists the groups)")
    if key:  # a value that does not fit the key's type
        reason = str(cause).strip().splitlines()[0] if cause is not None else first
        return f"{key}: {reason}"
    if type(error).__name__ == "MissingConfigException":
        import re

        missing = re.search(r"Could not find '([^']+)'", str(error))
        options = re.findall(r"^\t(\S+)$", str(error).split("Config search path")[0], re.M)
        if missing:
            group, _, name = missing.group(1).rpartition("/")
            close = difflib.get_close_matches(name, options, n=1)
            hint = f"did you mean {group}={close[0]}? " if close else ""
            return (f"{group}={name} is not an option ({missing.group(1)} not found); {hint}known: "
                    f"{', '.join(options)}")
    return None  # anything else: Hydra's own report

def _sweep_job(hc, run_dir: str, train: Callable[[], int]) -> float:
    """One job of a sweep: its row in ``sweep.csv`` and its objective for the sweeper (NaN when
    it failed; a pruned run raises :class:`relgen.train.loop.Pruned` for the sweeper to see)."""
    import time

    from relgen.sweep import record_row

    errors: list[str] = []
    started = time.time()
    overrides = list(hc.overrides.task)
    try:
        code = run_cli(train, on_error=errors.append)
    except Exception as exc:
        from relgen.train.loop import Pruned

        status = "pruned" if isinstance(exc, Pruned) else "failed"
        record_row(hc.sweep.dir, hc.job.num, overrides, run_dir, status, time.time() - started,
                   "" if status == "pruned" else f"{type(exc).__name__}: {exc}")
        record_job(hc.sweep.dir, hc.job.num, hc.job.override_dirname, 0 if status == "pruned" else 1)
        raise
    if code and not errors:
        errors.append(f"exit status {code}")
    value = record_row(hc.sweep.dir, hc.job.num, overrides, run_dir, "failed" if code else "completed",
                       time.time() - started, errors[0] if errors else "")
    record_job(hc.sweep.dir, hc.job.num, hc.job.override_dirname, code)
    return float("nan") if code or value is None else value


def train_main() -> None:
    """``python -m relgen method=<m> backbone=<b> dataset=<d> [trainer=...]``."""
    import hydra

    from relgen.registry import register_builtin_schemas

    bad = unknown_preset(sys.argv[1:]) or composition_error(sys.argv[1:])
    if bad:  # before Hydra composes: one line, not its search-path report
        print(f"relgen: error: {bad}", file=sys.stderr)
        sys.exit(2)

    register_builtin_schemas()  # before Hydra composes
    from hydra_plugins.relgen_sweeper import ensure_registered

    ensure_registered()  # hydra/sweeper=relgen_optuna

    @hydra.main(config_path="pkg://relgen.conf", config_name="config", version_base="1.3")
    def _app(cfg) -> Optional[float]:
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
        train = lambda: run_training(cfg, run_dir, default_run_dir=default_run_dir,  # noqa: E731
                                     write_extra=_hydra_record(cfg, hc))
        if multirun:
            # The other jobs still run; the sweep reports every failure once at its end.
            return _sweep_job(hc, run_dir, train)
        code = run_cli(train)
        if code:
            sys.exit(code)

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    run_hydra_app(_app)


def hydra_override(arg: str, free_text: tuple[str, ...] = (), free_lists: tuple[str, ...] = (),
                   open_dicts: tuple[str, ...] = ()) -> str:
    """One ``key=value`` of a command line as Hydra's override grammar reads it.

    The values of ``free_text`` keys (prompts) are taken verbatim: quoted for Hydra, whose bare
    values cannot hold ``<``, ``>``, ``,`` and the like (``prompt=a cat <R> a stone`` works as
    typed); a value the user quoted already is left alone, and ``null`` stays Hydra's null (no
    value, e.g. ``negative_prompt=null``). ``free_lists`` keys take a list of such
    texts (``prompts=[a cat <R> a stone,a dog <R> a box]``). Keys under an ``open_dicts`` node
    (e.g. ``method_options.scales``) may be new, as the node's keys are a method's own.
    """
    key, sep, value = arg.partition("=")
    if not sep or key.startswith(("-", "+", "~")):
        return arg
    if key in free_text and not _quoted(value) and value != "null":  # null stays Hydra's None
        return f"{key}={_quote(value)}"
    if key in free_lists and value.startswith("[") and value.endswith("]"):
        items = [item.strip() for item in value[1:-1].split(",")] if value[1:-1].strip() else []
        if not any(_quoted(item) for item in items):  # a list the user quoted for Hydra is left alone
            return f"{key}=[{','.join(_quote(item) for item in items)}]"
    if key.split(".", 1)[0] in open_dicts and "." in key:
        return f"++{arg}"
    return arg


def _quoted(value: str) -> bool:
    return len(value) >= 2 and value[0] == value[-1] and value[0] in "'\""


def _quote(value: str) -> str:
    """``value`` as one quoted string of Hydra's override grammar."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def run_hydra_command(config_name: str, task: Callable[[object], int], argv: list[str], command: str) -> int:
    """Run ``task(cfg)`` as a Hydra app on the primary config ``config_name`` of ``relgen.conf``,
    with ``argv`` as its command line (Hydra overrides, already in its grammar); returns the exit
    status (relgen's rule: 2 for a command line or config Hydra refuses, ``task``'s own otherwise).

    Overrides that do not compose (a misspelt key, a value of the wrong type) are refused first,
    in one line naming the key (:func:`composition_error`), before anything loads. The primary
    config sets no Hydra output folder and no change of the working directory.
    """
    import hydra
    from hydra.core.global_hydra import GlobalHydra

    bad = [a for a in argv if "=" not in a]
    if bad and not any(a.startswith("-") for a in argv):  # Hydra's flags (--cfg job) are Hydra's
        print(f"relgen: error: {command}: expected key=value, got {bad[0]!r}; see {command} --help", file=sys.stderr)
        return EXIT_USAGE
    bad_line = composition_error(argv, config_name=config_name, command=command)
    if bad_line:
        print(f"relgen: error: {bad_line}", file=sys.stderr)
        return EXIT_USAGE
    code = 0

    @hydra.main(config_path="pkg://relgen.conf", config_name=config_name, version_base="1.3")
    def _app(cfg) -> None:
        nonlocal code
        task_started()
        code = run_cli(lambda: task(cfg))

    saved, was_initialized = sys.argv, GlobalHydra.instance().is_initialized()
    sys.argv = [command, *argv]
    try:
        run_hydra_app(_app, argv=argv, flag_keys={})
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else EXIT_USAGE)
    finally:
        sys.argv = saved
        if not was_initialized:
            GlobalHydra.instance().clear()  # the command may run again in this process
    return code
