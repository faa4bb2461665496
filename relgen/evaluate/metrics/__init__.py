"""The metrics of the three papers' evaluation protocols, plus relworld's exact detector.

========================  ==================================================================
``vlm_relation``          RRNet's five questions to a vision-language judge: object and
                          relation accuracy
``detector_relation``     an open-vocabulary detector finds A and B; a box rule decides the
                          spatial relation
``clip_t``                image-prompt CLIP similarity (and ReVersion's entity score)
``clip_r``                image-predicate CLIP similarity (RelationBooth; ReVersion's relation
                          score)
``clip_i``                image-reference CLIP image similarity per entity
``dino``                  image-reference DINO class-token similarity per entity
``fid``                   Fréchet distance to a reference folder (torchmetrics)
``relworld``              relworld's exact detector: relation, object, direction accuracy
                          (registered by ``relgen.relworld.metric`` through relgen's plugin)
========================  ==================================================================
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from relgen.errors import ConfigError
from relgen.evaluate.config import EvalModelsConfig, as_object
from relgen.evaluate.loading import resolve_device
from relgen.registry import load_plugins

# the built-in metrics register themselves when imported, so a built-in name is always known
from relgen.evaluate.metrics import clip, detector, dino, fid, vlm  # noqa: F401, I001
from relgen.evaluate.metrics.base import _METRICS, RATE, SCORE, Metric, register_metric


def list_metrics() -> list[str]:
    load_plugins()  # plugins register metrics too (relworld's own detector is one)
    return sorted(_METRICS)


def get_metric(name: str) -> type[Metric]:
    load_plugins()
    if name not in _METRICS:
        raise ConfigError(f"metrics: unknown metric '{name}'; known: {sorted(_METRICS)}")
    return _METRICS[name]


def build_metric(name: str, eval_cfg: Any = None, device: Optional[torch.device] = None) -> Metric:
    """The metric ``name`` configured from the ``eval`` node (defaults when ``None``)."""
    cls = get_metric(name)
    eval_cfg = as_object(eval_cfg, EvalModelsConfig)
    device = device or resolve_device(eval_cfg.device)
    return cls(getattr(eval_cfg, cls.config_key), device)


__all__ = ["RATE", "SCORE", "Metric", "build_metric", "get_metric", "list_metrics", "register_metric"]
