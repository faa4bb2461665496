"""Synthetic coloured shapes in spatial relations, written in each official data layout.

Every method can run with no downloads: these generators write a ReVersion folder, RRNet
relation folders or a DreamRelation folder from a seed. Scenes are drawn from numpy
coordinate grids (one sample at each pixel centre, no antialiasing), so the images, masks and
keypoints are exact functions of the arguments.

The drawing pieces (:class:`SceneObject`, :func:`shape_mask`, :func:`layout_pair`,
:func:`render_scene`, :func:`object_keypoints`, :func:`make_background`) are public so that
other synthetic benchmarks can reuse and extend them.

Writes are atomic at the folder level: a dataset is written into a sibling temporary folder
and renamed into place, so a killed process never leaves a half-written dataset. A
``.complete`` marker records the arguments; calling a writer again with the same arguments
returns at once.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image

from relgen.errors import ConfigError, DataError

#: Bumped whenever the drawing changes, so an old folder is not mistaken for a new one.
GENERATOR_VERSION = 1

MARKER = ".complete"

#: Shape names (one word each).
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross", "star", "hexagon")

#: Colour names (one word each) and their RGB values.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 38, 38),
    "green": (34, 160, 64),
    "blue": (38, 84, 214),
    "yellow": (236, 200, 24),
    "purple": (132, 58, 178),
    "orange": (242, 128, 20),
    "pink": (236, 110, 176),
    "cyan": (24, 184, 204),
}

_PLAIN_BACKGROUND = (236, 236, 236)


@dataclass(frozen=True)
class Relation:
    """A spatial relation between object A and object B.

    Attributes:
        key: Identifier, e.g. ``left_of``.
        phrase: Words between the objects in a caption, e.g. ``to the left of``.
        predicate: The content words of ``phrase`` (DreamRelation's ``predicate``), e.g.
            ``("left",)``.
    """

    key: str
    phrase: str
    predicate: tuple[str, ...]

    @property
    def word(self) -> str:
        """The single relation word (RRNet's ``R``): the first predicate word."""
        return self.predicate[0]


#: The spatial relations, by key. ``on_top_of`` means A rests on B (touching); ``inside``
#: means A lies within B's outline.
RELATIONS: dict[str, Relation] = {
    r.key: r
    for r in (
        Relation("above", "above", ("above",)),
        Relation("below", "below", ("below",)),
        Relation("left_of", "to the left of", ("left",)),
        Relation("right_of", "to the right of", ("right",)),
        Relation("on_top_of", "on top of", ("on", "top")),
        Relation("inside", "inside", ("inside",)),
    )
}


def get_relation(name: str) -> Relation:
    """Look up a relation by key or phrase (``"left of"``, ``"left_of"``, ``"on top of"``).

    Raises:
        ConfigError: If the name is unknown; the message lists the known keys.
    """
    key = "_".join(name.strip().lower().replace("_", " ").split())
    if key.startswith("to_the_"):
        key = key[len("to_the_"):]
    if key not in RELATIONS:
        raise ConfigError(
            f"unknown shapes relation '{name}'; use one of {', '.join(RELATIONS)}"
        )
    return RELATIONS[key]


def vocabulary() -> list[str]:
    """Every word that a caption, prompt or folder name written here can contain."""
    words = {"a", "is"} | set(SHAPES) | set(COLOURS)
    for relation in RELATIONS.values():
        words.update(relation.phrase.split())
    return sorted(words)


# --------------------------------------------------------------------------------------------
# Shapes
# --------------------------------------------------------------------------------------------

_STAR_INNER = 0.45  # inner radius of the star as a fraction of its outer radius
_SQRT3 = math.sqrt(3.0)


def _star_inside(dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    # A 5-pointed star is star-shaped around its centre: find the sector a point lies in and
    # test it against that sector's edge (outer vertex <-> inner vertex).
    step = math.pi / 5
    start = -math.pi / 2  # first outer vertex points up
    angle = np.arctan2(dy, dx)
    k = np.floor((angle - start) / step).astype(np.int64) % 10
    a_angle = start + k * step
    b_angle = a_angle + step
    a_rad = np.where(k % 2 == 0, r, _STAR_INNER * r)
    b_rad = np.where(k % 2 == 0, _STAR_INNER * r, r)
    ax, ay = a_rad * np.cos(a_angle), a_rad * np.sin(a_angle)
    bx, by = b_rad * np.cos(b_angle), b_rad * np.sin(b_angle)
    # The centre lies on the inner side of every edge; so must the point.
    edge_x, edge_y = bx - ax, by - ay
    side_point = edge_x * (dy - ay) - edge_y * (dx - ax)
    side_centre = edge_x * (0 - ay) - edge_y * (0 - ax)
    return side_point * side_centre >= 0


def shape_inside(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    """Whether points at offset ``(dx, dy)`` from a shape's centre are inside it.

    ``y`` grows downwards (image rows). Every shape fits in the square ``|dx|, |dy| <= r`` and
    contains its centre.

    Args:
        shape: One of :data:`SHAPES`.
        dx: Horizontal offsets in pixels (any shape, broadcast with ``dy``).
        dy: Vertical offsets in pixels.
        r: Size (outer radius) in pixels.

    Returns:
        Boolean array of the broadcast shape.
    """
    dx = np.asarray(dx, dtype=np.float64)
    dy = np.asarray(dy, dtype=np.float64)
    ax, ay = np.abs(dx), np.abs(dy)
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        return np.maximum(ax, ay) <= 0.8 * r
    if shape == "diamond":
        return ax + ay <= r
    if shape == "triangle":  # apex up at dy = -r, base at dy = 0.8 r with half-width r
        return (dy >= -r) & (dy <= 0.8 * r) & (ax <= (dy + r) / 1.8)
    if shape == "cross":
        arm = r / 3
        return ((ax <= arm) & (ay <= r)) | ((ay <= arm) & (ax <= r))
    if shape == "star":
        return _star_inside(dx, dy, r)
    if shape == "hexagon":  # flat top and bottom
        return (ay <= _SQRT3 / 2 * r) & (_SQRT3 * ax + ay <= _SQRT3 * r)
    raise ConfigError(f"unknown shape '{shape}'; use one of {', '.join(SHAPES)}")


@dataclass(frozen=True)
class SceneObject:
    """One flat-coloured shape in a scene.

    Attributes:
        shape: One of :data:`SHAPES`.
        colour: One of :data:`COLOURS`.
        cx: Centre column in pixels (continuous; pixel ``i`` spans ``[i, i + 1)``).
        cy: Centre row in pixels.
        radius: Outer radius in pixels.
    """

    shape: str
    colour: str
    cx: float
    cy: float
    radius: float

    @property
    def name(self) -> str:
        """Caption name, e.g. ``red circle``."""
        return f"{self.colour} {self.shape}"


def shape_mask(obj: SceneObject, size: int | tuple[int, int]) -> np.ndarray:
    """Boolean ``[H, W]`` mask of ``obj``, sampled at pixel centres.

    Args:
        obj: The object.
        size: Canvas side, or ``(height, width)``.
    """
    h, w = (size, size) if isinstance(size, int) else size
    ys = np.arange(h, dtype=np.float64)[:, None] + 0.5
    xs = np.arange(w, dtype=np.float64)[None, :] + 0.5
    return shape_inside(obj.shape, xs - obj.cx, ys - obj.cy, obj.radius)


def _unit_extents(shape: str) -> tuple[float, float, float, float]:
    """``(left, up, right, down)`` extents of a unit-radius shape, measured on a fine grid."""
    t = np.linspace(-1.0, 1.0, 401)
    inside = shape_inside(shape, t[None, :], t[:, None], 1.0)
    cols = np.flatnonzero(inside.any(axis=0))
    rows = np.flatnonzero(inside.any(axis=1))
    return -t[cols[0]], -t[rows[0]], t[cols[-1]], t[rows[-1]]


_EXTENTS = {s: _unit_extents(s) for s in SHAPES}


def make_background(
    size: int, kind: str = "plain", rng: np.random.Generator | None = None
) -> np.ndarray:
    """A ``uint8 [size, size, 3]`` background.

    Args:
        size: Canvas side in pixels.
        kind: ``plain`` (light grey) or ``varied`` (a random pale colour with a vertical
            gradient and faint noise, drawn from ``rng``).
        rng: Needed for ``varied``.
    """
    if kind == "plain":
        return np.broadcast_to(np.array(_PLAIN_BACKGROUND, np.uint8), (size, size, 3)).copy()
    if kind == "varied":
        if rng is None:
            raise ValueError("make_background('varied') needs an rng")
        top = rng.uniform(190, 250, size=3)
        bottom = np.clip(top + rng.uniform(-40, 40, size=3), 150, 255)
        t = (np.arange(size, dtype=np.float64) + 0.5)[:, None, None] / size
        image = (1 - t) * top + t * bottom + rng.normal(0.0, 3.0, size=(size, size, 3))
        return np.clip(np.round(image), 0, 255).astype(np.uint8)
    raise ConfigError(f"unknown shapes background '{kind}'; use 'plain' or 'varied'")


def render_scene(
    objects: Sequence[SceneObject], size: int, background: np.ndarray | None = None
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Draw objects in order (later ones occlude earlier ones).

    Args:
        objects: The objects, back to front.
        size: Canvas side in pixels.
        background: ``uint8 [size, size, 3]``; ``None`` for the plain background.

    Returns:
        ``(image, masks)``: the ``uint8 [size, size, 3]`` image and one boolean ``[size, size]``
        mask per object holding its *visible* pixels.
    """
    image = make_background(size) if background is None else np.array(background, np.uint8)
    full = [shape_mask(obj, size) for obj in objects]
    for obj, mask in zip(objects, full):
        image[mask] = COLOURS[obj.colour]
    visible = []
    for i, mask in enumerate(full):
        covered = np.zeros_like(mask)
        for later in full[i + 1 :]:
            covered |= later
        visible.append(mask & ~covered)
    return image, visible


def object_keypoints(obj: SceneObject, visible: np.ndarray, num: int = 17) -> np.ndarray:
    """``num`` keypoints on the visible part of an object, normalised to [0, 1].

    Keypoint 0 is the centre; keypoint ``k >= 1`` lies on the ray at angle
    ``2 pi (k - 1) / (num - 1)`` (0 = right, clockwise on screen), at 75 % of the way to the
    outline. The same object drawn elsewhere or at another size gets corresponding points.
    A point whose pixel is not visible (occluded, or off the discretised shape) moves along
    its ray to the nearest visible pixel, so every keypoint falls on a pixel of ``visible``.

    Args:
        obj: The object.
        visible: Boolean ``[H, W]`` mask of its visible pixels (from :func:`render_scene`).
        num: Number of keypoints (DreamRelation uses 17).

    Returns:
        ``float32 [num, 2]`` normalised ``(x, y)``: pixel coordinates divided by ``(W, H)``.

    Raises:
        ValueError: If ``visible`` is empty.
    """
    h, w = visible.shape
    if not visible.any():
        raise ValueError(f"{obj.name} is not visible; cannot place keypoints")
    ts = np.linspace(0.0, 1.2 * obj.radius, 481)
    points = []
    for k in range(num):
        angle = 0.0 if k == 0 else 2 * math.pi * (k - 1) / (num - 1)
        ux, uy = math.cos(angle), math.sin(angle)
        inside = shape_inside(obj.shape, ts * ux, ts * uy, obj.radius)
        outside = np.flatnonzero(~inside)
        t_edge = ts[outside[0]] if outside.size else ts[-1]
        t_goal = 0.0 if k == 0 else 0.75 * t_edge
        # candidate positions on the ray, nearest to the goal first
        candidates = ts[ts <= t_edge]
        order = np.argsort(np.abs(candidates - t_goal), kind="stable")
        chosen = None
        for t in candidates[order]:
            x, y = obj.cx + t * ux, obj.cy + t * uy
            col, row = int(math.floor(x)), int(math.floor(y))
            if 0 <= row < h and 0 <= col < w and visible[row, col]:
                chosen = (x, y)
                break
        if chosen is None:  # the whole ray is hidden: nearest visible pixel centre
            rows, cols = np.nonzero(visible)
            x, y = obj.cx + t_goal * ux, obj.cy + t_goal * uy
            j = int(np.argmin((cols + 0.5 - x) ** 2 + (rows + 0.5 - y) ** 2))
            chosen = (cols[j] + 0.5, rows[j] + 0.5)
        points.append((chosen[0] / w, chosen[1] / h))
    return np.asarray(points, dtype=np.float32)


# --------------------------------------------------------------------------------------------
# Layout
# --------------------------------------------------------------------------------------------


def _vertical_gap(upper: np.ndarray, lower: np.ndarray) -> int | None:
    """Smallest number of empty rows between ``upper`` and ``lower`` over shared columns."""
    shared = upper.any(axis=0) & lower.any(axis=0)
    if not shared.any():
        return None
    h = upper.shape[0]
    rows = np.arange(h)[:, None]
    bottom_upper = np.where(upper, rows, -1).max(axis=0)
    top_lower = np.where(lower, rows, h).min(axis=0)
    return int((top_lower - bottom_upper - 1)[shared].min())


def layout_pair(
    rng: np.random.Generator,
    relation: Relation | str,
    a: tuple[str, str],
    b: tuple[str, str],
    size: int,
) -> tuple[SceneObject, SceneObject]:
    """Place object A and object B so that "A <relation> B" holds.

    Args:
        rng: Source of the random sizes and positions.
        relation: A :class:`Relation` or its key.
        a: ``(shape, colour)`` of A.
        b: ``(shape, colour)`` of B.
        size: Canvas side in pixels.

    Returns:
        ``(A, B)`` as scene objects. Draw them in the order ``(B, A)`` for ``inside`` (A lies
        on B) — :func:`scene_order` does this.
    """
    relation = get_relation(relation) if isinstance(relation, str) else relation
    margin = max(1.0, 0.03 * size)
    if relation.key == "inside":
        return _layout_inside(rng, a, b, size, margin)
    # "below" and "right_of" are "above" and "left_of" with the roles swapped
    if relation.key in ("below", "right_of"):
        flipped = {"below": "above", "right_of": "left_of"}[relation.key]
        obj_b, obj_a = layout_pair(rng, RELATIONS[flipped], b, a, size)
        return obj_a, obj_b

    vertical = relation.key in ("above", "on_top_of")
    touching = relation.key == "on_top_of"
    ra = rng.uniform(0.13, 0.19) * size
    rb = rng.uniform(0.13, 0.19) * size
    gap = 0.0 if touching else rng.uniform(0.06, 0.12) * size
    ea, eb = _EXTENTS[a[0]], _EXTENTS[b[0]]
    # along the relation axis: A's near extent, then the gap, then B
    if vertical:
        a_before, a_after, b_before, b_after = ea[1], ea[3], eb[1], eb[3]
        a_cross, b_cross = max(ea[0], ea[2]), max(eb[0], eb[2])
    else:
        a_before, a_after, b_before, b_after = ea[0], ea[2], eb[0], eb[2]
        a_cross, b_cross = max(ea[1], ea[3]), max(eb[1], eb[3])
    span = (a_before + a_after) * ra + gap + (b_before + b_after) * rb
    room = size - 2 * margin
    if span > room:  # shrink everything to fit
        shrink = room / span
        ra, rb, gap, span = ra * shrink, rb * shrink, gap * shrink, room
    start = margin + rng.uniform(0.0, room - span)
    along_a = start + a_before * ra
    along_b = start + (a_before + a_after) * ra + gap + b_before * rb
    # across the axis: roughly aligned (within a fraction of the smaller object)
    half = max(a_cross * ra, b_cross * rb)
    centre = rng.uniform(margin + half, size - margin - half)
    jitter = 0.25 * min(ra, rb)
    across_a = float(np.clip(centre + rng.uniform(-jitter, jitter), margin + a_cross * ra,
                             size - margin - a_cross * ra))
    across_b = float(np.clip(centre + rng.uniform(-jitter, jitter), margin + b_cross * rb,
                             size - margin - b_cross * rb))
    if vertical:
        obj_a = SceneObject(a[0], a[1], across_a, along_a, ra)
        obj_b = SceneObject(b[0], b[1], across_b, along_b, rb)
    else:
        obj_a = SceneObject(a[0], a[1], along_a, across_a, ra)
        obj_b = SceneObject(b[0], b[1], along_b, across_b, rb)
    if touching:
        obj_a = _make_touch(obj_a, obj_b, size)
    return obj_a, obj_b


def _make_touch(obj_a: SceneObject, obj_b: SceneObject, size: int) -> SceneObject:
    """Shift A vertically by whole pixels until it rests on B: adjacent rows, no overlap."""
    mask_b = shape_mask(obj_b, size)
    for _ in range(8):
        gap = _vertical_gap(shape_mask(obj_a, size), mask_b)
        if gap is None:  # no shared column: align the centres horizontally
            obj_a = replace(obj_a, cx=obj_b.cx)
            continue
        if gap == 0:
            return obj_a
        obj_a = replace(obj_a, cy=obj_a.cy + gap)
    raise RuntimeError(f"could not make {obj_a.name} touch {obj_b.name}")  # not reached in practice


def _layout_inside(
    rng: np.random.Generator, a: tuple[str, str], b: tuple[str, str], size: int, margin: float
) -> tuple[SceneObject, SceneObject]:
    rb = rng.uniform(0.30, 0.40) * size
    cx_b = rng.uniform(margin + rb, size - margin - rb) if size - 2 * margin > 2 * rb else size / 2
    cy_b = rng.uniform(margin + rb, size - margin - rb) if size - 2 * margin > 2 * rb else size / 2
    obj_b = SceneObject(b[0], b[1], cx_b, cy_b, rb)
    mask_b = shape_mask(obj_b, size)
    ra = rng.uniform(0.30, 0.40) * rb
    jitter = 0.08 * rb
    dx, dy = rng.uniform(-jitter, jitter), rng.uniform(-jitter, jitter)
    for _ in range(40):
        obj_a = SceneObject(a[0], a[1], cx_b + dx, cy_b + dy, ra)
        mask_a = shape_mask(obj_a, size)
        # A must lie within B and leave a ring of B visible around it
        if mask_a.any() and not (mask_a & ~_erode(mask_b)).any():
            return obj_a, obj_b
        ra *= 0.9
        dx *= 0.5
        dy *= 0.5
    raise RuntimeError(f"could not fit {a[1]} {a[0]} inside {b[1]} {b[0]}")  # not reached


def _erode(mask: np.ndarray) -> np.ndarray:
    """One-pixel 4-neighbour erosion."""
    out = mask.copy()
    out[1:, :] &= mask[:-1, :]
    out[:-1, :] &= mask[1:, :]
    out[:, 1:] &= mask[:, :-1]
    out[:, :-1] &= mask[:, 1:]
    out[0, :] = out[-1, :] = False
    out[:, 0] = out[:, -1] = False
    return out


def scene_order(relation: Relation | str, obj_a: SceneObject, obj_b: SceneObject) -> list[int]:
    """Drawing order of ``(A, B)`` as indices: B first when A lies on B (``inside``)."""
    relation = get_relation(relation) if isinstance(relation, str) else relation
    return [1, 0] if relation.key == "inside" else [0, 1]


def render_pair(
    relation: Relation | str,
    obj_a: SceneObject,
    obj_b: SceneObject,
    size: int,
    background: np.ndarray | None = None,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Render A and B in their relation; masks are returned in the order ``[A, B]``."""
    order = scene_order(relation, obj_a, obj_b)
    objects = [(obj_a, obj_b)[i] for i in order]
    image, masks = render_scene(objects, size, background)
    by_index = dict(zip(order, masks))
    return image, [by_index[0], by_index[1]]


# --------------------------------------------------------------------------------------------
# Writers
# --------------------------------------------------------------------------------------------


def _rng(seed: int, stream: str, *index: int) -> np.random.Generator:
    # one independent stream per (seed, dataset kind, item); str -> stable ints
    tag = [ord(c) for c in stream]
    return np.random.default_rng([int(seed), *tag, *index])


def _pick_pair(rng: np.random.Generator) -> tuple[tuple[str, str], tuple[str, str]]:
    shape_a, shape_b = rng.choice(len(SHAPES), size=2, replace=False)
    colour_names = list(COLOURS)
    colour_a, colour_b = rng.choice(len(colour_names), size=2, replace=False)
    return (
        (SHAPES[shape_a], colour_names[colour_a]),
        (SHAPES[shape_b], colour_names[colour_b]),
    )


def _background(rng: np.random.Generator, size: int, kind: str) -> np.ndarray:
    return make_background(size, kind, rng)


def _save_png(array: np.ndarray, path: Path) -> None:
    # a 2-D uint8 array is saved as an L-mode image, [H, W, 3] as RGB
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(array)).save(path, format="PNG")


def _check_size(size: int) -> None:
    if not isinstance(size, int) or size < 16:
        raise ConfigError(f"shapes dataset size must be an integer >= 16 pixels, got {size!r}")


def _marker(kind: str, args: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(
        {"generator": "relgen.data.shapes", "version": GENERATOR_VERSION, "format": kind,
         "args": args},
        sort_keys=True,
    ))


def _read_marker(root: Path) -> Any:
    try:
        return json.loads((root / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _write_atomically(
    root: str | Path, kind: str, args: dict[str, Any], write: Callable[[Path], None]
) -> Path:
    root = Path(root)
    marker = _marker(kind, args)
    if root.exists():
        if _read_marker(root) == marker:
            return root
        if not (root.is_dir() and not any(root.iterdir())):
            found = _read_marker(root)
            detail = (
                f"it was written with different arguments ({json.dumps(found.get('args'))})"
                if isinstance(found, dict) and found.get("generator") == marker["generator"]
                else "it is not a complete synthetic dataset"
            )
            raise DataError(
                f"{root}: folder exists but {detail}; remove it or choose another dataset.root"
            )
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f"{root.name}.tmp-{os.getpid()}"
    if tmp.exists():  # left by an earlier, killed run of this same process id
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        write(tmp)
        (tmp / MARKER).write_text(json.dumps(marker, sort_keys=True, indent=2) + "\n",
                                  encoding="utf-8")
        try:
            if root.exists():  # an empty folder (e.g. created by the caller)
                root.rmdir()
            os.rename(tmp, root)
        except OSError:
            # another process finished the same dataset first
            if _read_marker(root) == marker:
                shutil.rmtree(tmp, ignore_errors=True)
                return root
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def write_shapes_reversion(
    root: str | Path,
    seed: int = 0,
    relation: str = "above",
    num_images: int = 6,
    size: int = 64,
    background: str = "plain",
) -> Path:
    """Write a ReVersion relation folder of shape pairs in one relation.

    Images ``0.png`` … plus ``text.json`` with three templates per image, e.g.
    ``"red circle {} blue square"``, ``"a red circle {} a blue square"``, ``"circle {} square"``.
    Each image has its own random pair of different shapes and colours.

    Args:
        root: Folder to create.
        seed: Random seed; the same arguments always give the same files.
        relation: A key of :data:`RELATIONS` (or its phrase, e.g. ``"left of"``).
        num_images: Number of exemplar images.
        size: Image side in pixels.
        background: ``plain`` or ``varied``.

    Returns:
        ``root``.
    """
    rel = get_relation(relation)
    _check_size(size)
    if num_images < 1:
        raise ConfigError(f"num_images must be >= 1, got {num_images}")
    make_background(8, background, np.random.default_rng(0))  # validate the name early

    def write(tmp: Path) -> None:
        text: dict[str, list[str]] = {}
        for i in range(num_images):
            rng = _rng(seed, "reversion", i)
            a, b = _pick_pair(rng)
            obj_a, obj_b = layout_pair(rng, rel, a, b, size)
            image, _ = render_pair(rel, obj_a, obj_b, size, _background(rng, size, background))
            name = f"{i}.png"
            _save_png(image, tmp / name)
            text[name] = [
                f"{obj_a.name} {{}} {obj_b.name}",
                f"a {obj_a.name} {{}} a {obj_b.name}",
                f"{obj_a.shape} {{}} {obj_b.shape}",
            ]
        (tmp / "text.json").write_text(json.dumps(text, indent=4) + "\n", encoding="utf-8")

    args = dict(seed=seed, relation=rel.key, num_images=num_images, size=size,
                background=background)
    return _write_atomically(root, "reversion", args, write)


def write_shapes_rrnet(
    root: str | Path,
    seed: int = 0,
    relations: Sequence[tuple[str, str, str]] = (("circle", "above", "square"),),
    images_per_folder: int = 3,
    size: int = 64,
    background: str = "plain",
) -> Path:
    """Write one RRNet relation folder per ``(A, relation, B)`` triple under ``root``.

    Each folder is named after the relation key (``f"{key}_{A}_{B}"`` when the key repeats)
    and holds ``index.json`` (``A``, ``B``, ``R``, ``ARB``, ``BRA``, ``ARB_dir``, ``BRA_dir``;
    e.g. ``ARB = "a circle is above a square"``, ``R = "above"``), ``<A>/`` and ``<B>/`` with
    the object alone, and ``<ARB>/`` and ``<BRA>/`` with the object-swapped relation images.
    A and B keep one colour each within a folder.

    Args:
        root: Folder to create; :func:`relgen.data.readers.read_rrnet_folder` reads it.
        seed: Random seed; the same arguments always give the same files.
        relations: ``(A shape, relation, B shape)`` triples; relation is a key of
            :data:`RELATIONS` or its phrase.
        images_per_folder: Images in each of the four image folders.
        size: Image side in pixels.
        background: ``plain`` or ``varied``.

    Returns:
        ``root``.
    """
    _check_size(size)
    if images_per_folder < 1:
        raise ConfigError(f"images_per_folder must be >= 1, got {images_per_folder}")
    if not relations:
        raise ConfigError("write_shapes_rrnet needs at least one (A, relation, B) triple")
    make_background(8, background, np.random.default_rng(0))
    triples = []
    for triple in relations:
        if len(triple) != 3:
            raise ConfigError(
                f"RRNet shapes relation {triple!r} must be (A shape, relation, B shape)"
            )
        shape_a, rel_name, shape_b = triple
        for shape in (shape_a, shape_b):
            if shape not in SHAPES:
                raise ConfigError(
                    f"unknown shape '{shape}' in {triple!r}; use one of {', '.join(SHAPES)}"
                )
        if shape_a == shape_b:
            raise ConfigError(f"RRNet shapes relation {triple!r} needs two different shapes")
        triples.append((shape_a, get_relation(rel_name), shape_b))
    keys = [rel.key for _, rel, _ in triples]
    names = [rel.key if keys.count(rel.key) == 1 else f"{rel.key}_{a}_{b}" for a, rel, b in triples]
    if len(set(names)) != len(names):
        raise ConfigError(f"RRNet shapes relations repeat a triple: {list(relations)}")

    def write(tmp: Path) -> None:
        colour_names = list(COLOURS)
        for index, ((shape_a, rel, shape_b), name) in enumerate(zip(triples, names)):
            folder = tmp / name
            rng = _rng(seed, "rrnet", index)
            ca, cb = (colour_names[i] for i in rng.choice(len(colour_names), 2, replace=False))
            arb = f"a {shape_a} is {rel.phrase} a {shape_b}"
            bra = f"a {shape_b} is {rel.phrase} a {shape_a}"
            index_json = {"A": shape_a, "R": rel.word, "B": shape_b, "ARB": arb, "BRA": bra,
                          "ARB_dir": arb, "BRA_dir": bra}
            folder.mkdir(parents=True)
            (folder / "index.json").write_text(json.dumps(index_json, indent=4) + "\n",
                                               encoding="utf-8")
            for i in range(images_per_folder):
                item_rng = _rng(seed, "rrnet", index, i)
                for shape, colour in ((shape_a, ca), (shape_b, cb)):
                    r = item_rng.uniform(0.2, 0.32) * size
                    cx, cy = item_rng.uniform(r + 1, size - r - 1, size=2)
                    obj = SceneObject(shape, colour, float(cx), float(cy), float(r))
                    bg = _background(item_rng, size, background)
                    image, _ = render_scene([obj], size, bg)
                    _save_png(image, folder / shape / f"{i}.png")
                for prompt, first, second in ((arb, (shape_a, ca), (shape_b, cb)),
                                              (bra, (shape_b, cb), (shape_a, ca))):
                    obj_1, obj_2 = layout_pair(item_rng, rel, first, second, size)
                    bg = _background(item_rng, size, background)
                    image, _ = render_pair(rel, obj_1, obj_2, size, bg)
                    _save_png(image, folder / prompt / f"{i}.png")

    args = dict(seed=seed, relations=[[a, rel.key, b] for a, rel, b in triples],
                images_per_folder=images_per_folder, size=size, background=background)
    return _write_atomically(root, "rrnet", args, write)


def write_shapes_dreamrelation(
    root: str | Path,
    seed: int = 0,
    num_items: int = 4,
    size: int = 64,
    relation: str = "above",
    background: str = "plain",
) -> Path:
    """Write a DreamRelation data folder of two-shape items in one relation.

    Per item ``<id>``: ``prompts.json`` gets e.g. ``{"prompt": "A red circle is above a blue
    square.", "entities": ["red circle", "blue square"], "predicate": ["above"]}``;
    ``videos/<id>/`` gets ``concept0.png`` and ``concept1.png`` (each entity alone, centred),
    ``motion.png`` (both in the relation), ``concept_keyposes_one.pth``,
    ``concept_keyposes_two.pth`` (``float32 (1, 17, 2)``) and ``motion_keyposes.pth``
    (``(2, 17, 2)``); ``masks/<id>/motion0.png`` and ``motion1.png`` are L-mode masks (255 on
    the entity's visible pixels). Keypoints come from :func:`object_keypoints`, so keypoint
    ``k`` of an entity is the same point of the shape in its concept and motion images.

    Args:
        root: Folder to create; :func:`relgen.data.readers.read_dreamrelation_folder` reads it.
        seed: Random seed; the same arguments always give the same files.
        num_items: Number of items (ids ``"0"``, ``"1"``, …).
        size: Image side in pixels.
        relation: A key of :data:`RELATIONS` (or its phrase).
        background: ``plain`` or ``varied``.

    Returns:
        ``root``.
    """
    rel = get_relation(relation)
    _check_size(size)
    if num_items < 1:
        raise ConfigError(f"num_items must be >= 1, got {num_items}")
    make_background(8, background, np.random.default_rng(0))

    def write(tmp: Path) -> None:
        prompts: dict[str, dict[str, Any]] = {}
        for i in range(num_items):
            item = str(i)
            rng = _rng(seed, "dreamrelation", i)
            a, b = _pick_pair(rng)
            obj_a, obj_b = layout_pair(rng, rel, a, b, size)
            image, masks = render_pair(rel, obj_a, obj_b, size, _background(rng, size, background))
            videos, mask_dir = tmp / "videos" / item, tmp / "masks" / item
            _save_png(image, videos / "motion.png")
            motion_kp = [object_keypoints(obj, mask) for obj, mask in zip((obj_a, obj_b), masks)]
            for j, mask in enumerate(masks):
                _save_png(mask.astype(np.uint8) * 255, mask_dir / f"motion{j}.png")
            for j, (obj, kp_name) in enumerate(
                ((obj_a, "concept_keyposes_one.pth"), (obj_b, "concept_keyposes_two.pth"))
            ):
                concept = SceneObject(obj.shape, obj.colour, size / 2, size / 2, 0.32 * size)
                concept_image, (concept_mask,) = render_scene(
                    [concept], size, _background(rng, size, background)
                )
                _save_png(concept_image, videos / f"concept{j}.png")
                kp = torch.from_numpy(object_keypoints(concept, concept_mask)).unsqueeze(0)
                torch.save(kp.contiguous(), videos / kp_name)
            torch.save(torch.from_numpy(np.stack(motion_kp)).contiguous(),
                       videos / "motion_keyposes.pth")
            prompts[item] = {
                "prompt": f"A {obj_a.name} is {rel.phrase} a {obj_b.name}.",
                "entities": [obj_a.name, obj_b.name],
                "predicate": list(rel.predicate),
            }
        (tmp / "prompts.json").write_text(json.dumps(prompts, indent=4) + "\n", encoding="utf-8")

    args = dict(seed=seed, num_items=num_items, size=size, relation=rel.key,
                background=background)
    return _write_atomically(root, "dreamrelation", args, write)


__all__ = [
    "COLOURS",
    "GENERATOR_VERSION",
    "RELATIONS",
    "SHAPES",
    "Relation",
    "SceneObject",
    "get_relation",
    "layout_pair",
    "make_background",
    "object_keypoints",
    "render_pair",
    "render_scene",
    "scene_order",
    "shape_inside",
    "shape_mask",
    "vocabulary",
    "write_shapes_dreamrelation",
    "write_shapes_reversion",
    "write_shapes_rrnet",
]
