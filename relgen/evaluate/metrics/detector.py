"""Detector-judged spatial relations (the approach of GenEval, Ghosh et al. 2023, and
T2I-CompBench's spatial score, Huang et al. 2023): an open-vocabulary detector (OWLv2 by
default, through transformers' zero-shot detection classes) finds A and B; a rule on the two
boxes decides their relation. No language model, and the verdict is explained by the boxes.

The rule (:func:`box_geometry`), boxes ``(x0, y0, x1, y1)`` with y downwards:

1. A's box lies within B's for at least ``inside_fraction`` of its area: ``inside``
   (B's within A's: ``contains``);
2. otherwise the centre offset ``(dx, dy) = centre(B) - centre(A)`` decides: the axis with the
   strictly larger offset wins; equal offsets (a diagonal, or the same centre) decide nothing
   (``ambiguous``);
3. vertical: A higher is ``above``, or ``on_top_of`` when the boxes share columns and A's
   bottom is at most ``touch_fraction`` of the image height above B's top (or overlaps it);
   A lower is ``below``;
4. horizontal: ``left_of`` / ``right_of``. ``next to`` holds for either (T2I-CompBench).

An image where A or B is not detected (score below ``threshold``) fails both object and
relation accuracy, as in GenEval.
"""

from __future__ import annotations

import inspect
from typing import Any, Optional

import torch

from relgen.evaluate.geometry import SATISFIES as RELWORLD_SATISFIES
from relgen.evaluate.loading import from_pretrained, shared_model, torch_dtype
from relgen.evaluate.metrics.base import RATE, Metric, register_metric
from relgen.evaluate.samples import Box, ImageScore, Sample

#: Geometries the rule reports for "A ? B".
GEOMETRIES = ("above", "below", "left_of", "right_of", "on_top_of", "inside", "contains", "ambiguous")

#: Which geometries satisfy a prompted relation key: the relworld detector's rule ("A above B"
#: also holds when A rests on B), plus "next to" (either side).
SATISFIES: dict[str, frozenset[str]] = {**RELWORLD_SATISFIES, "next_to": frozenset({"left_of", "right_of"})}


def _area(box: Box) -> float:
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


def box_geometry(a: Box, b: Box, image_height: float, inside_fraction: float = 0.8,
                 touch_fraction: float = 0.05) -> str:
    """The relation of box A to box B (one of :data:`GEOMETRIES`); see the module docstring."""
    inter = _area((max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])))
    if inter > 0 and inter >= inside_fraction * _area(a):
        return "inside"
    if inter > 0 and inter >= inside_fraction * _area(b):
        return "contains"
    dx = 0.5 * (b[0] + b[2]) - 0.5 * (a[0] + a[2])
    dy = 0.5 * (b[1] + b[3]) - 0.5 * (a[1] + a[3])
    if abs(dx) == abs(dy):
        return "ambiguous"
    if abs(dy) > abs(dx):
        if dy < 0:
            return "below"
        shares_columns = min(a[2], b[2]) > max(a[0], b[0])
        touching = b[1] - a[3] <= touch_fraction * image_height
        return "on_top_of" if shares_columns and touching else "above"
    return "left_of" if dx > 0 else "right_of"


def relation_key(predicate: str, relation: str, words: dict[str, list[str]]) -> Optional[str]:
    """The box rule's relation key for a prompt's relation, or ``None`` when the rule cannot
    decide it (e.g. "painted on"). A relation key is taken as it is; else the predicate is
    matched against the phrases of ``words``."""
    if relation in words:
        return relation
    text = " ".join(predicate.lower().split())
    for key, phrases in words.items():
        if text in (" ".join(p.lower().split()) for p in phrases):
            return key
    return None


def judge_boxes(box_a: Optional[Box], box_b: Optional[Box], key: Optional[str], image_height: float,
                inside_fraction: float, touch_fraction: float) -> tuple[dict[str, Optional[float]], str]:
    """Object and relation outcome of one image from its two best boxes."""
    if box_a is None or box_b is None:
        missing = "A and B missing" if box_a is None and box_b is None else ("A missing" if box_a is None else "B missing")
        return {"object_accuracy": 0.0, "relation_accuracy": 0.0 if key else None}, missing
    geometry = box_geometry(box_a, box_b, image_height, inside_fraction, touch_fraction)
    if key is None:
        return {"object_accuracy": 1.0, "relation_accuracy": None}, geometry
    return {"object_accuracy": 1.0, "relation_accuracy": float(geometry in SATISFIES[key])}, geometry


class ZeroShotDetector:
    """An open-vocabulary detector: the best box per text query.

    Args:
        cfg: :class:`~relgen.evaluate.config.DetectorConfig`.
        device: Where it runs.
    """

    def __init__(self, cfg: Any, device: torch.device):
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

        self.cfg = cfg
        self.device = device
        self.dtype = torch_dtype(cfg.dtype, "detector")
        self.model = from_pretrained(AutoModelForZeroShotObjectDetection, cfg.pretrained, "detector", cfg.revision,
                                     dtype=self.dtype)
        self.model.to(device).eval()
        self.processor = from_pretrained(AutoProcessor, cfg.pretrained, "detector", cfg.revision)
        params = inspect.signature(self.processor.post_process_grounded_object_detection).parameters
        self._grounding = "input_ids" in params  # Grounding DINO's post-processing reads the text ids

    @torch.no_grad()
    def best_boxes(self, images: list[Any], queries: list[list[str]]) -> list[list[Optional[tuple[Box, float]]]]:
        """Per image, per query: ``(box, score)`` of the best detection above the threshold."""
        out: list[list[Optional[tuple[Box, float]]]] = []
        for start in range(0, len(images), max(1, self.cfg.batch_size)):
            ims = [im.convert("RGB") for im in images[start:start + self.cfg.batch_size]]
            qs = queries[start:start + len(ims)]
            inputs = self.processor(text=qs, images=ims, return_tensors="pt", padding=True)
            inputs = {k: (v.to(self.device, self.dtype) if v.is_floating_point() else v.to(self.device))
                      for k, v in inputs.items()}
            outputs = self.model(**inputs)
            # OWLv2 pads every image to a square at the bottom/right: boxes are in that frame
            sizes = [(max(im.size), max(im.size)) for im in ims]
            kwargs = dict(threshold=self.cfg.threshold, target_sizes=sizes, text_labels=qs)
            if self._grounding:
                kwargs["input_ids"] = inputs["input_ids"]
            results = self.processor.post_process_grounded_object_detection(outputs, **kwargs)
            for im, q, res in zip(ims, qs, results):
                w, h = im.size
                best: list[Optional[tuple[Box, float]]] = [None] * len(q)
                names = res.get("text_labels")
                for j, (score, box) in enumerate(zip(res["scores"].tolist(), res["boxes"].tolist())):
                    label = int(res["labels"][j]) if "labels" in res and not self._grounding else (
                        q.index(names[j]) if names and names[j] in q else -1)
                    if 0 <= label < len(q) and (best[label] is None or score > best[label][1]):
                        # predicted boxes may reach past the image: clip them to it
                        x0, y0, x1, y1 = (min(max(float(v), 0.0), lim) for v, lim in zip(box, (w, h, w, h)))
                        best[label] = ((x0, y0, x1, y1), float(score))
                out.append(best)
        return out


@register_metric
class DetectorRelation(Metric):
    """Object and spatial-relation accuracy from detected boxes."""

    name = "detector_relation"
    outputs = {"object_accuracy": RATE, "relation_accuracy": RATE}
    config_key = "detector"

    def score(self, samples: list[Sample]) -> list[ImageScore]:
        det = shared_model("detector", self.cfg, "detector", self.device, lambda: ZeroShotDetector(self.cfg, self.device))
        queries = [[self.cfg.query_template.format(s.prompt.a), self.cfg.query_template.format(s.prompt.b)]
                   for s in samples]
        scores = []
        for s, found in zip(samples, det.best_boxes([s.image for s in samples], queries)):
            key = relation_key(s.prompt.predicate, s.prompt.relation, self.cfg.relation_words)
            box_a, box_b = (f[0] if f else None for f in found)
            values, verdict = judge_boxes(box_a, box_b, key, s.image.size[1], self.cfg.inside_fraction,
                                          self.cfg.touch_fraction)
            ok = bool(values["relation_accuracy"]) if values["relation_accuracy"] is not None else bool(values["object_accuracy"])
            boxes = [(name, f[0], ok) for name, f in zip((s.prompt.a, s.prompt.b), found) if f is not None]
            details = {"relation_key": key, "geometry": verdict,
                       "detections": {name: (None if f is None else {"box": list(f[0]), "score": f[1]})
                                      for name, f in zip(("a", "b"), found)}}
            scores.append(ImageScore(values, verdict, boxes, details))
        return scores
