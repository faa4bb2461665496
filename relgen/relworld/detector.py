"""An exact detector for relworld images, and the benchmark metrics built on it.

The world's objects are flat, saturated palette colours on pale backgrounds, so an object is
found by colour and identified by shape:

1. every pixel takes the nearest palette colour if it lies within ``colour_tolerance`` (RGB
   distance) of it (identities' dark texture tone counts as their colour);
2. each colour's pixels split into 8-connected components; small ones are dropped and holes
   are filled (a container's hole where an object lies on it);
3. each component's shape is named by five scale-free features of its outline
   (:func:`shape_features`: extent, solidity, filled corners, top and bottom width) against
   prototypes measured on hand-labelled objects of the model's own images, or else "other"
   (``DetectorConfig.shape_reader='iou'``: the canonical mask fitted to the bounding box with
   the best IoU, the earlier reader);
4. the relation of A to B follows the renderer's rules: A within B's outline is ``inside``;
   otherwise the axis with the larger centroid offset decides above/below or left/right, and
   A above B with at most ``touch_tolerance`` empty rows between them (over shared columns)
   is ``on_top_of``.

On ground-truth renders it is exact (tested); on generated images the tolerances make it
degrade gradually rather than fail.

Metrics: relation accuracy (both objects present and the relation holds), object accuracy
(both present) and direction accuracy (an object-swapped pair of samples, drawn with the same
seed, is right both ways), each with a Wilson interval.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
from scipy import ndimage

from relgen.data import shapes
from relgen.evaluate.geometry import GEOMETRIES, SATISFIES  # noqa: F401 (re-exported)
from relgen.evaluate.stats import wilson_interval  # noqa: F401 (re-exported)
from relgen.relworld.world import WorldSpec, texture_colour
from relgen.data.shapes import COLOURS, SceneObject, shape_mask


@dataclass(frozen=True)
class DetectorConfig:
    """Tolerances of the detector.

    Attributes:
        colour_tolerance: Largest RGB distance (0-255 scale) from a palette colour.
        min_area: Smallest component, in pixels.
        min_iou: Smallest IoU with the fitted shape for an object to count as present.
        touch_tolerance: Most empty rows between A and B that still count as touching.
        inside_fraction: Share of A's pixels within B's filled outline for ``inside``.
        match_shape: An object counts as present only when its best shape is the prompted one
            (the strict reading). ``False`` finds each object by colour alone (the largest
            component of its colour; prompts give A and B different colours): the reading of
            relation accuracy, which the papers report apart from object accuracy.
        shape_reader: How a component's shape is named. ``features``: the nearest of
            ``shape_prototypes`` by the distance of :func:`shape_features` scaled by
            ``shape_feature_scale``, and no shape (``other``) beyond ``shape_reject``; it
            reads the model's rounded corners and pinched sides as the shapes a person sees.
            ``iou``: the shape whose canonical mask fitted to the component's bounding box has
            the largest IoU, at least ``min_iou`` (exact on ground-truth renders, but it reads
            pinched squares as circles on generated images).
        shape_prototypes: ``(shape, features)`` for the ``features`` reader.
        shape_feature_scale: Per-feature scale of the distance.
        shape_reject: Largest scaled distance at which a component still reads as its nearest shape.
    """

    colour_tolerance: float = 70.0
    min_area: int = 12
    min_iou: float = 0.5
    touch_tolerance: int = 2
    inside_fraction: float = 0.8
    match_shape: bool = True
    shape_reader: str = "features"
    # Two prototypes per shape, means of :func:`shape_features`: over 276 hand-labelled objects
    # cut from the shipped model's own renders (tests/data/relworld_shapes/), and over
    # ground-truth renders; the scale is the pooled within-class standard deviation of each
    # feature over the labelled objects (`python benchmarks/relworld/shape_labels.py fit`
    # recomputes all of them).
    shape_prototypes: tuple[tuple[str, tuple[float, ...]], ...] = (
        ("circle", (0.754, 0.944, 0.268, 0.531, 0.574)),
        ("square", (0.860, 0.909, 0.798, 0.785, 0.820)),
        ("triangle", (0.506, 0.827, 0.375, 0.160, 0.791)),
        ("diamond", (0.561, 0.872, 0.036, 0.323, 0.296)),
        ("cross", (0.457, 0.638, 0.035, 0.270, 0.277)),
        ("circle", (0.786, 0.947, 0.309, 0.595, 0.597)),
        ("square", (1.000, 1.000, 1.000, 1.000, 1.000)),
        ("triangle", (0.528, 0.895, 0.404, 0.142, 0.915)),
        ("diamond", (0.526, 0.919, 0.004, 0.256, 0.257)),
        ("cross", (0.556, 0.715, 0.000, 0.334, 0.334)))
    shape_feature_scale: tuple[float, ...] = (0.044, 0.037, 0.071, 0.086, 0.074)
    shape_reject: float = 7.0


@dataclass
class Detection:
    """One found object.

    Attributes:
        shape: Best-matching shape.
        colour: Palette colour.
        mask: Boolean ``[H, W]`` filled outline.
        iou: IoU of ``mask`` with the fitted canonical shape.
        cx: Centroid column of ``mask`` (pixel centres at ``i + 0.5``).
        cy: Centroid row.
        scores: IoU per candidate shape.
    """

    shape: str
    colour: str
    mask: np.ndarray = field(repr=False)
    iou: float
    cx: float
    cy: float
    scores: dict[str, float] = field(default_factory=dict, repr=False)
    distance: float = 0.0  # scaled feature distance to ``shape``'s prototype (``features`` reader)

    @property
    def area(self) -> int:
        return int(self.mask.sum())


@dataclass
class Reading:
    """What the detector makes of one image for the prompt "A <relation> B".

    Attributes:
        relation: The prompted relation key.
        a: A's detection, or ``None`` when absent.
        b: B's detection, or ``None``.
        geometry: The detected relation of A to B (one of :data:`GEOMETRIES`), ``None`` unless
            both are present.
    """

    relation: str
    a: Optional[Detection]
    b: Optional[Detection]
    geometry: Optional[str]

    @property
    def both_present(self) -> bool:
        return self.a is not None and self.b is not None

    @property
    def relation_ok(self) -> bool:
        """Both present and the geometry satisfies the prompted relation."""
        return self.geometry is not None and self.geometry in SATISFIES[self.relation]


def _shape_extents(shape: str) -> tuple[float, float, float, float]:
    """``(left, up, right, down)`` of a unit-radius shape (as the renderer measures them)."""
    return shapes._EXTENTS[shape]


def fit_shape(mask: np.ndarray, shape: str, colour: str = "red") -> tuple[SceneObject, float]:
    """Fit ``shape`` to a component's bounding box and score it.

    The bounding box spans ``(left + right) * radius`` by ``(up + down) * radius`` pixels for
    the shape's unit extents; the radius is the mean of the two estimates and the centre
    follows from the box edges.

    Args:
        mask: Boolean ``[H, W]`` filled component.
        shape: Candidate shape.
        colour: Colour recorded in the returned object.

    Returns:
        ``(object, iou)``: the fitted object and the IoU of its mask with ``mask``.
    """
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    x0, x1, y0, y1 = cols[0], cols[-1] + 1, rows[0], rows[-1] + 1
    left, up, right, down = _shape_extents(shape)
    rx, ry = (x1 - x0) / (left + right), (y1 - y0) / (up + down)
    radius = 0.5 * (rx + ry)
    cx = x0 + (x1 - x0) * left / (left + right)
    cy = y0 + (y1 - y0) * up / (up + down)
    obj = SceneObject(shape, colour, float(cx), float(cy), float(radius))
    # compare inside the box grown by 2 pixels: the fitted shape lies within it
    h, w = mask.shape
    r0, r1, c0, c1 = max(0, y0 - 2), min(h, y1 + 2), max(0, x0 - 2), min(w, x1 + 2)
    window = SceneObject(shape, colour, obj.cx - c0, obj.cy - r0, obj.radius)
    fitted = shape_mask(window, (r1 - r0, c1 - c0))
    part = mask[r0:r1, c0:c1]
    union = (fitted | part).sum()
    return obj, float((fitted & part).sum() / union) if union else 0.0


def shape_features(mask: np.ndarray) -> np.ndarray:
    """Five scale-free features of a filled component, within its bounding box: extent (filled
    share of the box), solidity (area over the convex hull's, pixel corners as hull points), the
    filled share of the four corner regions (a quarter of each side), and the filled share of the
    top and of the bottom quarter of rows. Squares fill their corners, circles part of them,
    diamonds and crosses none; a cross is far from convex; a triangle is narrow on top."""
    from scipy.spatial import ConvexHull, QhullError

    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    m = mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    h, w = m.shape
    ys, xs = np.nonzero(m)
    corners = np.concatenate([np.stack([xs + dx, ys + dy], 1) for dx in (0, 1) for dy in (0, 1)])
    try:
        solidity = m.sum() / ConvexHull(corners).volume
    except QhullError:  # a single row or column: flat, as convex as it gets
        solidity = 1.0
    ch, cw = max(1, round(h / 4)), max(1, round(w / 4))
    corner = np.mean([m[:ch, :cw].mean(), m[:ch, -cw:].mean(), m[-ch:, :cw].mean(), m[-ch:, -cw:].mean()])
    band = max(1, h // 4)
    return np.array([m.mean(), solidity, corner, m[:band].mean(), m[-band:].mean()], dtype=np.float64)


def vertical_gap(upper: np.ndarray, lower: np.ndarray) -> int:
    """Fewest empty rows between ``upper``'s bottom and ``lower``'s top over shared columns.

    Without shared columns, the gap between the bounding boxes.
    """
    shared = upper.any(axis=0) & lower.any(axis=0)
    h = upper.shape[0]
    if not shared.any():
        return int(np.flatnonzero(lower.any(axis=1))[0] - np.flatnonzero(upper.any(axis=1))[-1] - 1)
    rows = np.arange(h)[:, None]
    bottom = np.where(upper, rows, -1).max(axis=0)
    top = np.where(lower, rows, h).min(axis=0)
    return int((top - bottom - 1)[shared].min())


class Detector:
    """Finds world objects in images and reads the relation between two of them.

    Args:
        spec: The world (its colours, shapes and identities); ``None`` for the default.
        config: Tolerances; ``None`` for :class:`DetectorConfig` defaults.
    """

    def __init__(self, spec: Optional[WorldSpec] = None, config: Optional[DetectorConfig] = None):
        self.spec = spec or WorldSpec()
        self.config = config or DetectorConfig()
        palette = [(c, COLOURS[c]) for c in self.spec.colours]
        # identities' texture tone counts as their colour
        palette += [(c, texture_colour(c)) for c in sorted({i.colour for i in self.spec.identities})]
        self._names = [c for c, _ in palette]
        self._rgb = np.array([rgb for _, rgb in palette], dtype=np.float64)

    # ---------------------------------------------------------------- colours and components
    def colour_labels(self, image: np.ndarray) -> np.ndarray:
        """``int [H, W]``: index into ``spec.colours`` of each pixel's colour, -1 for none.

        Args:
            image: ``uint8 [H, W, 3]`` or float ``[H, W, 3]`` in [0, 1].
        """
        image = np.asarray(image)
        pixels = image.astype(np.float64) * (255.0 if image.dtype.kind == "f" else 1.0)
        dist = np.linalg.norm(pixels[:, :, None, :] - self._rgb[None, None], axis=-1)
        nearest = dist.argmin(axis=-1)
        index = np.array([self.spec.colours.index(c) for c in self._names])
        labels = index[nearest]
        labels[dist.min(axis=-1) > self.config.colour_tolerance] = -1
        return labels

    def components(self, labels: np.ndarray, colour: str) -> list[np.ndarray]:
        """Filled 8-connected components of one colour, largest first, small ones dropped."""
        pixels = labels == self.spec.colours.index(colour)
        comp, _ = ndimage.label(pixels, structure=np.ones((3, 3), bool))
        out = []
        for k, box in enumerate(ndimage.find_objects(comp), start=1):
            filled = ndimage.binary_fill_holes(comp[box] == k)  # within its box: same holes
            if filled.sum() >= self.config.min_area:
                mask = np.zeros_like(pixels)
                mask[box] = filled
                out.append(mask)
        return sorted(out, key=lambda m: -int(m.sum()))

    def identify(self, mask: np.ndarray, colour: str) -> Detection:
        """Best-matching shape of one filled component (see ``DetectorConfig.shape_reader``)."""
        rows, cols = np.nonzero(mask)
        cx, cy = float(cols.mean() + 0.5), float(rows.mean() + 0.5)
        if self.config.shape_reader == "iou":
            scores = {s: fit_shape(mask, s, colour)[1] for s in self.spec.shapes}
            best = max(scores, key=scores.get)
            return Detection(best, colour, mask, scores[best], cx, cy, scores)
        if self.config.shape_reader != "features":
            raise ValueError(f"DetectorConfig.shape_reader must be 'features' or 'iou', got {self.config.shape_reader!r}")
        f = shape_features(mask)
        scale = np.asarray(self.config.shape_feature_scale)
        dist: dict[str, float] = {}
        for s, p in self.config.shape_prototypes:  # the nearest prototype of each shape
            if s in self.spec.shapes:
                dist[s] = min(dist.get(s, np.inf), float(np.linalg.norm((f - np.asarray(p)) / scale)))
        best = min(dist, key=dist.get)
        return Detection(best, colour, mask, fit_shape(mask, best, colour)[1], cx, cy,
                         {s: -d for s, d in dist.items()}, dist[best])

    def detect(self, image: np.ndarray, labels: Optional[np.ndarray] = None) -> list[Detection]:
        """Every object found in ``image`` (each colour's components, identified)."""
        labels = self.colour_labels(image) if labels is None else labels
        return [self.identify(m, c) for c in self.spec.colours for m in self.components(labels, c)]

    def find(self, image: np.ndarray, shape: str, colour: Optional[str],
             labels: Optional[np.ndarray] = None, exclude: Sequence[str] = ()) -> Optional[Detection]:
        """The object ``colour shape`` if present: a component of that colour whose best shape is
        ``shape`` with IoU >= ``min_iou`` (the best such one), else ``None``. Without
        ``config.match_shape``: the largest component of ``colour``, whatever its shape.

        ``colour=None`` (a prompt that names the shape alone, "a cross"): the same over every
        world colour but those in ``exclude`` (the other named object's); without
        ``config.match_shape`` the largest component of those colours."""
        labels = self.colour_labels(image) if labels is None else labels
        colours = [colour] if colour is not None else [c for c in self.spec.colours if c not in exclude]
        found = [self.identify(m, c) for c in colours for m in self.components(labels, c)]
        if not self.config.match_shape:
            return max(found, key=lambda d: d.area) if found else None
        found = [d for d in found if self.accepts(d, shape)]
        return max(found, key=lambda d: d.scores[shape]) if found else None

    def accepts(self, d: Detection, shape: str) -> bool:
        """Whether the found object ``d`` reads as ``shape``: its best-matching shape, within
        ``shape_reject`` of its prototype (``iou`` reader: with IoU of at least ``min_iou``)."""
        if self.config.shape_reader == "iou":
            return d.shape == shape and d.iou >= self.config.min_iou
        return d.shape == shape and d.distance <= self.config.shape_reject

    # ---------------------------------------------------------------- relations
    def geometry(self, a: Detection, b: Detection) -> str:
        """The relation of A to B, one of :data:`GEOMETRIES`."""
        overlap = float((a.mask & b.mask).sum())
        if overlap >= self.config.inside_fraction * a.area:
            return "inside"
        if overlap >= self.config.inside_fraction * b.area:
            return "contains"
        dx, dy = b.cx - a.cx, b.cy - a.cy
        if abs(dy) >= abs(dx):
            if dy > 0:  # A is the upper one
                touching = vertical_gap(a.mask, b.mask) <= self.config.touch_tolerance
                return "on_top_of" if touching else "above"
            return "below"
        return "left_of" if dx > 0 else "right_of"

    def read(self, image: np.ndarray, a: tuple[str, str], relation: str, b: tuple[str, str]) -> Reading:
        """Presence of A and B and their relation, for the prompt "A <relation> B".

        Args:
            image: ``uint8 [H, W, 3]`` (or float in [0, 1]).
            a: ``(shape, colour)`` of A; colour ``None`` when the prompt names its shape alone.
            relation: Prompted relation key.
            b: ``(shape, colour)`` of B (the same).
        """
        labels = self.colour_labels(image)
        det_a = self.find(image, a[0], a[1], labels, exclude=[b[1]] if b[1] else [])
        det_b = self.find(image, b[0], b[1], labels, exclude=[det_a.colour] if det_a is not None else [a[1]])
        geometry = self.geometry(det_a, det_b) if det_a is not None and det_b is not None else None
        return Reading(relation, det_a, det_b, geometry)


def shape_call(detector: "Detector", image: np.ndarray, colour: str) -> tuple[str, Optional[Detection]]:
    """The shape ``detector`` names for the largest component of ``colour`` in ``image`` (the
    object the relation reading finds): its best shape, or ``"other"`` when that shape is below the
    acceptance threshold; ``("none", None)`` when the colour has no component."""
    comps = detector.components(detector.colour_labels(image), colour)
    if not comps:
        return "none", None
    d = detector.identify(comps[0], colour)
    return (d.shape if detector.accepts(d, d.shape) else "other"), d


def reader_agreement(items: Sequence[dict], readers: Optional[dict[str, "Detector"]] = None) -> dict[str, dict]:
    """Agreement of shape readers with hand labels of objects cut from generated images.

    Args:
        items: Labelled crops: ``image`` (``uint8 [H, W, 3]``), ``colour``, ``prompted`` (the
            shape the prompt asked for) and ``label`` (the shape a person sees, or ``other``).
        readers: Name -> detector (default: this module's :class:`Detector` with its defaults).

    Returns:
        Per reader: ``shape`` (the named shape equals the label), ``decision`` (its verdict on
        "is this the prompted shape?" equals the label's), as ``{"k", "n"}``, and the crops it
        gets wrong (``errors``: file, label, call).
    """
    readers = readers or {"reader": Detector()}
    out = {}
    for name, det in readers.items():
        shape_k = decision_k = 0
        errors = []
        for it in items:
            call, d = shape_call(det, it["image"], it["colour"])
            accepted = d is not None and det.accepts(d, it["prompted"])
            shape_k += call == it["label"]
            decision_k += accepted == (it["label"] == it["prompted"])
            if call != it["label"] or accepted != (it["label"] == it["prompted"]):
                errors.append({"file": it.get("file"), "label": it["label"], "prompted": it["prompted"], "call": call})
        out[name] = {"shape": {"k": shape_k, "n": len(items)}, "decision": {"k": decision_k, "n": len(items)},
                     "errors": errors}
    return out


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rate:
    """A proportion ``k / n`` with a confidence interval ``[low, high]``."""

    k: int
    n: int
    low: float
    high: float

    @property
    def value(self) -> float:
        return self.k / self.n if self.n else float("nan")

    def __str__(self) -> str:
        return f"{100 * self.value:.1f} [{100 * self.low:.1f}, {100 * self.high:.1f}]"


def rate(flags: Sequence[bool], z: float = 1.96) -> Rate:
    """A :class:`Rate` with Wilson interval from per-sample outcomes."""
    k, n = int(sum(bool(f) for f in flags)), len(flags)
    return Rate(k, n, *wilson_interval(k, n, z))


def relation_accuracy(readings: Sequence[Reading]) -> Rate:
    """Share of samples with both objects present and the prompted relation holding."""
    return rate([r.relation_ok for r in readings])


def object_accuracy(readings: Sequence[Reading]) -> Rate:
    """Share of samples with both objects present (object generation accuracy)."""
    return rate([r.both_present for r in readings])


def direction_accuracy(pairs: Sequence[tuple[Reading, Reading]]) -> Rate:
    """Share of object-swapped sample pairs ("A r B", "B r A", same seed) right both ways."""
    return rate([ab.relation_ok and ba.relation_ok for ab, ba in pairs])


__all__ = [
    "Detection",
    "Detector",
    "DetectorConfig",
    "GEOMETRIES",
    "Rate",
    "Reading",
    "SATISFIES",
    "direction_accuracy",
    "fit_shape",
    "object_accuracy",
    "reader_agreement",
    "shape_call",
    "shape_features",
    "rate",
    "relation_accuracy",
    "vertical_gap",
    "wilson_interval",
]
