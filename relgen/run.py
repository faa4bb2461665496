"""One training run: check, load, train, export, sample, summarise.

The order matters for users: everything that can be checked without weights (config, data,
method/dataset/backbone capabilities) is checked first, so a typo costs seconds, not the
minutes it takes to load SDXL. ``dry_run=true`` stops after those checks.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from relgen import rundir
from relgen.atomic import write_text
from relgen.data.registry import open_dataset
from relgen.errors import ConfigError, RelgenError
from relgen.export import exchange_paths, export_run  # noqa: F401  (also imported from here)
from relgen.registry import get_backbone, get_method
from relgen.train.drift import compare
from relgen.validation import training_resolution, validate

log = logging.getLogger("relgen")


def run_training(cfg: DictConfig, run_dir: str | Path, *, default_run_dir: bool = False,
                 write_extra: Optional[Callable[[Path], None]] = None) -> int:
    """Check, then train ``cfg`` in ``run_dir``; returns the exit status (0).

    Args:
        cfg: the composed run config.
        run_dir: the run folder. A folder this process creates (here, or Hydra before the call,
            see :func:`relgen.rundir.note_created`) is removed again when the run stops before
            its first training step: dry runs and refused runs leave nothing behind.
        default_run_dir: ``run_dir`` is the default, time-stamped name (no ``hydra.run.dir`` was
            given): ``resume=latest`` then continues the newest run of the same method, backbone
            and dataset under ``output_root``.
        write_extra: writes more files into the run folder once every check has passed (the
            command line writes Hydra's ``.hydra/`` record there).
    """

    state = _RunState(Path(run_dir), early_log=_hold_early_lines())
    given = state.run_dir
    if not given.exists():
        rundir.note_created(given)
    level = log.level
    if log.getEffectiveLevel() > logging.INFO:  # called from Python without logging set up: train.log still tells all
        log.setLevel(logging.INFO)
    try:
        _run(cfg, state, default_run_dir, write_extra)
        return 0
    except (Exception, KeyboardInterrupt) as exc:  # the end of the story goes to train.log too; the caller reports it
        state.file_only(_how_it_ended(exc, time.time() - state.started_at),
                        exc_info=None if isinstance(exc, (RelgenError, KeyboardInterrupt)) else exc)
        raise
    finally:
        log.setLevel(level)
        if state.threads_before is not None:  # a caller in this process gets its thread count back
            import torch

            torch.set_num_threads(state.threads_before)
        logging.getLogger().removeHandler(state.early_log)
        state.early_log.close()
        if state.log_handler is not None:
            logging.getLogger().removeHandler(state.log_handler)
            state.log_handler.close()
        try:
            # a folder made for this run goes again unless training began in it, and only while this
            # process holds its lock: a run refused because another one holds the folder leaves it alone
            for path in {given, state.run_dir}:
                if path != state.run_dir or not state.started:
                    rundir.remove_if_created(path, held=state.lock)
                else:  # training began: the folder is a run now, which a later refused run must keep
                    rundir.forget_created(path)
        finally:
            if state.lock is not None:
                state.lock.release()


@dataclass
class _RunState:
    """What :func:`run_training` must undo or keep when the run ends, however it ends."""

    run_dir: Path
    started: bool = False  # the first training step began: from then on the folder stays
    lock: Optional[Any] = None
    log_handler: Optional[logging.Handler] = None
    early_log: Optional[logging.Handler] = None  # lines logged before train.log exists, written into it
    started_at: float = field(default_factory=time.time)
    threads_before: Optional[int] = None  # torch's thread count before trainer.num_threads

    def say(self, text: str) -> None:
        """Print ``text`` and write it to train.log (the run's story, for reading it afterwards)."""
        print(text)
        self.file_only(text)

    def file_only(self, text: str, level: int = logging.INFO, exc_info: Optional[BaseException] = None) -> None:
        """Write ``text`` to train.log only (once it exists)."""
        if self.log_handler is not None:
            info = (type(exc_info), exc_info, exc_info.__traceback__) if exc_info is not None else None
            self.log_handler.handle(logging.LogRecord("relgen", level, __file__, 0, text, None, info))


def _run(cfg: DictConfig, state: "_RunState", default_run_dir: bool, write_extra) -> None:
    from relgen.plugin import check_capabilities

    validate(cfg)  # every value a user can get wrong, before anything loads or is written
    apply_dataset_resolution(cfg)
    method_cls = get_method(cfg.method.name)
    dataset = open_dataset(cfg.dataset, cfg.cache_dir)
    check_capabilities(method_cls, cfg.backbone.family, dataset.format, dataset.provides,
                       cfg.method.name, cfg.backbone.name, cfg.dataset.name)
    data = dataset.load()  # reads and validates every file now
    method_cls.check_data(cfg.method, data)  # method checks that need the data, not weights
    from relgen.data.images import check_images, image_paths

    # Headers only for a real run (its first step decodes everything anyway); a dry run decodes
    # every image, so a truncated or mislabelled file fails it rather than step 1.
    for line in check_images(image_paths(data), training_resolution(cfg)[1], decode=cfg.dry_run):
        log.warning("relgen: warning: %s", line)
    if cfg.dry_run:
        print(f"relgen: dry run ok: method={cfg.method.name} backbone={cfg.backbone.name} "
              f"dataset={cfg.dataset.name} ({dataset.describe(data)}); no weights were loaded")
        return

    import torch
    from accelerate import Accelerator

    from relgen.train.threads import busy_machine_warning, set_num_threads

    busy = busy_machine_warning(cfg.trainer.num_threads)
    if busy:
        log.warning("relgen: warning: %s", busy)
    state.threads_before = set_num_threads(cfg.trainer.num_threads)

    from accelerate.utils import ProjectConfiguration

    from relgen.generate import sample_grid
    from relgen.train.loop import Trainer, resolved_max_steps, write_json

    # trackers of trainer.report_to; TensorBoard writes under <run>/tensorboard
    acc = Accelerator(mixed_precision=cfg.trainer.mixed_precision, cpu=cfg.trainer.cpu,
                      log_with=list(cfg.trainer.report_to) or None,
                      project_config=ProjectConfiguration(project_dir=str(state.run_dir),
                                                          logging_dir=str(state.run_dir / "tensorboard")))
    main = acc.is_main_process
    # Every check that can refuse the run comes before the first write.
    run_dir, state.lock = claim_run_dir(cfg, state.run_dir, default_run_dir, acc)
    state.run_dir = run_dir
    resume = preflight(cfg, run_dir)
    if main:
        _write_atomic(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        if write_extra is not None:
            write_extra(run_dir)
        state.log_handler = _log_to_file(run_dir / "train.log", state.early_log)
        log.info("relgen: run %s: method=%s backbone=%s dataset=%s, %s steps, seed %d, %d process(es) on %s, "
                 "%d CPU threads", run_dir, cfg.method.name, cfg.backbone.name, cfg.dataset.name,
                 resolved_max_steps(cfg), cfg.seed, acc.num_processes, acc.device, torch.get_num_threads())
    torch.manual_seed(cfg.seed)
    what = f"tiny random weights ({cfg.backbone.tiny})" if cfg.backbone.tiny else cfg.backbone.pretrained
    log.info("relgen: loading backbone %s from %s (%s)", cfg.backbone.name, what, cfg.backbone.dtype)
    backbone = get_backbone(cfg.backbone.name)(cfg.backbone, cfg.cache_dir, acc.device)
    if cfg.trainer.gradient_checkpointing:
        backbone.unet.enable_gradient_checkpointing()
    log.info("relgen: setting up %s (its trained modules; text features and image latents are computed or "
             "read from the cache once)", cfg.method.name)
    method = method_cls(cfg.method, backbone, data)
    trainer = Trainer(cfg, run_dir, acc, backbone, method, render_samples=sample_grid)
    from relgen.sweep import pruning_hook

    hook = pruning_hook(cfg) if main else None  # a trial of an Optuna search with a pruner
    if hook is not None:
        trainer.validation_hooks.append(hook)
    if resume is not None:
        trainer.resume(resume.path, resume.state)
    state.started = True
    from relgen.train.loop import Pruned

    try:
        result = trainer.train()
    except Pruned as stop:
        if main:
            trainer.finish()
            write_json(run_dir / "summary.json", {
                "method": cfg.method.name, "backbone": cfg.backbone.name, "dataset": cfg.dataset.name,
                "status": "pruned", "steps": trainer.step, "run_dir": str(run_dir),
                "objective": objective_record(cfg, stop.value, stop.step)})
        raise
    if not main:
        return

    with trainer.averaged_weights():  # the EMA of the trained tensors when trainer.ema_decay is on
        export_dir = export_run(cfg, run_dir, method, step=trainer.step)
    log.info("relgen: step %d: export %s", trainer.step, export_dir)
    samples = None
    if cfg.trainer.sample_at_end:
        samples = trainer.sample_grid("final")
    trainer.finish()
    summary = {
        "method": cfg.method.name, "backbone": cfg.backbone.name, "dataset": cfg.dataset.name,
        "steps": trainer.step, "final": result["final_logs"], "train_seconds": round(result["seconds"], 2),
        "num_processes": acc.num_processes, "lr": trainer.lr, "device": str(acc.device),
        "run_dir": str(run_dir), "export": str(export_dir),
        "samples": str(samples) if samples else None,
        "checkpoints": str(run_dir / "checkpoints"), "metrics": str(run_dir / "metrics.csv"),
        "status": "completed", "val_loss": result["val_loss"],
        "objective": objective_record(cfg, result["val_loss"], trainer.step),
    }
    if trainer.sample_warnings:
        summary["sample_warnings"] = trainer.sample_warnings
    if cfg.trainer.objective != "val_loss":  # a relgen.evaluate metric of the export
        from relgen.sweep import metric_objective

        summary["objective"] = metric_objective(cfg, run_dir, trainer.step)
    if resume is not None:
        summary["resumed_from"] = str(resume.path)
        summary["resumed_at_step"] = resume.step
        summary["changed_on_resume"] = {k: {"checkpoint": a, "now": b} for k, (a, b) in resume.applied.items()}
    write_json(run_dir / "summary.json", summary)
    what = (f"trained {cfg.method.name} on {cfg.backbone.name} for {trainer.step} steps" if resume is None else
            f"finished {cfg.method.name} on {cfg.backbone.name} at step {trainer.step}: export and final "
            "sample grid written" if resume.finishing else
            f"trained {cfg.method.name} on {cfg.backbone.name} from step {resume.step} to {trainer.step}")
    wall = time.time() - state.started_at
    summary_lines = [f"relgen: {what} in {_duration(wall)} (wall time; training {_duration(result['seconds'])})"]
    summary_lines += [f"  {key:12s} {summary[key]}" for key in ("run_dir", "export", "samples", "checkpoints",
                                                                  "metrics") if summary[key]]
    objective = summary["objective"]
    summary_lines.append(f"  {'objective':12s} {objective['name']}={objective['value']:.6g} "
                         f"({objective['direction']}; {objective.get('report', 'validation.csv')})")
    for line in summary_lines:
        state.say(line)


def objective_record(cfg: DictConfig, value: float, step: int) -> dict[str, Any]:
    """summary.json's ``objective`` for the validation loss: its value and direction (minimize)."""
    return {"name": "val_loss", "value": float(value), "direction": "minimize", "step": int(step),
            "val_batches": int(cfg.trainer.val_batches), "val_seed": int(cfg.trainer.val_seed)}


def apply_dataset_resolution(cfg: DictConfig) -> None:
    """``dataset.resolution`` sets the training resolution of a method that takes one.

    Precedence: ``method.resolution``, then ``dataset.resolution``, then the backbone's
    native one (the method reads ``method.resolution or backbone.resolution``).
    """
    res = cfg.dataset.get("resolution")
    if res is None:
        return
    if "resolution" not in cfg.method:
        raise ConfigError(f"dataset.resolution={res}: method {cfg.method.name} has no training resolution "
                          "to set; remove dataset.resolution")
    if cfg.method.resolution is None:
        cfg.method.resolution = res


def claim_run_dir(cfg: DictConfig, run_dir: Path, default_run_dir: bool, acc) -> tuple[Path, Optional[Any]]:
    """The folder this run works in, and (on rank 0 only) its held :class:`relgen.rundir.RunLock`.

    The folder is ``run_dir``, or for ``resume=latest`` without an explicit ``hydra.run.dir``
    the newest earlier run of the same method, backbone and dataset under ``output_root``.
    Under several processes rank 0 decides and owns it: it alone takes the lock, and every
    process gets rank 0's folder.

    Raises:
        ConfigError: another live process holds the folder (its pid named), or ``resume=latest``
            found no earlier run.
    """

    if cfg.resume == "latest" and default_run_dir and acc.is_main_process:
        root = Path(cfg.output_root)
        found = rundir.find_latest_run(root, cfg.method.name, cfg.backbone.name, cfg.dataset.name,
                                       exclude=run_dir)
        if found is None:
            raise ConfigError(f"resume=latest: no earlier run of method={cfg.method.name} "
                              f"backbone={cfg.backbone.name} dataset={cfg.dataset.name} with checkpoints under "
                              f"{root / cfg.method.name / cfg.backbone.name / cfg.dataset.name}; start without "
                              "resume= or give hydra.run.dir= of the run to continue")
        print(f"relgen: resume=latest continues {found} (the newest run of method={cfg.method.name} "
              f"backbone={cfg.backbone.name} dataset={cfg.dataset.name} under {root})")
        run_dir = found
    if acc.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        run_dir = Path(broadcast_object_list([str(run_dir)], from_process=0)[0])
    lock = rundir.RunLock(run_dir).acquire() if acc.is_main_process else None
    return run_dir, lock


class Resume:
    """A checked resume: the checkpoint, its loaded state and the applied config changes."""

    def __init__(self, path: Path, state: dict[str, Any], applied: dict[str, tuple[Any, Any]]) -> None:
        self.path = path
        self.state = state
        self.applied = applied
        self.step = int(state["step"])
        #: training reached max_steps but the export, final grid or summary was not written
        #: (a kill or a full disk after the last step): the resume redoes only those
        self.finishing = False


def finished_at(run_dir: Path) -> Optional[int]:
    """The step a run's ``summary.json`` (written last, after the export and final grid) records,
    ``None`` when it has none: its end was never reached."""
    import json

    try:
        return int(json.loads((Path(run_dir) / "summary.json").read_text())["steps"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def preflight(cfg: DictConfig, run_dir: Path) -> Optional[Resume]:
    """Every check that can refuse a run in an existing folder; nothing is written here.

    Returns the resume to perform (``None`` for a fresh run).

    Raises:
        ConfigError: the folder already holds checkpoints and no ``resume=`` was given; the
            checkpoint is of another method or backbone; the config changes a key the saved
            state depends on (all such keys listed); or there is nothing left to train.
    """
    from relgen.train import checkpoint as ckpt
    from relgen.train.loop import resolved_max_steps

    if not cfg.resume:
        found = ckpt.checkpoint_dirs(run_dir)
        if found:
            step = ckpt.latest_step(run_dir)
            unfinished = step == resolved_max_steps(cfg) and finished_at(run_dir) != step
            what = (f"its training reached step {step} but its export or final sample grid was not written; "
                    "pass resume=latest to write them" if unfinished else "pass resume=latest to continue it")
            raise ConfigError(f"{run_dir}: already holds checkpoints; {what}, or choose a new hydra.run.dir")
        return None
    path = ckpt.find_checkpoint(run_dir, cfg.resume)
    state = ckpt.load_checkpoint(path)
    ckpt.check_same_run(state, cfg.method.name, cfg.backbone.name, path)
    saved_cfg = path / "config.yaml"
    applied: dict[str, tuple[Any, Any]] = {}
    if saved_cfg.is_file():
        drift = compare(OmegaConf.load(saved_cfg), cfg)
        if drift.refused:
            changes = ", ".join(f"{k} (unclassed)" if k in drift.unclassed else k for k in drift.refused)
            raise ConfigError(f"{path}: cannot resume with changed {changes}: the checkpoint's state depends "
                              f"on them; put them back as in {saved_cfg}, or start a new run")
        applied = drift.applied
    step, max_steps = int(state["step"]), resolved_max_steps(cfg)
    if max_steps == step and finished_at(run_dir) != step:
        resume = Resume(path, state, applied)
        resume.finishing = True
        print(f"relgen: {path}: training reached max_steps={step}; writing the export, the final sample grid "
              "and summary.json it did not finish")
        return resume
    if max_steps <= step:
        raise ConfigError(f"{path}: the checkpoint is at step {step} and max_steps is {max_steps}: nothing to "
                          f"train; raise trainer.max_steps (or method.max_steps) above {step} to continue")
    for key, (before, after) in applied.items():
        log.info("resume: %s changed from %r to %r; applied from step %d", key, before, after, step + 1)
    return Resume(path, state, applied)


def _write_atomic(path: Path, text: str) -> None:
    write_text(path, text, "run config")


def _how_it_ended(exc: BaseException, seconds: float) -> str:
    """train.log's last line for a run that did not finish (the console gets the caller's report)."""
    after = f"after {_duration(seconds)} (wall time)"
    if isinstance(exc, RelgenError):
        return f"relgen: stopped {after}: error: {exc}"
    if isinstance(exc, KeyboardInterrupt):
        return f"relgen: interrupted {after}; the last checkpoint is intact (resume=latest)"
    return f"relgen: failed {after}: {type(exc).__name__}: {exc}"


def _hold_early_lines() -> logging.Handler:
    """Keep the lines logged before the run folder's train.log exists (the checks' warnings and
    notes), so :func:`_log_to_file` writes them first."""
    from logging.handlers import MemoryHandler

    handler = MemoryHandler(capacity=10_000, flushLevel=logging.CRITICAL + 1, flushOnClose=False)
    handler.setLevel(logging.INFO)
    logging.getLogger().addHandler(handler)
    return handler


def _log_to_file(path: Path, early: Optional[logging.Handler] = None) -> logging.Handler:
    """Also write the run's log lines to ``path`` (appending, so a resume continues the file),
    starting with those ``early`` held."""
    handler = logging.FileHandler(path)
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    if early is not None:
        logging.getLogger().removeHandler(early)
        early.setTarget(handler)
        early.flush()
    logging.getLogger().addHandler(handler)
    return handler


def _duration(seconds: float) -> str:
    """``12:03`` / ``1:02:03`` (tqdm's format), ``4.2 s`` under a minute."""
    return f"{seconds:.1f} s" if seconds < 60 else tqdm.format_interval(seconds)
