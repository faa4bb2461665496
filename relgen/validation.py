"""Every check of a composed config that needs no weights, in one place.

:func:`validate` runs right after Hydra composes a run and before anything is loaded or
written: a value a user can get wrong fails here with one line that names the key and the
accepted values, not minutes later inside torch or diffusers. ``dry_run=true`` runs it too.

Each check is a function ``check_<what>(cfg)`` that raises :class:`relgen.errors.ConfigError`
(an error) or returns a list of warning lines; :data:`CHECKS` lists them in the order they run.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Optional

from omegaconf import DictConfig

from relgen.errors import ConfigError

log = logging.getLogger("relgen")

Check = Callable[[DictConfig], Optional[list[str]]]


def check_method_name(cfg: DictConfig) -> None:
    """The method, backbone and dataset names are registered (an unknown one lists the known)."""
    from relgen.registry import get_backbone, get_method

    get_method(cfg.method.name)
    get_backbone(cfg.backbone.name)


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


def _looks_like_path(value: str) -> bool:
    return value.startswith(("/", "./", "../", "~", ".\\")) or value.endswith((".safetensors", ".ckpt", ".bin", ".pt"))


def check_weights(cfg: DictConfig) -> None:
    """The backbone's weights exist: a local folder or file, a package folder, or a hub id that is
    cached or on a reachable hub (found out once, in seconds; see :mod:`relgen.hub`)."""
    from relgen.hub import check_hub_source

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
    if local.exists() or _looks_like_path(b.pretrained):
        if not local.exists():
            raise ConfigError(f"backbone.pretrained={b.pretrained}: no such file or folder; point it at a local "
                              "diffusers folder or a .safetensors file")
        if local.is_dir() and not (local / "model_index.json").is_file():
            raise ConfigError(f"backbone.pretrained={b.pretrained}: not a diffusers folder (no model_index.json); "
                              "point it at the folder save_pretrained wrote")
        if local.is_file() and b.single_file_config and not Path(b.single_file_config).expanduser().exists():
            check_hub_source("backbone.single_file_config", b.single_file_config, None, "model_index.json")
        return
    check_hub_source("backbone.pretrained", b.pretrained, b.revision, "model_index.json",
                     hint="download the weights where there is network access, or set "
                          "backbone.pretrained=/path/to/diffusers-folder or /path/to/model.safetensors")


def check_method_paths(cfg: DictConfig) -> None:
    """``method.ms_adapter`` and ``method.clipself_checkpoint`` are files; ``method.image_encoder``
    is a local folder or a hub id that is cached or reachable."""
    from relgen.hub import check_hub_source

    m = cfg.method
    for key in ("ms_adapter", "clipself_checkpoint"):
        value = m.get(key) if key in m else None
        if value and not Path(value).expanduser().is_file():
            raise ConfigError(f"method.{key}={value}: file not found; give the path of the file "
                              f"(or leave method.{key} unset)")
    encoder = m.get("image_encoder") if "image_encoder" in m else None
    if encoder:
        local = Path(encoder).expanduser()
        if local.exists() or _looks_like_path(encoder):
            if not (local / "config.json").is_file():
                raise ConfigError(f"method.image_encoder={encoder}: not a transformers model folder (no config.json); "
                                  "point it at a CLIPVisionModelWithProjection folder or a hub id")
            return
        check_hub_source("method.image_encoder", encoder, None, "config.json",
                         hint="download it where there is network access, or set method.image_encoder= to a local folder")


#: The checks :func:`validate` runs, in order. A new check is appended here.
CHECKS: list[Check] = [
    check_method_name,
    check_string_options,
    check_method_paths,
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
