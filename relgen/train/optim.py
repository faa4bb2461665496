"""The optimizers a recipe can choose (``method.optimizer``), all from maintained libraries.

``method.lr``, ``method.weight_decay`` and, where the optimizer has them, ``method.adam_beta1``,
``method.adam_beta2`` and ``method.adam_epsilon`` are passed to every optimizer;
``method.optimizer_args`` adds or overrides keyword arguments of the optimizer's constructor.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

import torch

from relgen.errors import ConfigError

#: name -> (module, class, the pip package that provides it)
OPTIMIZERS: dict[str, tuple[str, str, str]] = {
    "adamw": ("torch.optim", "AdamW", "torch"),
    "adamw8bit": ("bitsandbytes.optim", "AdamW8bit", "bitsandbytes"),
    "prodigy": ("prodigyopt", "Prodigy", "prodigyopt"),
    "adafactor": ("transformers.optimization", "Adafactor", "transformers"),
    "sgd": ("torch.optim", "SGD", "torch"),
}

#: Keyword arguments of bitsandbytes' AdamW8bit (read from its signature when it is installed).
_ADAMW8BIT_ARGS = ("betas", "eps", "weight_decay", "amsgrad", "optim_bits", "args", "min_8bit_size",
                   "percentile_clipping", "block_wise", "is_paged")


def _known(name: str) -> None:
    if name not in OPTIMIZERS:
        raise ConfigError(f"method.optimizer='{name}' is not known; accepted: {', '.join(OPTIMIZERS)}")


def optimizer_class(name: str) -> type:
    """The optimizer class of ``method.optimizer`` (imports its library)."""
    _known(name)
    module, cls, package = OPTIMIZERS[name]
    try:
        return getattr(importlib.import_module(module), cls)
    except ImportError as exc:
        raise ConfigError(f"method.optimizer={name} needs the {package} package, which is not installed "
                          f"({exc}); pip install {package}") from exc


def accepted_args(name: str) -> list[str]:
    """The keyword arguments ``method.optimizer_args`` may set for ``method.optimizer=name``."""
    _known(name)
    if name == "adamw8bit":
        try:
            cls = optimizer_class(name)
        except ConfigError:
            return list(_ADAMW8BIT_ARGS)
    else:
        cls = optimizer_class(name)
    skip = {"self", "params", "lr"}
    return [p for p, v in inspect.signature(cls.__init__).parameters.items()
            if p not in skip and v.kind not in (v.VAR_POSITIONAL, v.VAR_KEYWORD)]


def recipe_args(name: str, mcfg) -> dict[str, Any]:
    """The arguments the shared recipe fields give ``name``'s constructor."""
    if name in ("adamw", "adamw8bit", "prodigy"):
        return {"betas": (mcfg.adam_beta1, mcfg.adam_beta2), "eps": mcfg.adam_epsilon,
                "weight_decay": mcfg.weight_decay}
    if name == "adafactor":
        # a fixed, scheduled learning rate: relative_step and parameter scaling off, as
        # transformers' Adafactor documentation recommends when an lr is given
        return {"weight_decay": mcfg.weight_decay, "scale_parameter": False, "relative_step": False,
                "warmup_init": False}
    return {"weight_decay": mcfg.weight_decay}


def check_device(name: str, device: torch.device) -> None:
    """bitsandbytes' 8-bit AdamW runs on CUDA only: refuse it elsewhere with one line."""
    if name == "adamw8bit" and torch.device(device).type != "cuda":
        raise ConfigError(f"method.optimizer=adamw8bit needs a CUDA device (bitsandbytes' 8-bit AdamW), but "
                          f"this run is on {torch.device(device).type}; use method.optimizer=adamw")


def make_optimizer(param_groups: list[dict], lr: float, mcfg, device: torch.device) -> torch.optim.Optimizer:
    """Build ``method.optimizer`` over ``param_groups`` with the recipe's arguments."""
    name = mcfg.optimizer
    check_device(name, device)
    cls = optimizer_class(name)
    extra = dict(mcfg.optimizer_args or {})
    unknown = sorted(set(extra) - set(accepted_args(name)))
    if unknown:
        raise ConfigError(f"method.optimizer_args: {unknown} not accepted by {name}; accepted: "
                          f"{', '.join(accepted_args(name))}")
    kwargs = {**recipe_args(name, mcfg), **extra}
    if "betas" in kwargs:
        kwargs["betas"] = tuple(kwargs["betas"])
    return cls(param_groups, lr=lr, **kwargs)
