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
from typing import Any, Callable, Optional

from omegaconf import DictConfig, ListConfig, OmegaConf

from relgen.errors import ConfigError

log = logging.getLogger("relgen")

Check = Callable[[DictConfig], Optional[list[str]]]


def check_method_name(cfg: DictConfig) -> None:
    """The method, backbone and dataset names are registered (an unknown one lists the known)."""
    from relgen.registry import get_backbone, get_method

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
    _at_least("trainer.sample_every", t.sample_every, 1, optional=True)
    _at_least("trainer.log_every", t.log_every, 1)
    _at_least("trainer.keep_checkpoints", t.keep_checkpoints, 0)
    _at_least("trainer.num_samples", t.num_samples, 1)
    _at_least("method.sample_steps", m.sample_steps, 1, optional=True)
    _at_least("backbone.inference_steps", cfg.backbone.inference_steps, 1)


def check_batch(cfg: DictConfig) -> None:
    """``method.batch_size`` and ``method.grad_accum`` are >= 1."""
    _at_least("method.batch_size", cfg.method.batch_size, 1)
    _at_least("method.grad_accum", cfg.method.grad_accum, 1)


def check_optimizer(cfg: DictConfig) -> None:
    """AdamW's betas in [0, 1), epsilon > 0, weight decay >= 0, clipping norm > 0."""
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
    for key, value in (("backbone.resolution", cfg.backbone.resolution), training_resolution(cfg)):
        if value < VAE_FACTOR or value % VAE_FACTOR:
            raise ConfigError(f"{key}={value}: must be a positive multiple of {VAE_FACTOR} (the VAE's "
                              "down-sampling factor), e.g. 512")
        if value % UNET_FACTOR and key != "backbone.resolution":
            warnings.append(f"{key}={value} is not a multiple of {UNET_FACTOR}: the UNet's feature maps do "
                            f"not halve evenly at every level; prefer {max(UNET_FACTOR, value // UNET_FACTOR * UNET_FACTOR)}")
    return warnings


#: The checks :func:`validate` runs, in order. A new check is appended here.
CHECKS: list[Check] = [
    check_method_name,
    check_no_target,
    check_finite,
    check_learning_rate,
    check_steps,
    check_batch,
    check_optimizer,
    check_resolution,
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
