"""relworld's exact detector as a metric of the harness (registered by relgen's own plugin when
the registry loads, so the general evaluation code never imports the proving ground).

Per image it reports exactly what :meth:`relgen.relworld.detector.Detector.read` decides for
the prompt's objects and relation: ``relation_accuracy`` (both objects present and the relation
holds) and ``object_accuracy`` (both present). ``direction_accuracy`` (both images of an
object-swapped pair drawn with the same seed right) is computed over pairs by
:func:`relgen.evaluate.report.direction_flags`. :meth:`Relworld.read` returns the detector's
:class:`~relgen.relworld.detector.Reading` of each image itself (with the objects' masks), and
:func:`relworld_readings` the metric in the two readings the relworld benchmark reports.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from relgen.errors import DataError
from relgen.evaluate.metrics.base import RATE, Metric, register_metric
from relgen.evaluate.samples import EvalPrompt, ImageScore, Sample


def relworld_prompt(a: tuple[str, str], relation: str, b: tuple[str, str], order: int = 0,
                    spec: Any = None, text: Optional[str] = None, pair_index: int = 0) -> EvalPrompt:
    """An :class:`EvalPrompt` for the relworld prompt "A <relation> B".

    Args:
        a: ``(shape, colour)`` of A.
        relation: Relation key.
        b: ``(shape, colour)`` of B.
        order: 0 for the pair's "A r B", 1 when this is the swapped prompt.
        spec: The world (its phrasings).
        text: What the generator renders (default: the readable prompt).
        pair_index: Distinguishes pairs of the same objects rendered with other words.
    """
    from relgen.relworld import world as rw

    spec = spec or rw.WorldSpec()
    readable = rw.prompt(a, relation, b, spec)
    twin = rw.prompt(b, relation, a, spec)
    return EvalPrompt(id=f"{readable}#{pair_index}", text=text or readable, readable=readable, a=rw.object_name(a),
                      b=rw.object_name(b), predicate=spec.phrases[relation][0], relation=relation, swapped=twin,
                      order=order, objects={"a": list(a), "b": list(b)})


@register_metric
class Relworld(Metric):
    """relworld's exact detector: relation and object accuracy per image."""

    name = "relworld"
    outputs = {"relation_accuracy": RATE, "object_accuracy": RATE}
    config_key = "relworld"

    def __init__(self, cfg: Any, device=None, spec: Any = None):
        super().__init__(cfg, device)
        from relgen.relworld.detector import Detector, DetectorConfig

        self.detector = Detector(spec, DetectorConfig(colour_tolerance=cfg.colour_tolerance, match_shape=cfg.match_shape))

    def read(self, samples: list[Sample]) -> list[Any]:
        """The detector's :class:`~relgen.relworld.detector.Reading` of each sample, in order."""
        out = []
        for s in samples:
            if not s.prompt.objects:
                raise DataError(f"prompt '{s.prompt.id}': metric relworld needs the prompt's objects "
                                "({'a': [shape, colour], 'b': [shape, colour]}); it scores relworld prompts only")
            a, b = tuple(s.prompt.objects["a"]), tuple(s.prompt.objects["b"])
            out.append(self.detector.read(np.asarray(s.image.convert("RGB")), a, s.prompt.relation, b))
        return out

    def score(self, samples: list[Sample]) -> list[ImageScore]:
        out = []
        for s, reading in zip(samples, self.read(samples)):
            boxes = []
            for label, det in ((s.prompt.a, reading.a), (s.prompt.b, reading.b)):
                if det is not None:
                    rows, cols = np.nonzero(det.mask)
                    boxes.append((label, (float(cols.min()), float(rows.min()), float(cols.max() + 1),
                                          float(rows.max() + 1)), reading.relation_ok))
            verdict = reading.geometry or ("A missing" if reading.a is None else "B missing")
            out.append(ImageScore({"relation_accuracy": float(reading.relation_ok),
                                   "object_accuracy": float(reading.both_present)}, verdict, boxes,
                                  {"geometry": reading.geometry}))
        return out


def relworld_readings(cfg: Any = None, spec: Any = None) -> dict[str, Relworld]:
    """The metric in the relworld benchmark's two readings: ``strict`` (each object found by
    colour and shape) and ``colour`` (by colour alone), otherwise as ``cfg`` sets them.

    Args:
        cfg: A :class:`~relgen.evaluate.config.RelworldMetricConfig` (``eval.relworld``;
            ``None``: the defaults); its ``match_shape`` is set per reading.
        spec: The world (``None``: the default one).
    """
    from dataclasses import replace

    from relgen.evaluate.config import RelworldMetricConfig, as_object

    cfg = as_object(cfg, RelworldMetricConfig)
    return {name: Relworld(replace(cfg, match_shape=strict), spec=spec)
            for name, strict in (("strict", True), ("colour", False))}


__all__ = ["Relworld", "relworld_prompt", "relworld_readings"]
