"""The one training loop. Every method runs through it.

A *step* is one optimizer update made of ``grad_accum`` micro-batches. Checkpoints fall on
step boundaries and hold everything needed to continue bit for bit: method state, optimizer,
LR scheduler, RNG states, the EMA of the trained tensors and the step. All randomness of a
step (data draws, noise, timesteps) comes from one ``torch.Generator`` that is part of that
state.

The loop-wide training options live here once and so work for every method on every backbone:
the optimizer (``method.optimizer``), min-SNR-γ loss weighting (``trainer.snr_gamma``), noise
offset and input perturbation (``trainer.noise_offset``, ``trainer.input_perturbation``; both
reach the method through ``StepContext``), the EMA (``trainer.ema_decay``) and the trackers
(``trainer.report_to``, through accelerate).
"""

from __future__ import annotations

import csv
import logging
import math
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from relgen import atomic
from relgen.errors import RelgenError, write_error
from relgen.export import export_run
from relgen.grid import flat_images
from relgen.plugin import Method, StepContext
from relgen.train import checkpoint as ckpt
from relgen.train.losses import make_weighting
from relgen.train.optim import make_optimizer
from relgen.train.timesteps import make_timestep_sampler

log = logging.getLogger("relgen")

#: Step lines in the log of a run without ``trainer.status_every``.
STATUS_LINES = 20


def effective_lr(mcfg, num_processes: int) -> float:
    """``scale_lr`` multiplies by batch × accumulation × processes (diffusers' --scale_lr)."""
    if mcfg.scale_lr:
        return mcfg.lr * mcfg.batch_size * mcfg.grad_accum * num_processes
    return mcfg.lr


def resolved_max_steps(cfg: DictConfig) -> int:
    """``trainer.max_steps`` when set, else ``method.max_steps``."""
    return int(cfg.trainer.max_steps if cfg.trainer.max_steps is not None else cfg.method.max_steps)


class Pruned(Exception):
    """A validation hook stopped the run early (a sweeper pruned its trial)."""

    def __init__(self, step: int, value: float) -> None:
        super().__init__(f"pruned at step {step} (val_loss {value:.6g})")
        self.step = step
        self.value = value

    def __reduce__(self):  # crosses process boundaries (joblib, submitit, Ray) intact
        return (Pruned, (self.step, self.value))


class Trainer:
    """Runs ``method`` for ``max_steps`` optimizer steps in ``run_dir``.

    ``validation_hooks`` are called on the main process as ``hook(step, val_loss)`` after each
    validation; one returning True stops the run with :class:`Pruned`.
    """

    def __init__(self, cfg: DictConfig, run_dir: Path, accelerator, backbone, method: Method,
                 render_samples: Optional[Callable[..., Path]] = None) -> None:
        """``render_samples(backbone, artifact, prompts, path, seed=, num_images=, steps=, guidance=,
        title=, progress=, inspect_rows=)`` draws a sample grid (:func:`relgen.generate.sample_grid`); ``None``: no grids."""
        self.render_samples = render_samples
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.acc = accelerator
        self.backbone = backbone
        self.method = method
        mcfg, tcfg = cfg.method, cfg.trainer
        self.max_steps = resolved_max_steps(cfg)
        self.checkpoint_every = tcfg.checkpoint_every or mcfg.checkpoint_every
        self.grad_accum = mcfg.grad_accum

        # Trainable parameters always stay fp32, whatever the frozen modules' dtype; mixed
        # precision only changes the compute dtype (avoids "Attempting to unscale FP16 gradients").
        self.param_groups = method.trainable_parameters()
        self.params = [p for g in self.param_groups for p in g["params"]]
        for p in self.params:
            if p.dtype != torch.float32:
                p.data = p.data.float()
        self.lr = effective_lr(mcfg, accelerator.num_processes)
        optimizer = make_optimizer(self.param_groups, self.lr, mcfg, accelerator.device)
        from diffusers.optimization import get_scheduler

        self.lr_scheduler = get_scheduler(mcfg.lr_scheduler, optimizer, num_warmup_steps=mcfg.lr_warmup_steps,
                                          num_training_steps=self.max_steps)
        # This config's optimizer hyper-parameters (base rates included): a resume loads the
        # checkpoint's optimizer state and then puts these back, so a changed value is applied.
        # Only keys the config sets: optimizers such as Prodigy also keep running state in their
        # groups (its step-size estimate "d"), which must come from the checkpoint.
        from_config = {"initial_lr", "betas", "eps", "weight_decay", *(mcfg.optimizer_args or {})}
        self._hparams = [{k: v for k, v in g.items() if k in from_config} for g in optimizer.param_groups]
        self.optimizer = accelerator.prepare(optimizer)
        # One generator for all of a step's randomness; ranks draw different streams.
        self.generator = torch.Generator().manual_seed(cfg.seed + 1000003 * accelerator.process_index)
        self.sample_timesteps = make_timestep_sampler(mcfg.timestep_sampler, backbone.num_train_timesteps,
                                                      mcfg.focal_alpha)
        self.weighting = None
        if tcfg.snr_gamma is not None:
            self.weighting = make_weighting(tcfg.snr_gamma, backbone.noise_scheduler.alphas_cumprod,
                                            backbone.prediction_type)
            log.info("trainer.snr_gamma=%s weights %s's denoising terms %s", tcfg.snr_gamma, mcfg.name,
                     list(method.denoising_terms))
        self.ema = None
        if tcfg.ema_decay is not None:
            from diffusers.training_utils import EMAModel

            # diffusers' EMAModel: decay min(ema_decay, (1 + n) / (10 + n)) at update n + 1, as
            # diffusers' train_text_to_image.py --use_ema
            self.ema = EMAModel(self.params, decay=tcfg.ema_decay)
        self.step = 0
        self.sample_warnings: list[str] = []  # one line per sample grid with flat (e.g. black) images
        self.config_yaml = OmegaConf.to_yaml(cfg, resolve=True)
        self.validation_hooks: list[Callable[[int, float], bool]] = []

    # ------------------------------------------------------------------ state
    def state(self) -> dict[str, Any]:
        return {"method": self.cfg.method.name, "backbone": self.cfg.backbone.name, "step": self.step,
                "method_state": self.method.state_dict(), "optimizer": self.optimizer.optimizer.state_dict(),
                "lr_scheduler": self.lr_scheduler.state_dict(), "rng": ckpt.rng_state(self.generator),
                **({"ema": self.ema.state_dict()} if self.ema is not None else {})}

    def resume(self, path: Path, state: Optional[dict[str, Any]] = None) -> None:
        """Continue from the checkpoint ``path`` (``state``: its already loaded ``state.pt``).

        The method state, optimizer moments, schedule step and RNG states come from the
        checkpoint; the optimizer's hyper-parameters and base learning rates come from this
        run's config, so a changed ``method.lr`` or ``max_steps`` takes effect from the next
        step while the schedule keeps its position (see :mod:`relgen.train.drift`).
        """
        if state is None:
            state = ckpt.load_checkpoint(path)
        ckpt.check_same_run(state, self.cfg.method.name, self.cfg.backbone.name, path)
        self.method.load_state_dict(state["method_state"])
        self.optimizer.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        if self.ema is not None:
            if "ema" not in state:
                raise RelgenError(f"{path}: holds no EMA (the run was started without trainer.ema_decay); resume "
                                  "it without trainer.ema_decay, or start a new run")
            self.ema.load_state_dict(state["ema"])
        ckpt.restore_rng_state(state["rng"], self.generator)
        self.step = int(state["step"])
        self._apply_hparams()
        if self.acc.is_main_process:
            _truncate_metrics(self.run_dir / "metrics.csv", self.step)
            _truncate_metrics(self.run_dir / "validation.csv", self.step)
        log.info("resumed from %s at step %d", path, self.step)

    def _apply_hparams(self) -> None:
        """Put this config's hyper-parameters back after loading an optimizer and schedule state."""
        groups = self.optimizer.optimizer.param_groups
        for group, hparams in zip(groups, self._hparams):
            group.update(hparams)
        sched = self.lr_scheduler
        sched.base_lrs = [h["initial_lr"] for h in self._hparams]
        # The rate at the schedule's current step, as LambdaLR.step() computes it.
        rates = [base * fn(sched.last_epoch) for base, fn in zip(sched.base_lrs, sched.lr_lambdas)]
        for group, rate in zip(groups, rates):
            group["lr"] = rate
        sched._last_lr = rates

    def save(self) -> Optional[Path]:
        if not self.acc.is_main_process:
            return None
        state = self.state()
        bad = ckpt.nonfinite_tensors(state["method_state"])
        if bad:  # never write a checkpoint that cannot be trained on
            raise RelgenError(f"step {self.step}: {bad[0]} holds non-finite values; not writing a checkpoint; "
                              f"{self._last_good()}; lower method.lr or check the data")
        big = ckpt.oversized_tensors(state["method_state"], self.cfg.trainer.max_abs_weight)
        if big:
            raise RelgenError(f"step {self.step}: {big[0]} holds values above trainer.max_abs_weight="
                              f"{self.cfg.trainer.max_abs_weight:g} (blown up); not writing a checkpoint; "
                              f"{self._last_good()}; lower method.lr")
        return ckpt.save_checkpoint(self.run_dir, self.step, state, self.config_yaml,
                                    keep=self.cfg.trainer.keep_checkpoints)

    # ------------------------------------------------------------------ loop
    def train(self) -> dict[str, Any]:
        tcfg = self.cfg.trainer
        main = self.acc.is_main_process
        if main and self.step == 0:  # a fresh start: rows of a run killed before its first checkpoint go
            _truncate_metrics(self.run_dir / "metrics.csv", 0)
        metrics = _MetricsWriter(self.run_dir) if main else None
        val_writer = _MetricsWriter(self.run_dir, "validation.csv") if main else None
        self.start_trackers()
        bar = tqdm(total=self.max_steps, initial=self.step, disable=not (main and tcfg.progress),
                   desc=f"{self.cfg.method.name}", dynamic_ncols=True)
        last_logs: dict[str, float] = {}
        started, first_step = time.time(), self.step
        status_every = tcfg.status_every or max(1, self.max_steps // STATUS_LINES)
        log.info("relgen: training %s on %s for steps %d to %d (a line every %d steps; checkpoints every %d)",
                 self.cfg.method.name, self.cfg.backbone.name, self.step + 1, self.max_steps, status_every,
                 self.checkpoint_every)
        # log lines go around the progress bar instead of through it (tqdm's logging redirect)
        with logging_redirect_tqdm(loggers=[logging.getLogger()]):
            while self.step < self.max_steps:
                step_logs = self.run_step()
                last_logs = step_logs
                if self.step % tcfg.log_every == 0 or self.step == self.max_steps:
                    if metrics:
                        metrics.write(self.step, step_logs)
                    self.acc.log({k: v for k, v in step_logs.items() if math.isfinite(v)}, step=self.step)
                bar.update(1)
                bar.set_postfix(loss=f"{step_logs['loss']:.4f}")
                if main and (self.step % status_every == 0 or self.step == self.max_steps):
                    log.info("%s", status_line(self.step, self.max_steps, step_logs,
                                               time.time() - started, self.step - first_step))
                if self.step % self.checkpoint_every == 0 or self.step == self.max_steps:
                    path = self.save()
                    if path is not None:
                        log.info("relgen: step %d: checkpoint %s", self.step, path)
                export_every = self.cfg.method.export_every
                if main and export_every and self.step % export_every == 0 and self.step < self.max_steps:
                    path = export_run(self.cfg, self.run_dir, self.method, step=self.step, final=False)
                    log.info("relgen: step %d: export %s", self.step, path)
                if main and tcfg.sample_every and self.step % tcfg.sample_every == 0 and self.step < self.max_steps:
                    self.sample_grid(f"step-{self.step:06d}")
                if tcfg.validate_every and self.step % tcfg.validate_every == 0 and self.step < self.max_steps:
                    self.run_validation(val_writer)
                self.acc.wait_for_everyone()
        bar.close()
        if metrics:
            metrics.close()
        if not last_logs and main:  # nothing left to train (a resume that finishes the export): the last row
            last_logs = _last_metrics(self.run_dir / "metrics.csv")
        val_loss = self.run_validation(val_writer, final=True)
        return {"final_logs": last_logs, "seconds": time.time() - started, "val_loss": val_loss}

    # ------------------------------------------------------------------ validation
    def validation_losses(self) -> dict[str, float]:
        """The validation losses of the current (EMA, when on) parameters.

        ``trainer.val_batches`` micro-batches, the i-th drawn with a generator seeded
        ``trainer.val_seed + i`` (data, noise and timesteps alike), so every run of a sweep and
        every validation of a run sees the same batches. Timesteps are uniform and noise offset,
        input perturbation and loss weighting are off: runs that differ in those options stay
        comparable. ``val_loss`` is the method's first ``denoising_terms`` entry (its own-image
        denoising MSE: the steering, negative or keypoint terms depend on swept weights); every
        logged term is also returned as ``val/<term>``. Training state is untouched: the global
        RNG is forked and a method attribute rebound by the pass (e.g. a data schedule
        position) gets its value back.
        """
        tcfg = self.cfg.trainer
        sampler = make_timestep_sampler("uniform", self.backbone.num_train_timesteps)
        sums: dict[str, float] = {}
        saved = dict(vars(self.method))
        devices = [self.acc.device] if self.acc.device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices), torch.no_grad(), self.averaged_weights():
                torch.manual_seed(tcfg.val_seed)  # dropout and other draws from the global RNG
                for i in range(tcfg.val_batches):
                    generator = torch.Generator().manual_seed(tcfg.val_seed + i)
                    ctx = StepContext(generator, sampler, self.step, 0)
                    batch = self.method.next_batch(generator)
                    with self.acc.autocast():
                        out = self.method.training_step(batch, ctx)
                    for k, v in {"loss": float(out.loss), **out.logs}.items():
                        sums[k] = sums.get(k, 0.0) + float(v) / tcfg.val_batches
        finally:
            for key in [k for k in vars(self.method) if k not in saved]:
                delattr(self.method, key)
            for key, value in saved.items():
                setattr(self.method, key, value)
        term = self.method.denoising_terms[0] if self.method.denoising_terms else "loss"
        losses = {"val_loss": sums.get(term, sums["loss"])}
        losses.update({f"val/{k}": v for k, v in sums.items()})
        return losses

    def run_validation(self, writer: Optional["_MetricsWriter"] = None, final: bool = False) -> float:
        """Compute, log (``validation.csv``, trackers) and hand the validation loss to the hooks
        (after the last step a hook's stop is moot: the run is complete)."""
        losses = self.validation_losses()
        value = losses["val_loss"]
        log.info("relgen: step %d: val_loss %.6g", self.step, value)
        if writer is not None:
            writer.write(self.step, losses)
        self.acc.log({k: v for k, v in losses.items() if math.isfinite(v)}, step=self.step)
        stop = False
        if self.acc.is_main_process:
            stop = any([bool(hook(self.step, value)) for hook in self.validation_hooks])
        if self.acc.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            stop = broadcast_object_list([stop], from_process=0)[0]
        if stop and not final:
            raise Pruned(self.step, value)
        return value

    def run_step(self) -> dict[str, float]:
        """One optimizer step: ``grad_accum`` micro-batches, then clip, update, schedule."""
        step_logs: dict[str, float] = {}
        for micro in range(self.grad_accum):
            tcfg = self.cfg.trainer
            ctx = StepContext(self.generator, self.sample_timesteps, self.step, micro,
                              noise_offset=tcfg.noise_offset, input_perturbation=tcfg.input_perturbation,
                              weighting=self.weighting)
            batch = self.method.next_batch(self.generator)
            with self.acc.autocast():
                out = self.method.training_step(batch, ctx)
            if not torch.isfinite(out.loss):
                raise RelgenError(f"step {self.step + 1}: the loss is {out.loss.item()} (not finite); "
                                  f"stopping, {self._last_good()}; lower method.lr or check the data")
            self.acc.backward(out.loss / self.grad_accum)
            for k, v in {"loss": out.loss.item(), **out.logs}.items():
                step_logs[k] = step_logs.get(k, 0.0) + float(v) / self.grad_accum
        if self.acc.num_processes > 1:
            # Methods train few parameters and call modules in their own way, so gradients
            # are averaged explicitly instead of wrapping a module in DDP.
            for p in self.params:
                if p.grad is not None:
                    p.grad = self.acc.reduce(p.grad, reduction="mean")
        if self.cfg.method.max_grad_norm:
            step_logs["grad_norm"] = float(self.acc.clip_grad_norm_(self.params, self.cfg.method.max_grad_norm))
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.method.after_optimizer_step()
        if self.ema is not None:
            self.ema.step(self.params)
            self.check_ema()
        self.step += 1
        # The loss can be finite while the update was not (an inf rate, an overflowing moment):
        # check what is trained, so that no later checkpoint or export holds NaN or inf.
        for group in self.param_groups:
            for p in group["params"]:
                if not bool(torch.isfinite(p.detach()).all()):
                    name = group.get("name") or "a trained parameter"
                    raise RelgenError(f"step {self.step}: {name} ({tuple(p.shape)}) is not finite after the "
                                      f"optimizer step; stopping, {self._last_good()}; lower method.lr "
                                      "or set method.max_grad_norm")
        limit = self.cfg.trainer.max_abs_weight
        if limit is not None:  # finite but blown up: a rate far too high (method.lr=1e30) makes rows of 1e30
            for group in self.param_groups:
                for p in group["params"]:
                    peak = float(p.detach().abs().max()) if p.numel() else 0.0
                    if peak > limit:
                        name = group.get("name") or "a trained parameter"
                        raise RelgenError(f"step {self.step}: {name} ({tuple(p.shape)}) reached |x| = {peak:.3g}, "
                                          f"above trainer.max_abs_weight={limit:g} (the update blew up); "
                                          f"stopping, {self._last_good()}; lower method.lr or set "
                                          "method.max_grad_norm")
        step_logs["lr"] = self.lr_scheduler.get_last_lr()[0]
        return step_logs

    def _last_good(self) -> str:
        """Names the newest checkpoint whose trained tensors are all finite."""
        for path in reversed(ckpt.checkpoint_dirs(self.run_dir)):
            try:
                state = ckpt.load_checkpoint(path)
            except RelgenError:
                continue
            method_state = state.get("method_state", {})
            if not ckpt.nonfinite_tensors(method_state) and not ckpt.oversized_tensors(
                    method_state, self.cfg.trainer.max_abs_weight):
                return f"the last good checkpoint is {path} (resume=latest continues from it)"
        return "no checkpoint was written yet"

    def check_ema(self) -> None:
        """The NaN guard of the EMA: stop when an averaged tensor is no longer finite."""
        if all(bool(torch.isfinite(p).all()) for p in self.ema.shadow_params):
            return
        raise RelgenError(f"step {self.step + 1}: the EMA of the trained tensors is not finite; stopping, "
                          f"{self._last_good()}; "
                          "lower method.lr or check the data")

    @contextmanager
    def averaged_weights(self):
        """Inside, the trained tensors hold their EMA (when ``trainer.ema_decay`` is on)."""
        if self.ema is None:
            yield
            return
        self.ema.store(self.params)
        self.ema.copy_to(self.params)
        try:
            yield
        finally:
            self.ema.restore(self.params)

    def sample_grid(self, tag: str) -> Optional[Path]:
        """Render the method's sample prompts with fixed seeds into ``samples/<tag>.png`` (with the
        EMA weights when on) and send the grid to the trackers."""
        prompts = self.method.sample_prompts()
        if not prompts or self.render_samples is None:
            return None
        mcfg, num_images = self.cfg.method, self.cfg.trainer.num_samples
        title = f"{self.cfg.method.name} · {self.cfg.backbone.name} · step {self.step}"
        target = self.run_dir / "samples" / f"{tag}.png"
        log.info("relgen: step %d: rendering the sample grid %s (%d prompts x %d images, %s denoising steps)",
                 self.step, target, len(prompts), num_images, mcfg.sample_steps or self.backbone.cfg.inference_steps)
        started = time.time()
        counts = []
        with self.averaged_weights():
            path = self.render_samples(self.backbone, self.method.live_artifact(), prompts, target,
                                       seed=mcfg.sample_seed, num_images=num_images, steps=mcfg.sample_steps,
                                       guidance=mcfg.sample_guidance, title=title, progress=self.cfg.trainer.progress,
                                       inspect_rows=lambda rows: counts.append(flat_images(rows)))
        log.info("relgen: step %d: sample grid %s (%.1f s)", self.step, path, time.time() - started)
        flat, total = counts[0]
        if flat:  # a black or single-colour picture: the weights or the sampler broke, training may go on
            line = (f"{path}: {flat} of {total} sample images are a single flat colour (black when the "
                    "trained tensors blew up); look at the grid, lower method.lr or check the data")
            log.warning("relgen: warning: %s", line)
            self.sample_warnings.append(line)
        self.log_image("samples", path)
        return path

    # ------------------------------------------------------------------ trackers
    def start_trackers(self) -> None:
        """Start accelerate's trackers of ``trainer.report_to`` once (the Accelerator holds them)."""
        if self.acc.trackers or not self.acc.log_with:
            return
        config = _flat_config(OmegaConf.to_container(self.cfg, resolve=True))
        self.acc.init_trackers("relgen", config=config,
                               init_kwargs={"wandb": {"name": self.run_dir.name, "dir": str(self.run_dir)}})

    def log_image(self, key: str, path: Path) -> None:
        """Send one PNG to every tracker (as diffusers' log_validation does)."""
        if not self.acc.trackers or path is None or not self.acc.is_main_process:
            return
        import numpy as np
        from PIL import Image

        with Image.open(path) as image:
            array = np.asarray(image.convert("RGB"))
        for tracker in self.acc.trackers:
            if tracker.name == "tensorboard":
                tracker.log_images({key: array[None]}, step=self.step, dataformats="NHWC")
            elif hasattr(tracker, "log_images"):
                tracker.log_images({key: [array]}, step=self.step)

    def finish(self) -> None:
        """Close the trackers (after the final sample grid)."""
        if self.acc.trackers:
            self.acc.end_training()


class _MetricsWriter:
    """metrics.csv, one row per logged step (the trackers get the same scalars)."""

    def __init__(self, run_dir: Path, name: str = "metrics.csv") -> None:
        self.path = Path(run_dir) / name
        self.fields: Optional[list[str]] = None
        if self.path.exists():
            with open(self.path) as f:
                self.fields = next(csv.reader(f), None)

    def write(self, step: int, logs: dict[str, float]) -> None:
        """Append the row of ``step``; a failed write leaves the file as it was and is one line."""

        fields = self.fields
        try:
            if fields is None or set(logs) - set(fields):
                # a new header (the first row, or a key first logged after step 1: earlier rows get
                # empty cells), written whole to a temporary file and renamed over the old one
                rows = []
                if fields is not None:
                    with open(self.path, newline="") as f:
                        rows = list(csv.reader(f))[1:]
                fields = (fields or ["step"]) + sorted(set(logs) - set(fields or ["step"]))
                self._replace([fields] + [row + [""] * (len(fields) - len(row)) for row in rows])
                self.fields = fields
            size = self.path.stat().st_size
            try:
                with open(self.path, "a", newline="") as f:
                    csv.writer(f).writerow([step] + [_fmt(logs.get(k)) for k in fields[1:]])
            except OSError:
                try:  # no half row for a resume to read
                    os.truncate(self.path, size)
                except OSError:
                    pass
                raise
        except OSError as exc:
            raise write_error(exc, self.path, f"metrics row of step {step}") from exc

    def _replace(self, rows: list[list]) -> None:
        _write_csv(self.path, rows)

    def close(self) -> None:
        pass


def status_line(step: int, max_steps: int, logs: dict[str, float], seconds: float, done: int) -> str:
    """``step 40/500 · loss 0.1234 · lr 1.00e-04 · 1.23 s/step · 09:50 left``: one line of the log."""
    per_step = seconds / max(1, done)
    parts = [f"step {step}/{max_steps}", f"loss {logs.get('loss', float('nan')):.4f}"]
    if "lr" in logs:
        parts.append(f"lr {logs['lr']:.2e}")
    parts += [f"{per_step:.2f} s/step", f"{tqdm.format_interval(per_step * (max_steps - step))} left"]
    return " · ".join(parts)


def _flat_config(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"method.lr": 1e-4, ...}``: the run config as the flat scalars trackers store."""
    flat: dict[str, Any] = {}
    for key, value in (tree or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flat_config(value, name + "."))
        elif value is None or isinstance(value, (bool, int, float, str)):
            flat[name] = value
        else:
            flat[name] = str(value)
    return flat


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop rows logged after ``step`` (written before a crash, redone after resume)."""
    if not path.exists():
        return
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    kept = rows[:1] + [r for r in rows[1:] if r and int(r[0]) <= step]
    _write_csv(path, kept)


def _write_csv(path: Path, rows: list[list]) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            csv.writer(f).writerows(rows)

    atomic.write_with(path, write, "metrics")


def _last_metrics(path: Path) -> dict[str, float]:
    """The last row of ``metrics.csv`` as ``{column: value}`` (empty cells left out)."""
    if not path.exists():
        return {}
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return {}
    return {k: float(v) for k, v in rows[-1].items() if k != "step" and v not in ("", None)}


def _fmt(v) -> str:
    return "" if v is None else repr(float(v))


def write_json(path: Path, obj: Any) -> None:
    atomic.write_json(path, obj, "summary", newline=False, default=str)
