"""Every check of a composed config that needs no weights, in one place.

:func:`validate` runs right after Hydra composes a run and before anything is loaded or
written: a value a user can get wrong fails here with one line that names the key and the
accepted values, not minutes later inside torch or diffusers. ``dry_run=true`` runs it too.

Each check is a function ``check_<what>(cfg)`` that raises :class:`relgen.errors.ConfigError`
(an error) or returns a list of warning lines; :data:`CHECKS` lists them in the order they run.
"""

from __future__ import annotations

import logging
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

def check_image_resample(cfg: DictConfig) -> None:
    """``method.image_resample`` (RRNet) names a filter diffusers' ``VaeImageProcessor`` knows."""
    if "image_resample" not in cfg.method:
        return
    from diffusers.utils import PIL_INTERPOLATION

    if cfg.method.image_resample not in PIL_INTERPOLATION:
        raise ConfigError(f"method.image_resample='{cfg.method.image_resample}' is not a VaeImageProcessor "
                          f"filter; use one of {', '.join(sorted(PIL_INTERPOLATION))}")


def check_local_tokens(cfg: DictConfig) -> list[str]:
    """RelationBooth's local tokens without a CLIPSelf checkpoint are the plain-encoder variant: say so."""
    method = cfg.method
    if "local_tokens_inference" not in method or method.get("clipself_checkpoint") is not None:
        return []
    used = [key for key in ("local_tokens_train", "local_tokens_inference") if method.get(key)]
    if not used:
        return []
    return [f"method.{'/'.join(used)}=true without method.clipself_checkpoint: the local tokens come from the "
            "plain image encoder, not from DreamRelation's CLIPSelf encoder (set method.clipself_checkpoint=.../"
            "epoch_6.pt for the released tokens)"]


def check_box_far_edge(cfg: DictConfig) -> None:
    """``method.box_far_edge`` (RelationBooth) is one of :data:`relgen.data.transforms.BOX_FAR_EDGES`."""
    if "box_far_edge" not in cfg.method:
        return
    from relgen.data.transforms import BOX_FAR_EDGES

    if cfg.method.box_far_edge not in BOX_FAR_EDGES:
        raise ConfigError(f"method.box_far_edge='{cfg.method.box_far_edge}' is not known; use one of "
                          f"{', '.join(BOX_FAR_EDGES)}")


def check_cal_layer_rule(cfg: DictConfig) -> None:
    """``method.cal_layer_rule`` (RelationBooth) is ``absolute`` or ``relative``, with a positive limit."""
    method = cfg.method
    if "cal_layer_rule" not in method:
        return
    if method.cal_layer_rule not in ("absolute", "relative"):
        raise ConfigError(f"method.cal_layer_rule='{method.cal_layer_rule}' is not known; use absolute (layers "
                          "with at most method.cal_max_queries queries) or relative (query-grid side at most "
                          "method.cal_max_side_fraction x the latent side)")
    if method.cal_layer_rule == "absolute" and method.cal_max_queries < 1:
        raise ConfigError(f"method.cal_max_queries={method.cal_max_queries} must be at least 1 (released: 1024)")
    if method.cal_layer_rule == "relative" and not 0 < method.cal_max_side_fraction <= 1:
        raise ConfigError(f"method.cal_max_side_fraction={method.cal_max_side_fraction} must be in (0, 1]")


#: The checks :func:`validate` runs, in order. A new check is appended here.
CHECKS: list[Check] = [
    check_method_name,
    check_optimizer,
    check_training_options,
    check_report_to,
    check_image_resample,
    check_local_tokens,
    check_box_far_edge,
    check_cal_layer_rule,
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
