"""The metric interface (the registry of metric names is :mod:`relgen.evaluate.metrics`).

A metric scores a list of :class:`~relgen.evaluate.samples.Sample` and returns one
:class:`~relgen.evaluate.samples.ImageScore` per image (per-image metrics), or one set of values
per condition (set metrics such as FID). Its ``outputs`` name what it reports and whether each
is a rate (0/1 per image: Wilson or cluster-bootstrap interval, McNemar between conditions) or
a score (cluster-bootstrap interval, paired bootstrap between conditions).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, is_dataclass
from typing import Any, ClassVar, Iterator, Optional

import torch

from relgen.evaluate.samples import ImageScore, Sample

RATE = "rate"
SCORE = "score"


class Metric:
    """Base class of every metric.

    Subclasses set ``name``, ``outputs`` and ``config_key`` (the ``eval.<key>`` node they read)
    and implement :meth:`score` (per-image) or :meth:`score_set` (``per_image = False``).
    ``needs_references`` marks a metric that compares images with the prompts' reference images
    (the harness then fills them in when no prompt has any: :mod:`relgen.evaluate.references`).

    Args:
        cfg: The metric's config node (a schema instance).
        device: Where its model runs.
    """

    name: ClassVar[str] = ""
    outputs: ClassVar[dict[str, str]] = {}
    config_key: ClassVar[str] = ""
    per_image: ClassVar[bool] = True
    needs_references: ClassVar[bool] = False

    def __init__(self, cfg: Any, device: Optional[torch.device] = None):
        self.cfg = cfg
        self.device = device or torch.device("cpu")

    def identity(self) -> str:
        """What the cached scores depend on: the metric, its model and its settings."""
        settings = asdict(self.cfg) if is_dataclass(self.cfg) else dict(self.cfg or {})
        settings.pop("batch_size", None)  # batching does not change a score
        digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]
        return f"{self.name}-{digest}"

    def score(self, samples: list[Sample]) -> list[ImageScore]:
        """One :class:`ImageScore` per sample, in order."""
        raise NotImplementedError

    def score_set(self, samples: list[Sample]) -> dict[str, float]:
        """Values over a whole condition (set metrics only)."""
        raise NotImplementedError


_METRICS: dict[str, type[Metric]] = {}


def register_metric(cls: type[Metric]) -> type[Metric]:
    """Class decorator: make ``cls`` available as ``metrics=[<cls.name>]`` once its module is
    imported (the built-ins are imported by :mod:`relgen.evaluate.metrics`)."""
    if not cls.name:
        raise ValueError(f"{cls.__name__}: a metric needs a name")
    _METRICS[cls.name] = cls
    return cls


def batched(items: list, size: int) -> Iterator[list]:
    """Consecutive slices of ``items`` of at most ``size`` (at least 1)."""
    size = max(1, int(size))
    return (items[i:i + size] for i in range(0, len(items), size))
