"""Every check of a composed config that needs no weights, in one place.

:func:`validate` runs right after Hydra composes a run and before anything is loaded or
written: a value a user can get wrong fails here with one line that names the key and the
accepted values, not minutes later inside torch or diffusers. ``dry_run=true`` runs it too.

Each check is a function ``check_<what>(cfg)`` that raises :class:`relgen.errors.ConfigError`
(an error) or returns a list of warning lines; :data:`CHECKS` lists them in the order they run.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Callable, Optional

from omegaconf import DictConfig, ListConfig, OmegaConf

from relgen.errors import ConfigError, RelgenError
from relgen.hub import check_hub_source, looks_like_path
from relgen.registry import get_backbone, get_method

log = logging.getLogger("relgen")

Check = Callable[[DictConfig], Optional[list[str]]]


def check_method_name(cfg: DictConfig) -> None:
    """The method, backbone and dataset names are registered (an unknown one lists the known)."""
    get_method(cfg.method.name)
    get_backbone(cfg.backbone.name)


#: The largest value a float32 holds: trained parameters are fp32, so a rate beyond it
#: overflows in the first update.
FLOAT32_MAX = 3.4028234663852886e38

#: The VAE's down-sampling factor of every supported backbone (latents are 1/8 of the image).
VAE_FACTOR = 8

#: The factor at which every UNet level's feature map stays whole (three 2x down-samplings of
#: the latent in SD 1.x/2.x/SDXL): other resolutions train, but with cropped skip connections.
UNET_FACTOR = 64

#: Config groups whose objects relgen builds from registry names, never from ``_target_``.
REGISTRY_GROUPS = ("method", "backbone", "dataset", "trainer")


def check_no_target(cfg: DictConfig) -> None:
    """Refuse ``_target_`` anywhere under the registry-built groups (it would be ignored)."""
    def walk(node: Any, where: str) -> None:
        if isinstance(node, DictConfig):
            for key in node.keys():
                name = f"{where}.{key}"
                if key == "_target_":
                    raise ConfigError(f"{name}: relgen builds {where.split('.')[0]} objects from registry "
                                      "names, never from _target_; remove the key and choose the object by "
                                      f"its name ({where.split('.')[0]}=<name>)")
                walk(node._get_node(key), name)

    for group in REGISTRY_GROUPS:
        if group in cfg:
            walk(cfg._get_node(group), group)


def _floats(node: Any, where: str):
    """Every float (also inside lists) under ``node``, with its dotted key."""
    if isinstance(node, DictConfig):
        for key in node.keys():
            yield from _floats(node._get_node(key), f"{where}.{key}")
    elif isinstance(node, ListConfig):
        for i in range(len(node)):
            yield from _floats(node._get_node(i), f"{where}[{i}]")
    else:
        value = node._value() if hasattr(node, "_value") else node
        if isinstance(value, float):
            yield where, value


def check_finite(cfg: DictConfig) -> None:
    """Every float of the run (weights, scales, rates) is finite."""
    for group in REGISTRY_GROUPS:
        if group not in cfg:
            continue
        for key, value in _floats(cfg._get_node(group), group):
            if not math.isfinite(value):
                raise ConfigError(f"{key}={value}: must be a finite number")


def check_learning_rate(cfg: DictConfig) -> None:
    """``method.lr``: finite, > 0 and representable in float32; warm-up steps >= 0."""
    lr = cfg.method.lr
    if not (math.isfinite(lr) and 0 < lr <= FLOAT32_MAX):
        raise ConfigError(f"method.lr={lr}: must be a finite number > 0 (e.g. method.lr=1e-4)")
    if cfg.method.lr_warmup_steps < 0:
        raise ConfigError(f"method.lr_warmup_steps={cfg.method.lr_warmup_steps}: must be >= 0")


def _at_least(key: str, value: Optional[int], low: int, optional: bool = False) -> None:
    if value is None and optional:
        return
    if value is None or value < low:
        hint = " or null" if optional else ""
        raise ConfigError(f"{key}={value}: must be an integer >= {low}{hint}")


def check_steps(cfg: DictConfig) -> None:
    """Steps, cadences and counts are >= 1 (``keep_checkpoints`` >= 0: 0 keeps every one)."""
    m, t = cfg.method, cfg.trainer
    _at_least("method.max_steps", m.max_steps, 1)
    _at_least("trainer.max_steps", t.max_steps, 1, optional=True)
    _at_least("method.checkpoint_every", m.checkpoint_every, 1)
    _at_least("trainer.checkpoint_every", t.checkpoint_every, 1, optional=True)
    _at_least("trainer.sample_every", t.sample_every, 0, optional=True)  # 0 or null: no grids during training
    _at_least("trainer.log_every", t.log_every, 1)
    _at_least("trainer.status_every", t.status_every, 1, optional=True)
    _at_least("trainer.num_threads", t.num_threads, 1, optional=True)
    _at_least("trainer.keep_checkpoints", t.keep_checkpoints, 0)
    _at_least("trainer.num_samples", t.num_samples, 1)
    if t.get("max_abs_weight") is not None and not (math.isfinite(t.max_abs_weight) and t.max_abs_weight > 0):
        raise ConfigError(f"trainer.max_abs_weight={t.max_abs_weight} must be a finite number > 0 (the largest "
                          "magnitude a trained tensor may reach before the run stops), or null (off)")
    _at_least("method.sample_steps", m.sample_steps, 1, optional=True)
    _at_least("backbone.inference_steps", cfg.backbone.inference_steps, 1)


def check_batch(cfg: DictConfig) -> None:
    """``method.batch_size`` and ``method.grad_accum`` are >= 1."""
    _at_least("method.batch_size", cfg.method.batch_size, 1)
    _at_least("method.grad_accum", cfg.method.grad_accum, 1)


def check_optimizer_values(cfg: DictConfig) -> None:
    """The optimizer's betas in [0, 1), epsilon > 0, weight decay >= 0, clipping norm > 0."""
    m = cfg.method
    for key in ("adam_beta1", "adam_beta2"):
        if not 0 <= m[key] < 1:
            raise ConfigError(f"method.{key}={m[key]}: must be in [0, 1)")
    if not m.adam_epsilon > 0:
        raise ConfigError(f"method.adam_epsilon={m.adam_epsilon}: must be > 0 (e.g. 1e-8)")
    if not m.weight_decay >= 0:
        raise ConfigError(f"method.weight_decay={m.weight_decay}: must be >= 0")
    if m.max_grad_norm is not None and not m.max_grad_norm > 0:
        raise ConfigError(f"method.max_grad_norm={m.max_grad_norm}: must be > 0, or null for no clipping")


def training_resolution(cfg: DictConfig) -> tuple[str, int]:
    """The key that sets the training resolution and its value: ``method.resolution``, else
    ``dataset.resolution``, else the backbone's native ``backbone.resolution``."""
    for key in ("method.resolution", "dataset.resolution"):
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None:
            return key, int(value)
    return "backbone.resolution", int(cfg.backbone.resolution)


def check_resolution(cfg: DictConfig) -> list[str]:
    """The training resolution is a multiple of 8 (error) and of 64 (warning)."""
    method_res = OmegaConf.select(cfg, "method.resolution", default=None)
    data_res = cfg.dataset.get("resolution")
    if method_res is not None and data_res is not None and method_res != data_res:
        raise ConfigError(f"method.resolution={method_res} and dataset.resolution={data_res} disagree; "
                          "set only one of them")
    warnings = []
    factor = None
    for key, value in (("backbone.resolution", cfg.backbone.resolution), training_resolution(cfg)):
        if value < VAE_FACTOR or value % VAE_FACTOR:
            raise ConfigError(f"{key}={value}: must be a positive multiple of {VAE_FACTOR} (the VAE's "
                              "down-sampling factor), e.g. 512")
        if key == "backbone.resolution":
            continue
        factor = factor or unet_down_factor(cfg.backbone)
        if value % factor:
            warnings.append(f"{key}={value} is not a multiple of {factor}: the UNet's feature maps do "
                            f"not halve evenly at every level; prefer {max(factor, value // factor * factor)}")
    return warnings


def unet_down_factor(bcfg: DictConfig) -> int:
    """The image side by which every UNet level stays whole: 8 x 2^(levels - 1), read from the UNet's
    ``config.json`` (``block_out_channels``) when ``backbone.pretrained`` is a local diffusers folder,
    else :data:`UNET_FACTOR`. Reads one small file; no weights."""
    import json

    from relgen.backbones.loading import resolve_pretrained

    if bcfg.get("tiny") or not bcfg.get("pretrained"):
        return UNET_FACTOR
    try:
        path = Path(resolve_pretrained(bcfg)).expanduser() / "unet" / "config.json"
        levels = len(json.loads(path.read_text())["block_out_channels"])
    except (RelgenError, OSError, ValueError, KeyError, TypeError):  # a hub id, or no readable config
        return UNET_FACTOR
    return VAE_FACTOR * 2 ** (levels - 1) if levels >= 1 else UNET_FACTOR


def check_optimizer(cfg: DictConfig) -> Optional[list[str]]:
    """``method.optimizer`` is known, its library is installed, its device is there (8-bit AdamW
    is CUDA-only) and ``method.optimizer_args`` names only arguments it accepts."""
    import torch
    from omegaconf import OmegaConf

    from relgen.train.optim import OPTIMIZERS, accepted_args, check_device, optimizer_class

    mcfg = cfg.method
    name = mcfg.optimizer
    if name not in OPTIMIZERS:
        raise ConfigError(f"method.optimizer='{name}' is not known; accepted: {', '.join(OPTIMIZERS)}")
    cuda = torch.cuda.is_available() and not cfg.trainer.cpu
    check_device(name, torch.device("cuda" if cuda else "cpu"))
    optimizer_class(name)
    extra = OmegaConf.to_container(mcfg.optimizer_args) if mcfg.optimizer_args else {}
    unknown = sorted(set(extra) - set(accepted_args(name)))
    if unknown:
        raise ConfigError(f"method.optimizer_args: {unknown} not accepted by method.optimizer={name}; accepted: "
                          f"{', '.join(accepted_args(name))}")
    if name == "prodigy" and mcfg.lr < 0.1:
        return [f"method.optimizer=prodigy estimates its own step size and expects method.lr near 1.0 "
                f"(its authors' advice); method.lr={mcfg.lr} makes it crawl"]
    return None


def check_training_options(cfg: DictConfig) -> None:
    """The loop-wide options are in range."""
    tcfg = cfg.trainer
    if tcfg.snr_gamma is not None and not tcfg.snr_gamma > 0:
        raise ConfigError(f"trainer.snr_gamma={tcfg.snr_gamma} must be > 0 (5 in Hang et al. 2023) or null (off)")
    for key in ("noise_offset", "input_perturbation"):
        if not tcfg[key] >= 0:
            raise ConfigError(f"trainer.{key}={tcfg[key]} must be >= 0 (0 is off)")
    if tcfg.ema_decay is not None and not 0 < tcfg.ema_decay < 1:
        raise ConfigError(f"trainer.ema_decay={tcfg.ema_decay} must be in (0, 1), e.g. 0.999, or null (off)")
    if tcfg.validate_every is not None and tcfg.validate_every < 1:
        raise ConfigError(f"trainer.validate_every={tcfg.validate_every} must be >= 1 (steps) or null (only at "
                          "the end)")
    if tcfg.val_batches < 1:
        raise ConfigError(f"trainer.val_batches={tcfg.val_batches} must be >= 1")
    if tcfg.objective != "val_loss":
        metric_objective_parts(tcfg.objective)  # a known metric and output, or one line naming them


def metric_objective_parts(objective: str) -> tuple[str, str]:
    """``"<metric>[.<output>]"`` -> ``(metric, output)``; the output defaults to the metric's first.

    Raises:
        ConfigError: an unknown metric or output (the known ones listed).
    """
    from relgen.evaluate.metrics import get_metric, list_metrics  # deferred: torch

    metric, _, output = objective.partition(".")
    try:
        cls = get_metric(metric)
    except ConfigError:
        raise ConfigError(f"trainer.objective={objective!r}: accepted: val_loss or <metric>[.<output>] with a "
                          f"relgen.evaluate metric: {', '.join(list_metrics())}") from None
    output = output or next(iter(cls.outputs))
    if output not in cls.outputs:
        raise ConfigError(f"trainer.objective={objective!r}: metric {metric} reports {', '.join(cls.outputs)}")
    return metric, output


def check_report_to(cfg: DictConfig) -> None:
    """``trainer.report_to`` lists installed accelerate trackers; the old key gets a migration line."""
    tcfg = cfg.trainer
    if tcfg.tensorboard is not None:
        new = "[tensorboard]" if tcfg.tensorboard else "[]"
        raise ConfigError(f"trainer.tensorboard was replaced by trainer.report_to: use trainer.report_to={new} "
                          "(accepted: tensorboard, wandb and accelerate's other trackers)")
    from accelerate.tracking import get_available_trackers
    from accelerate.utils import LoggerType

    known = [t.value for t in LoggerType if t.value != "all"]
    available = {str(t) for t in get_available_trackers()}
    for name in tcfg.report_to:
        if name not in known:
            raise ConfigError(f"trainer.report_to: '{name}' is not a tracker; accepted: {', '.join(known)} "
                              "(or [] for none)")
        if name not in available:
            raise ConfigError(f"trainer.report_to: {name} is not installed; pip install {name.replace('_', '-')}, "
                              "or drop it from trainer.report_to")


def check_method(cfg: DictConfig) -> Optional[list[str]]:
    """The method's own checks (:meth:`relgen.plugin.Method.check_config`), before anything loads."""
    return get_method(cfg.method.name).check_config(cfg)


#: Allowed values of the string options, by key (``None``: read from the library at check time).
TIMESTEP_SAMPLERS = ("uniform", "relation_focal")
MIXED_PRECISION = ("no", "fp16", "bf16")
PREDICTION_TYPES = ("epsilon", "v_prediction")


def _one_of(key: str, value, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not one of {list(allowed)}")


def check_string_options(cfg: DictConfig) -> None:
    """Timestep sampler, LR scheduler, mixed precision, dtypes, prediction type, inference scheduler."""
    from diffusers.optimization import SchedulerType

    from relgen.backbones.base import _DTYPES, _SCHEDULERS

    _one_of("method.timestep_sampler", cfg.method.timestep_sampler, TIMESTEP_SAMPLERS)
    _one_of("method.lr_scheduler", cfg.method.lr_scheduler, [s.value for s in SchedulerType])
    _one_of("trainer.mixed_precision", cfg.trainer.mixed_precision, MIXED_PRECISION)
    _one_of("backbone.dtype", cfg.backbone.dtype, list(_DTYPES))
    _one_of("backbone.vae_dtype", cfg.backbone.vae_dtype, list(_DTYPES))
    _one_of("backbone.prediction_type", cfg.backbone.prediction_type, PREDICTION_TYPES)
    _one_of("backbone.inference_scheduler", cfg.backbone.inference_scheduler, sorted(_SCHEDULERS))
    _one_of("backbone.family", cfg.backbone.family, ("sd", "sdxl"))


def check_weights(cfg: DictConfig) -> None:
    """The backbone's weights exist: a local folder or file, a package folder, or a hub id that is
    cached or on a reachable hub (found out once, in seconds; see :mod:`relgen.hub`)."""
    b = cfg.backbone
    if b.tiny:
        return
    if not b.pretrained:
        raise ConfigError(f"backbone {b.name}: set backbone.pretrained= to a hub id, a local diffusers folder "
                          "or a .safetensors file")
    if b.pretrained.startswith("pkg://"):
        from relgen.backbones.loading import resolve_pretrained

        resolve_pretrained(b)  # names the package or the missing model_index.json
        return
    local = Path(b.pretrained).expanduser()
    if local.exists() or looks_like_path(b.pretrained):
        if not local.exists():
            raise ConfigError(f"backbone.pretrained={b.pretrained}: no such file or folder; point it at a local "
                              "diffusers folder or a .safetensors file")
        if local.is_dir() and not (local / "model_index.json").is_file():
            raise ConfigError(f"backbone.pretrained={b.pretrained}: not a diffusers folder (no model_index.json); "
                              "point it at the folder save_pretrained wrote")
        if local.is_file() and b.single_file_config and not Path(b.single_file_config).expanduser().is_dir():
            if not looks_like_path(b.single_file_config):  # a hub id: cached, or a hub that answers
                check_hub_source("backbone.single_file_config", b.single_file_config, None, "model_index.json")
            else:
                raise ConfigError(f"backbone.single_file_config={b.single_file_config}: no such folder; point it at a "
                                  "local diffusers folder with the model's configs, or leave it unset to use "
                                  "the published configs shipped with relgen")
        if local.is_file() and local.suffix in (".safetensors", ".ckpt"):
            from relgen.backbones import single_file

            # the file's architecture and recorded prediction type, from its header alone
            single_file.check_backbone(b, single_file.detect(local), local)
        return
    check_hub_source("backbone.pretrained", b.pretrained, b.revision, "model_index.json",
                     hint="download the weights where there is network access, or set "
                          "backbone.pretrained=/path/to/diffusers-folder or /path/to/model.safetensors")


#: The checks :func:`validate` runs, in order. A new check is appended here.
CHECKS: list[Check] = [
    check_method_name,
    check_no_target,
    check_finite,
    check_learning_rate,
    check_steps,
    check_batch,
    check_optimizer_values,
    check_optimizer,
    check_resolution,
    check_training_options,
    check_report_to,
    check_method,
    check_string_options,
    check_weights,
]


def validate(cfg: DictConfig) -> list[str]:
    """Run every check of :data:`CHECKS`; log and return the warnings, raise on the first error."""
    warnings: list[str] = []
    for check in CHECKS:
        warnings.extend(check(cfg) or [])
    for line in warnings:
        log.warning("relgen: warning: %s", line)
    return warnings


__all__ = ["CHECKS", "ConfigError", "validate"]


def check_generation_options(opts: Any, vae_scale: int = 8) -> None:
    """Refuse generation settings the pipeline would fail on (or render black with), in one line.

    ``opts`` is a :class:`relgen.generate.GenerationOptions`: seed a whole number, counts and
    steps >= 1, a finite guidance scale >= 0, and a height and width that are multiples of the
    VAE's downsampling factor (8 for every Stable Diffusion VAE; diffusers refuses others).

    Raises:
        ConfigError: naming the option and what it accepts.
    """
    def whole(key: str, value: Any, least: int, optional: bool) -> None:
        if value is None and optional:
            return
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ConfigError(f"relgen.generate: {key}={value!r} must be a whole number >= {least}")

    whole("seed", opts.seed, 0, False)
    whole("num_images", opts.num_images, 1, False)
    whole("batch_size", opts.batch_size, 1, False)
    whole("steps", opts.steps, 1, True)
    for key in ("height", "width"):
        value = getattr(opts, key)
        whole(key, value, vae_scale, True)
        if value is not None and value % vae_scale:
            raise ConfigError(f"relgen.generate: {key}={value} must be a multiple of {vae_scale} (the VAE's "
                              f"downsampling factor), e.g. {key}={max(vae_scale, value // vae_scale * vae_scale)}")
    guidance = opts.guidance
    if guidance is not None:
        try:
            number = float(guidance)
        except (TypeError, ValueError):
            number = math.nan
        if isinstance(guidance, bool) or not math.isfinite(number) or number < 0:
            raise ConfigError(f"relgen.generate: guidance={guidance!r} must be a finite number >= 0 "
                              "(classifier-free guidance scale, e.g. 7.5; 1 or less turns guidance off)")
    if not isinstance(opts.method_options, dict):
        raise ConfigError(f"relgen.generate: method_options must be key=value options, got {opts.method_options!r}")


def prompts_missing_token(prompts: list[str], token: Optional[str]) -> list[str]:
    """The prompts that do not contain ``token`` (the run's learnt token; ``None``: none to check)."""
    if not token:
        return []
    return [p for p in prompts if token not in p]
