"""relworld: a procedural world of coloured shapes in spatial relations, with its language.

The world is built on :mod:`relgen.data.shapes` (its shapes, colours, layout and drawing) and
adds what a pretraining corpus and a benchmark need:

* a :class:`WorldSpec`: which objects (shape x colour) and relations exist, the natural
  phrasings of each relation (``above``/``over``, ``below``/``under``/``beneath`` ...), a
  *held-out relation* that appears in images but is never named in pretraining captions,
  *biased pairs* whose relation is only ever shown one way round, and textured *identities*
  that pretraining shows only as unnamed reference images;
* :func:`sample_scene` and :class:`Scene` (image, visible masks, boxes, 17 keypoints per
  object), :func:`caption_scene` (varied captions), :func:`prompt` and
  :func:`swapped_prompts` (the canonical benchmark prompts);
* writers: :func:`write_pretraining_set` (PNG images + ``captions.jsonl``) and the three
  official layouts for the methods' tasks (:func:`write_world_reversion`,
  :func:`write_world_rrnet`, :func:`write_world_dreamrelation`).

Everything is a deterministic function of a seed; writes are atomic (see
:mod:`relgen.data.shapes`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import torch

from relgen.data import shapes
from relgen.data.readers import mask_to_box
from relgen.data.shapes import (
    COLOURS,
    RELATIONS,
    SceneObject,
    layout_pair,
    make_background,
    object_keypoints,
    render_pair,
    render_scene,
)
from relgen.errors import ConfigError

#: Bumped whenever scenes or captions change, so an old folder is not mistaken for a new one.
WORLD_VERSION = 2

#: Texture names of identities: a darker tone of the identity's colour drawn in a pattern.
TEXTURES: tuple[str, ...] = ("stripes", "checker", "dots")

#: How much of the base colour the texture's dark tone keeps.
TEXTURE_DARKNESS = 0.45

#: Axis and order of each relation: ("vertical", True) = A is the upper one.
RELATION_AXIS: dict[str, tuple[str, bool] | None] = {
    "above": ("vertical", True),
    "on_top_of": ("vertical", True),
    "below": ("vertical", False),
    "left_of": ("horizontal", True),
    "right_of": ("horizontal", False),
    "inside": None,
}

#: "A r B" shows the same scene as "B inverse(r) A" for these relations.
INVERSE: dict[str, str] = {"above": "below", "below": "above", "left_of": "right_of",
                           "right_of": "left_of"}

#: Phrasings of each relation; the first is the canonical one (the phrase of
#: :data:`relgen.data.shapes.RELATIONS`).
DEFAULT_PHRASES: dict[str, tuple[str, ...]] = {
    "above": ("above", "over"),
    "below": ("below", "under", "beneath", "underneath"),
    "left_of": ("to the left of", "left of"),
    "right_of": ("to the right of", "right of"),
    "on_top_of": ("on top of", "on", "atop", "resting on", "sitting on"),
    "inside": ("inside", "in", "within", "inside of"),
}

#: Caption templates with a relation ({a}, {r}, {b}), without one (relation-free), and for a
#: single object.
RELATION_TEMPLATES: tuple[str, ...] = (
    "a {a} {r} a {b}",
    "a {a} is {r} a {b}",
    "the {a} is {r} the {b}",
    "{a} {r} {b}",
    "a photo of a {a} {r} a {b}",
    "there is a {a} {r} a {b}",
)
FREE_TEMPLATES: tuple[str, ...] = (
    "a {a} and a {b}",
    "{a} and {b}",
    "a photo of a {a} and a {b}",
)
SINGLE_TEMPLATES: tuple[str, ...] = ("a {a}", "{a}", "a photo of a {a}", "there is a {a}")


@dataclass(frozen=True)
class Identity:
    """A textured object: one shape and colour with a dark pattern drawn on it.

    Attributes:
        name: Identifier, e.g. ``striped_red_circle``.
        shape: One of the world's shapes.
        colour: One of the world's colours.
        texture: One of :data:`TEXTURES`.
    """

    name: str
    shape: str
    colour: str
    texture: str

    @property
    def entity(self) -> str:
        """The words that name its class in a prompt, e.g. ``red circle``."""
        return f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class BiasedPair:
    """Shape ``first`` is always shown before ``second`` along ``relation``'s axis.

    ``BiasedPair("circle", "square", "above")``: whenever a circle and a square appear in a
    vertical relation, the circle is the upper one ("circle above/on top of square", "square
    below circle"); "square above circle" is never shown.
    """

    first: str
    second: str
    relation: str

    def forbids(self, relation: str, shape_a: str, shape_b: str) -> bool:
        """Whether the scene ``shape_a <relation> shape_b`` shows this pair the other way round."""
        axis, bias = RELATION_AXIS[relation], RELATION_AXIS[self.relation]
        if axis is None or bias is None or axis[0] != bias[0]:
            return False
        if {shape_a, shape_b} != {self.first, self.second}:
            return False
        leading = shape_a if axis[1] else shape_b  # the upper (or left) object of the scene
        return leading == self.second


@dataclass(frozen=True)
class WorldSpec:
    """What exists in the world and how its pretraining data is drawn.

    Attributes:
        shapes: Shape names (from :data:`relgen.data.shapes.SHAPES`).
        colours: Colour names (from :data:`relgen.data.shapes.COLOURS`), well separated in RGB.
        relations: Relation keys (from :data:`relgen.data.shapes.RELATIONS`).
        phrases: Phrasings per relation key; the first is canonical.
        heldout_relation: Shown in pretraining images but never named in their captions.
        biased: Pairs shown only one way round in pretraining.
        identities: Textured objects; pretraining shows them alone, with an empty caption.
        size: Image side in pixels.
        background: ``plain`` or ``varied`` (see :func:`relgen.data.shapes.make_background`).
        single_fraction: Share of pretraining scenes with one object.
        identity_fraction: Share of pretraining scenes that are identity reference images.
        free_fraction: Share of the captions of a named relation's scenes that name no relation
            ("a A and a B").
        inverse_fraction: Share of relation captions phrased from B ("B below A").
        heldout_share: Share of two-object pretraining scenes that show the held-out relation
            (their captions are always relation-free). ``None``: the share at which a
            relation-free caption is no cue for it, i.e. it is one relation among
            ``len(relations)`` in the scenes of "a A and a B" captions:
            ``free_fraction / (len(captioned_relations) + free_fraction)``.
        colourless_fraction: Share of the object mentions of pretraining captions that name
            the shape alone ("a square above a red circle"), so that a shape's name is a class
            of any colour. 0: every mention names the colour (world v2).
    """

    shapes: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross")
    colours: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "cyan")
    relations: tuple[str, ...] = ("above", "below", "left_of", "right_of", "on_top_of", "inside")
    phrases: dict[str, tuple[str, ...]] = field(default_factory=lambda: dict(DEFAULT_PHRASES))
    heldout_relation: Optional[str] = "inside"
    biased: tuple[BiasedPair, ...] = (BiasedPair("circle", "square", "above"),
                                      BiasedPair("triangle", "diamond", "left_of"))
    identities: tuple[Identity, ...] = (
        Identity("striped_red_circle", "circle", "red", "stripes"),
        Identity("checkered_blue_square", "square", "blue", "checker"),
        Identity("dotted_yellow_triangle", "triangle", "yellow", "dots"),
    )
    size: int = 64
    background: str = "varied"
    single_fraction: float = 0.1
    identity_fraction: float = 0.03
    free_fraction: float = 0.1
    inverse_fraction: float = 0.3
    heldout_share: Optional[float] = None
    colourless_fraction: float = 0.0

    def __post_init__(self) -> None:
        for s in self.shapes:
            if s not in shapes.SHAPES:
                raise ConfigError(f"relworld shape '{s}' is not one of {', '.join(shapes.SHAPES)}")
        for c in self.colours:
            if c not in COLOURS:
                raise ConfigError(f"relworld colour '{c}' is not one of {', '.join(COLOURS)}")
        for r in self.relations:
            if r not in RELATIONS or r not in self.phrases or not self.phrases[r]:
                raise ConfigError(f"relworld relation '{r}' needs a key of shapes.RELATIONS and "
                                  "at least one phrase in WorldSpec.phrases")
            if self.phrases[r][0] != RELATIONS[r].phrase:
                raise ConfigError(f"relworld relation '{r}': the first phrase must be the canonical "
                                  f"'{RELATIONS[r].phrase}'")
        if self.heldout_relation is not None and self.heldout_relation not in self.relations:
            raise ConfigError(f"relworld heldout_relation '{self.heldout_relation}' is not one of "
                              f"the relations {self.relations}")
        for pair in self.biased:
            if pair.first not in self.shapes or pair.second not in self.shapes or \
                    RELATION_AXIS.get(pair.relation) is None:
                raise ConfigError(f"relworld biased pair {pair} needs two world shapes and a "
                                  "directional relation")
        for ident in self.identities:
            if ident.shape not in self.shapes or ident.colour not in self.colours or \
                    ident.texture not in TEXTURES:
                raise ConfigError(f"relworld identity {ident.name} needs a world shape, a world "
                                  f"colour and a texture in {TEXTURES}")
        if self.heldout_share is not None and not 0.0 <= self.heldout_share < 1.0:
            raise ConfigError(f"relworld heldout_share {self.heldout_share} must be in [0, 1) (None: no cue)")
        if len(self.shapes) < 2 or len(self.colours) < 2:
            raise ConfigError("relworld needs at least two shapes and two colours")
        if not 0.0 <= self.colourless_fraction <= 1.0:
            raise ConfigError(f"relworld colourless_fraction {self.colourless_fraction} must be in [0, 1]")

    @property
    def objects(self) -> list[tuple[str, str]]:
        """Every ``(shape, colour)`` object, shapes outer, colours inner."""
        return [(s, c) for s in self.shapes for c in self.colours]

    @property
    def captioned_relations(self) -> tuple[str, ...]:
        """Relations named in pretraining captions (all but the held-out one)."""
        return tuple(r for r in self.relations if r != self.heldout_relation)

    def pretraining_relation(self, u: float) -> str:
        """The relation of a two-object pretraining scene for a uniform draw ``u`` in [0, 1):
        the held-out one with probability :attr:`heldout_share` (see there), else one of the
        captioned relations, uniformly."""
        named = self.captioned_relations
        if self.heldout_relation is None:
            return named[min(int(u * len(named)), len(named) - 1)]
        share = self.heldout_share
        if share is None:
            share = self.free_fraction / (len(named) + self.free_fraction)
        if u < share:
            return self.heldout_relation
        return named[min(int((u - share) / (1 - share) * len(named)), len(named) - 1)]

    def forbidden(self, relation: str, shape_a: str, shape_b: str) -> bool:
        """Whether pretraining never shows ``shape_a <relation> shape_b`` (a biased pair)."""
        return any(p.forbids(relation, shape_a, shape_b) for p in self.biased)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able description (recorded in every written folder)."""
        d = asdict(self)
        d["phrases"] = {k: list(v) for k, v in self.phrases.items()}
        if not d["colourless_fraction"]:  # absent at its default: folders written before it keep their markers
            del d["colourless_fraction"]
        return json.loads(json.dumps(d))


#: Named worlds. ``2``: the world of the shipped ``relworld`` model (``inside`` held out, every
#: object named with its colour). ``3``: the world of ``relworld3``, on which inversion and
#: customisation are measured: ``inside`` is named like every relation (so the model can draw it
#: and a learnt token can reach it), and 15 % of the object mentions name the shape alone (so a
#: shape's name is a class, "a cross", whose colour a customisation can make an identity).
WORLDS: dict[str, dict[str, Any]] = {
    "2": {},
    "3": {"heldout_relation": None, "colourless_fraction": 0.15},
}


def world_spec(name: str | int = "2") -> WorldSpec:
    """The :class:`WorldSpec` of a named world (:data:`WORLDS`)."""
    if str(name) not in WORLDS:
        raise ConfigError(f"unknown relworld world '{name}'; use one of {', '.join(WORLDS)}")
    return WorldSpec(**WORLDS[str(name)])


def object_name(obj: tuple[str, Optional[str]]) -> str:
    """``("circle", "red")`` -> ``"red circle"``; ``("circle", None)`` -> ``"circle"`` (the class)."""
    return f"{obj[1]} {obj[0]}" if obj[1] else obj[0]


# --------------------------------------------------------------------------------------------
# Textures
# --------------------------------------------------------------------------------------------


def texture_colour(colour: str) -> tuple[int, int, int]:
    """The dark tone an identity of ``colour`` is patterned with."""
    return tuple(int(round(TEXTURE_DARKNESS * v)) for v in COLOURS[colour])  # type: ignore[return-value]


def texture_mask(texture: str, obj: SceneObject, size: int) -> np.ndarray:
    """Boolean ``[size, size]`` pattern, in the object's own frame (it moves and scales with it).

    Args:
        texture: One of :data:`TEXTURES`.
        obj: The object the pattern belongs to.
        size: Canvas side.
    """
    ys = (np.arange(size, dtype=np.float64)[:, None] + 0.5 - obj.cy) / obj.radius
    xs = (np.arange(size, dtype=np.float64)[None, :] + 0.5 - obj.cx) / obj.radius
    if texture == "stripes":  # horizontal bands a quarter of the radius thick
        return np.broadcast_to(np.floor(ys / 0.25) % 2 == 0, (size, size)).copy()
    if texture == "checker":
        return (np.floor(xs / 0.4) + np.floor(ys / 0.4)) % 2 == 0
    if texture == "dots":  # a square lattice of round dots
        fx, fy = xs / 0.6 - np.round(xs / 0.6), ys / 0.6 - np.round(ys / 0.6)
        return fx * fx + fy * fy <= 0.3 ** 2
    raise ConfigError(f"unknown texture '{texture}'; use one of {', '.join(TEXTURES)}")


# --------------------------------------------------------------------------------------------
# Scenes
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scene:
    """One or two objects, optionally in a relation, on a background.

    Attributes:
        objects: ``(A,)`` or ``(A, B)``.
        relation: Key of the relation "A <relation> B"; ``None`` for one object.
        background: ``uint8 [size, size, 3]``.
        identities: Per object, the :class:`Identity` it is (textured) or ``None``.
    """

    objects: tuple[SceneObject, ...]
    relation: Optional[str]
    background: np.ndarray = field(repr=False)
    identities: tuple[Optional[Identity], ...] = ()

    @property
    def size(self) -> int:
        return int(self.background.shape[0])

    def render(self) -> tuple[np.ndarray, list[np.ndarray]]:
        """Draw the scene.

        Returns:
            ``(image, masks)``: ``uint8 [H, W, 3]`` and one boolean ``[H, W]`` visible mask per
            object, in the order of :attr:`objects`.
        """
        if self.relation is None:
            image, masks = render_scene(list(self.objects), self.size, self.background)
        else:
            image, masks = render_pair(self.relation, self.objects[0], self.objects[1],
                                       self.size, self.background)
        for obj, mask, ident in zip(self.objects, masks, self.identities):
            if ident is not None:
                image[mask & texture_mask(ident.texture, obj, self.size)] = texture_colour(obj.colour)
        return image, masks

    def boxes(self) -> list[tuple[float, float, float, float]]:
        """Normalised ``(x0, y0, x1, y1)`` box of each object's visible pixels."""
        return [mask_to_box(m) for m in self.render()[1]]

    def keypoints(self, num: int = 17) -> np.ndarray:
        """``float32 [n_objects, num, 2]`` keypoints (see :func:`relgen.data.shapes.object_keypoints`)."""
        _, masks = self.render()
        return np.stack([object_keypoints(o, m, num) for o, m in zip(self.objects, masks)])


def _pick_objects(rng: np.random.Generator, spec: WorldSpec) -> tuple[tuple[str, str], tuple[str, str]]:
    """Two objects with different shapes and different colours."""
    sa, sb = rng.choice(len(spec.shapes), size=2, replace=False)
    ca, cb = rng.choice(len(spec.colours), size=2, replace=False)
    return ((spec.shapes[sa], spec.colours[ca]), (spec.shapes[sb], spec.colours[cb]))


def _check_object(spec: WorldSpec, obj: tuple[str, str]) -> tuple[str, str]:
    shape, colour = obj
    if shape not in spec.shapes or colour not in spec.colours:
        raise ConfigError(f"relworld object ({shape!r}, {colour!r}) is not in the world; shapes "
                          f"{spec.shapes}, colours {spec.colours}")
    return shape, colour


def sample_scene(
    rng: np.random.Generator,
    spec: WorldSpec,
    relation: Optional[str] = None,
    a: Optional[tuple[str, str]] = None,
    b: Optional[tuple[str, str]] = None,
    respect_bias: bool = False,
) -> Scene:
    """Draw a two-object scene "A <relation> B" with random sizes, positions and background.

    Args:
        rng: Source of every random choice.
        spec: The world.
        relation: A relation key; ``None`` draws one of ``spec.relations``.
        a: ``(shape, colour)`` of A; ``None`` draws it.
        b: ``(shape, colour)`` of B; ``None`` draws it (different shape and colour from A when
            both are drawn).
        respect_bias: Swap A and B when the scene would show a biased pair the forbidden way
            round (pretraining does; benchmarks and method data do not).

    Returns:
        The scene; ``scene.objects == (A, B)``.
    """
    if relation is None:
        relation = spec.relations[int(rng.integers(len(spec.relations)))]
    if relation not in spec.relations:
        raise ConfigError(f"relworld relation '{relation}' is not one of {spec.relations}")
    pa, pb = _pick_objects(rng, spec)
    a = _check_object(spec, a) if a is not None else pa
    if b is None:
        b = pb
        if b[0] == a[0] or b[1] == a[1]:  # keep A and B distinguishable by shape and colour
            shapes_left = [s for s in spec.shapes if s != a[0]]
            colours_left = [c for c in spec.colours if c != a[1]]
            b = (shapes_left[int(rng.integers(len(shapes_left)))],
                 colours_left[int(rng.integers(len(colours_left)))])
    b = _check_object(spec, b)
    if a[1] == b[1]:
        raise ConfigError(f"relworld objects {object_name(a)} and {object_name(b)} share a colour; "
                          "the detector tells objects apart by colour, so pick different colours")
    if respect_bias and spec.forbidden(relation, a[0], b[0]):
        a, b = b, a
    obj_a, obj_b = layout_pair(rng, RELATIONS[relation], a, b, spec.size)
    background = make_background(spec.size, spec.background, rng)
    return Scene((obj_a, obj_b), relation, background, (None, None))


def sample_single(
    rng: np.random.Generator,
    spec: WorldSpec,
    obj: Optional[tuple[str, str]] = None,
    identity: Optional[Identity] = None,
    centred: bool = False,
) -> Scene:
    """Draw a one-object scene (a plain object or an identity).

    Args:
        rng: Source of every random choice.
        spec: The world.
        obj: ``(shape, colour)``; ``None`` draws one (ignored when ``identity`` is given).
        identity: Draw this textured identity instead.
        centred: Place the object at the centre at 0.32 of the image side (a reference image,
            as DreamRelation's concept images); otherwise random size and position.
    """
    if identity is not None:
        obj = (identity.shape, identity.colour)
    elif obj is None:
        obj = (spec.shapes[int(rng.integers(len(spec.shapes)))],
               spec.colours[int(rng.integers(len(spec.colours)))])
    shape, colour = _check_object(spec, obj)
    size = spec.size
    if centred:
        r, cx, cy = 0.32 * size, size / 2, size / 2
    else:
        r = float(rng.uniform(0.15, 0.32)) * size
        cx, cy = (float(v) for v in rng.uniform(r + 1, size - r - 1, size=2))
    background = make_background(size, spec.background, rng)
    return Scene((SceneObject(shape, colour, cx, cy, r),), None, background, (identity,))


# --------------------------------------------------------------------------------------------
# Language
# --------------------------------------------------------------------------------------------


def prompt(a: tuple[str, str], relation: str, b: tuple[str, str], spec: Optional[WorldSpec] = None,
           phrase: int = 0, template: int = 0) -> str:
    """A prompt "a red circle above a blue square" (canonical phrase and template by default).

    Args:
        a: ``(shape, colour)`` of A.
        relation: Relation key.
        b: ``(shape, colour)`` of B.
        spec: The world (for its phrasings); ``None`` uses the default world.
        phrase: Index into the relation's phrasings.
        template: Index into :data:`RELATION_TEMPLATES`.
    """
    spec = spec or WorldSpec()
    return RELATION_TEMPLATES[template].format(a=object_name(a), r=spec.phrases[relation][phrase],
                                               b=object_name(b))


def swapped_prompts(a: tuple[str, str], relation: str, b: tuple[str, str],
                    spec: Optional[WorldSpec] = None) -> tuple[str, str]:
    """The object-swapped pair ``("a A r a B", "a B r a A")``."""
    return prompt(a, relation, b, spec), prompt(b, relation, a, spec)


def caption_scene(rng: np.random.Generator, spec: WorldSpec, scene: Scene,
                  colourless: Sequence[bool] = ()) -> str:
    """A pretraining caption in varied phrasing.

    Identity reference images get ``""`` (seen, never named); one-object scenes a single-object
    template; the held-out relation only relation-free templates ("a A and a B"); other relations
    a random phrasing and template, sometimes relation-free, sometimes phrased from B. Objects
    flagged in ``colourless`` are named by their shape alone.
    """
    if any(i is not None for i in scene.identities):
        return ""
    flags = list(colourless) or [False] * len(scene.objects)
    names = [o.shape if bare else f"{o.colour} {o.shape}" for o, bare in zip(scene.objects, flags)]
    if scene.relation is None:
        return SINGLE_TEMPLATES[int(rng.integers(len(SINGLE_TEMPLATES)))].format(a=names[0])
    a, b = names
    if scene.relation == spec.heldout_relation or rng.random() < spec.free_fraction:
        if rng.random() < 0.5:
            a, b = b, a
        return FREE_TEMPLATES[int(rng.integers(len(FREE_TEMPLATES)))].format(a=a, b=b)
    relation = scene.relation
    if relation in INVERSE and INVERSE[relation] in spec.phrases and rng.random() < spec.inverse_fraction:
        relation, a, b = INVERSE[relation], b, a
    phrases = spec.phrases[relation]
    phrase = phrases[int(rng.integers(len(phrases)))]
    return RELATION_TEMPLATES[int(rng.integers(len(RELATION_TEMPLATES)))].format(a=a, r=phrase, b=b)


def words(spec: Optional[WorldSpec] = None) -> list[str]:
    """Every word a pretraining caption can contain (the held-out relation's words only where
    another relation uses them)."""
    spec = spec or WorldSpec()
    out: set[str] = set(spec.shapes) | set(spec.colours)
    for template in (*RELATION_TEMPLATES, *FREE_TEMPLATES, *SINGLE_TEMPLATES):
        out.update(w for w in template.split() if not w.startswith("{"))
    for relation in spec.captioned_relations:
        for phrase in spec.phrases[relation]:
            out.update(phrase.split())
    return sorted(out)


# --------------------------------------------------------------------------------------------
# Pretraining stream and writer
# --------------------------------------------------------------------------------------------


def _rng(seed: int, stream: str, *index: int) -> np.random.Generator:
    tag = [ord(ch) for ch in stream]
    return np.random.default_rng([int(seed), WORLD_VERSION, *tag, *index])


def pretraining_item(spec: WorldSpec, seed: int, index: int) -> tuple[Scene, str, str]:
    """Item ``index`` of the pretraining stream: ``(scene, caption, kind)``.

    ``kind`` is ``identity`` (an identity alone, empty caption), ``single`` (one object) or
    ``pair`` (two objects; the relation respects the biased pairs and is drawn by
    :meth:`WorldSpec.pretraining_relation`).
    """
    rng = _rng(seed, "pretrain", index)
    u = rng.random()
    if spec.identities and u < spec.identity_fraction:
        ident = spec.identities[int(rng.integers(len(spec.identities)))]
        scene, kind = sample_single(rng, spec, identity=ident), "identity"
    elif u < spec.identity_fraction + spec.single_fraction:
        scene, kind = sample_single(rng, spec), "single"
    else:
        relation = spec.pretraining_relation(float(rng.random()))
        scene, kind = sample_scene(rng, spec, relation, respect_bias=True), "pair"
    return scene, caption_scene(rng, spec, scene, colourless_mentions(spec, seed, index, len(scene.objects))), kind


def colourless_mentions(spec: WorldSpec, seed: int, index: int, n: int) -> list[bool]:
    """Which of the ``n`` objects of pretraining item ``index`` its caption names by shape alone
    (:attr:`WorldSpec.colourless_fraction`; its own random stream, so world v2's draws are unchanged)."""
    if spec.colourless_fraction <= 0:
        return [False] * n
    rng = _rng(seed, "colourless", index)
    return [bool(u < spec.colourless_fraction) for u in rng.random(n)]


def iter_pretraining(spec: WorldSpec, seed: int, num: int, start: int = 0) -> Iterator[tuple[Scene, str, str]]:
    """Items ``start .. start + num - 1`` of the pretraining stream."""
    for i in range(start, start + num):
        yield pretraining_item(spec, seed, i)


def _scene_record(scene: Scene) -> dict[str, Any]:
    return {
        "relation": scene.relation,
        "objects": [{"shape": o.shape, "colour": o.colour, "cx": round(o.cx, 4), "cy": round(o.cy, 4),
                     "radius": round(o.radius, 4)} for o in scene.objects],
        "identity": next((i.name for i in scene.identities if i is not None), None),
    }


def write_pretraining_set(root: str | Path, spec: Optional[WorldSpec] = None, seed: int = 0,
                          num_images: int = 20000) -> Path:
    """Write ``images/<index>.png`` and ``captions.jsonl`` (one JSON object per image).

    Each line: ``{"file": "images/000000.png", "caption": ..., "kind": "pair"|"single"|
    "identity", "relation": key or null, "objects": [{shape, colour, cx, cy, radius}, ...],
    "identity": name or null}``.

    Args:
        root: Folder to create.
        spec: The world; ``None`` for the default.
        seed: Random seed; the same arguments always give the same files.
        num_images: Number of images.

    Returns:
        ``root``.
    """
    spec = spec or WorldSpec()
    if num_images < 1:
        raise ConfigError(f"num_images must be >= 1, got {num_images}")
    width = max(6, len(str(num_images - 1)))

    def write(tmp: Path) -> None:
        (tmp / "images").mkdir()
        with open(tmp / "captions.jsonl", "w", encoding="utf-8") as f:
            for i, (scene, caption, kind) in enumerate(iter_pretraining(spec, seed, num_images)):
                image, _ = scene.render()
                name = f"images/{i:0{width}d}.png"
                shapes._save_png(image, tmp / name)
                record = _scene_record(scene)
                if caption:  # absent when every colour is named: world v2's records are unchanged
                    for obj, bare in zip(record["objects"], colourless_mentions(spec, seed, i, len(scene.objects))):
                        if bare:
                            obj["colour_named"] = False
                f.write(json.dumps({"file": name, "caption": caption, "kind": kind, **record}) + "\n")

    args = dict(world=WORLD_VERSION, spec=spec.to_dict(), seed=seed, num_images=num_images)
    return shapes._write_atomically(root, "relworld_pretrain", args, write)


def read_pretraining_set(root: str | Path) -> list[dict[str, Any]]:
    """The records of ``captions.jsonl`` with ``file`` made absolute."""
    root = Path(root)
    records = []
    with open(root / "captions.jsonl", encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            rec["file"] = str(root / rec["file"])
            records.append(rec)
    return records


# --------------------------------------------------------------------------------------------
# The methods' official layouts
# --------------------------------------------------------------------------------------------


def _pairs_for(rng: np.random.Generator, spec: WorldSpec, pairs: Optional[Sequence[tuple[str, str]]]):
    """Objects for one item: a random world pair, or one of the given shape pairs with colours."""
    if not pairs:
        return _pick_objects(rng, spec)
    sa, sb = pairs[int(rng.integers(len(pairs)))]
    ca, cb = rng.choice(len(spec.colours), size=2, replace=False)
    return (sa, spec.colours[ca]), (sb, spec.colours[cb])


def write_world_reversion(root: str | Path, spec: Optional[WorldSpec] = None, seed: int = 0,
                          relation: Optional[str] = None, num_images: int = 8,
                          pairs: Optional[Sequence[tuple[str, str]]] = None) -> Path:
    """A ReVersion relation folder of world scenes in one relation (the held-out one by default).

    ``text.json`` gives each image the templates ``"{A} {} {B}"``, ``"a {A} {} a {B}"``,
    ``"the {A} is {} the {B}"`` with A, B its object names (e.g. ``red circle``).

    Args:
        root: Folder to create; :func:`relgen.data.readers.read_reversion_folder` reads it.
        spec: The world.
        seed: Random seed.
        relation: Relation key; ``None`` = ``spec.heldout_relation``.
        num_images: Exemplar images.
        pairs: ``(shape A, shape B)`` pairs to draw from (e.g. the benchmark's training pairs);
            ``None`` draws any pair.
    """
    spec = spec or WorldSpec()
    relation = relation or spec.heldout_relation or spec.relations[0]

    def write(tmp: Path) -> None:
        text: dict[str, list[str]] = {}
        for i in range(num_images):
            rng = _rng(seed, "reversion", i)
            a, b = _pairs_for(rng, spec, pairs)
            scene = sample_scene(rng, spec, relation, a, b)
            image, _ = scene.render()
            name = f"{i}.png"
            shapes._save_png(image, tmp / name)
            na, nb = object_name(a), object_name(b)
            text[name] = [f"{na} {{}} {nb}", f"a {na} {{}} a {nb}", f"the {na} is {{}} the {nb}"]
        (tmp / "text.json").write_text(json.dumps(text, indent=4) + "\n", encoding="utf-8")

    args = dict(world=WORLD_VERSION, spec=spec.to_dict(), seed=seed, relation=relation,
                num_images=num_images, pairs=[list(p) for p in pairs or ()])
    return shapes._write_atomically(root, "relworld_reversion", args, write)


def default_rrnet_triples(spec: WorldSpec) -> list[tuple[str, str, str]]:
    """The direction RRNet must learn for each biased pair: ``(second, relation, first)``,
    the way round that pretraining never shows."""
    return [(p.second, p.relation, p.first) for p in spec.biased]


def write_world_rrnet(root: str | Path, spec: Optional[WorldSpec] = None, seed: int = 0,
                      triples: Optional[Sequence[tuple[str, str, str]]] = None,
                      images_per_folder: int = 4) -> Path:
    """RRNet relation folders (``index.json``, ``<A>/``, ``<B>/``, ``<ARB>/``, ``<BRA>/``).

    A and B are shape words (RRNet's graph nodes); the prompts name them with one colour per
    folder, e.g. ``ARB = "a red square is above a blue circle"``, ``R = "above"``.

    Args:
        root: Folder to create; :func:`relgen.data.readers.read_rrnet_folder` reads it.
        spec: The world.
        seed: Random seed.
        triples: ``(shape A, relation key, shape B)``; ``None`` = :func:`default_rrnet_triples`.
        images_per_folder: Images in each image folder.
    """
    spec = spec or WorldSpec()
    triples = [tuple(t) for t in (triples if triples is not None else default_rrnet_triples(spec))]
    if not triples:
        raise ConfigError("write_world_rrnet needs at least one (A, relation, B) triple")
    for sa, rel, sb in triples:
        if sa == sb or sa not in spec.shapes or sb not in spec.shapes or rel not in spec.relations:
            raise ConfigError(f"RRNet world triple {(sa, rel, sb)!r} needs two different world "
                              f"shapes and a relation of {spec.relations}")
    keys = [rel for _, rel, _ in triples]
    names = [rel if keys.count(rel) == 1 else f"{rel}_{sa}_{sb}" for sa, rel, sb in triples]
    if len(set(names)) != len(names):
        raise ConfigError(f"RRNet world triples repeat: {triples}")

    def write(tmp: Path) -> None:
        for index, ((sa, rel, sb), name) in enumerate(zip(triples, names)):
            folder = tmp / name
            rng = _rng(seed, "rrnet", index)
            ca, cb = (spec.colours[i] for i in rng.choice(len(spec.colours), 2, replace=False))
            a, b = (sa, ca), (sb, cb)
            arb, bra = (f"a {object_name(x)} is {RELATIONS[rel].phrase} a {object_name(y)}"
                        for x, y in ((a, b), (b, a)))
            folder.mkdir(parents=True)
            index_json = {"A": sa, "R": RELATIONS[rel].word, "B": sb, "ARB": arb, "BRA": bra,
                          "ARB_dir": arb, "BRA_dir": bra}
            (folder / "index.json").write_text(json.dumps(index_json, indent=4) + "\n", encoding="utf-8")
            for i in range(images_per_folder):
                item = _rng(seed, "rrnet", index, i)
                for obj in (a, b):
                    scene = sample_single(item, spec, obj)
                    shapes._save_png(scene.render()[0], folder / obj[0] / f"{i}.png")
                for text, x, y in ((arb, a, b), (bra, b, a)):
                    scene = sample_scene(item, spec, rel, x, y)
                    shapes._save_png(scene.render()[0], folder / text / f"{i}.png")

    args = dict(world=WORLD_VERSION, spec=spec.to_dict(), seed=seed,
                triples=[list(t) for t in triples], images_per_folder=images_per_folder)
    return shapes._write_atomically(root, "relworld_rrnet", args, write)


def write_world_dreamrelation(root: str | Path, spec: Optional[WorldSpec] = None, seed: int = 0,
                              relation: Optional[str] = None, num_items: int = 6,
                              identity: Optional[str] = None,
                              others: Optional[Sequence[tuple[str, str]]] = None,
                              plain_identity: Optional[tuple[str, str]] = None) -> Path:
    """A DreamRelation folder: an identity in a relation with a plain object.

    Per item: ``prompts.json`` (``prompt`` "A red circle is inside a blue square.", ``entities``,
    ``predicate``), ``videos/<id>/concept0.png`` (the identity's reference image),
    ``concept1.png`` (the other object), ``motion.png``, the three keypoint files
    (``float32 (1, 17, 2)`` and ``(2, 17, 2)``) and ``masks/<id>/motion{0,1}.png``.

    Args:
        root: Folder to create; :func:`relgen.data.readers.read_dreamrelation_folder` reads it.
        spec: The world.
        seed: Random seed.
        relation: Relation key; ``None`` = ``spec.heldout_relation``.
        num_items: Items.
        identity: Name of one of ``spec.identities`` (textured, named by its colour and shape);
            ``None`` = the first.
        others: ``(shape, colour)`` objects to pair the identity with (e.g. one partner, so that
            a benchmark can score every other object); ``None``: any object of another shape
            and colour.
        plain_identity: ``(shape, colour)``: instead of a textured identity, this plain object,
            named by its class (the shape alone: "A cross is on top of a red circle."), so
            that its colour is what a customisation learns.
    """
    spec = spec or WorldSpec()
    relation = relation or spec.heldout_relation or spec.relations[0]
    if plain_identity is not None:
        plain = _check_object(spec, tuple(plain_identity))
        ident, shape, colour, entity = None, plain[0], plain[1], plain[0]
        key = f"plain:{plain[1]} {plain[0]}"
    else:
        if not spec.identities:
            raise ConfigError("write_world_dreamrelation needs a WorldSpec with identities")
        by_name = {i.name: i for i in spec.identities}
        if identity is not None and identity not in by_name:
            raise ConfigError(f"unknown relworld identity '{identity}'; use one of {', '.join(by_name)}")
        ident = by_name[identity] if identity is not None else spec.identities[0]
        shape, colour, entity, key = ident.shape, ident.colour, ident.entity, ident.name
    rel = RELATIONS[relation]

    def write(tmp: Path) -> None:
        prompts: dict[str, dict[str, Any]] = {}
        for i in range(num_items):
            item = str(i)
            rng = _rng(seed, "dreamrelation", i)
            pool = [tuple(o) for o in others] if others else \
                [(s, c) for s in spec.shapes for c in spec.colours if s != shape and c != colour]
            other = pool[int(rng.integers(len(pool)))]
            pair = sample_scene(rng, spec, relation, (shape, colour), other)
            scene = replace(pair, identities=(ident, None))
            image, masks = scene.render()
            videos, mask_dir = tmp / "videos" / item, tmp / "masks" / item
            shapes._save_png(image, videos / "motion.png")
            for j, mask in enumerate(masks):
                shapes._save_png(mask.astype(np.uint8) * 255, mask_dir / f"motion{j}.png")
            motion_kp = torch.from_numpy(scene.keypoints())
            torch.save(motion_kp.contiguous(), videos / "motion_keyposes.pth")
            concepts = (sample_single(rng, spec, (shape, colour), identity=ident, centred=True),
                        sample_single(rng, spec, other, centred=True))
            for j, (concept, kp_name) in enumerate(zip(concepts, ("concept_keyposes_one.pth",
                                                                  "concept_keyposes_two.pth"))):
                shapes._save_png(concept.render()[0], videos / f"concept{j}.png")
                torch.save(torch.from_numpy(concept.keypoints()).contiguous(), videos / kp_name)
            prompts[item] = {
                "prompt": f"A {entity} is {rel.phrase} a {object_name(other)}.",
                "entities": [entity, object_name(other)],
                "predicate": list(rel.predicate),
            }
        (tmp / "prompts.json").write_text(json.dumps(prompts, indent=4) + "\n", encoding="utf-8")

    if others:
        for o in others:
            if _check_object(spec, tuple(o))[1] == colour:
                raise ConfigError(f"relworld partner {object_name(tuple(o))} has the identity's colour; "
                                  "the detector tells objects apart by colour")
    args = dict(world=WORLD_VERSION, spec=spec.to_dict(), seed=seed, relation=relation,
                num_items=num_items, identity=key, others=[list(o) for o in others or ()])
    return shapes._write_atomically(root, "relworld_dreamrelation", args, write)


__all__ = [
    "BiasedPair",
    "DEFAULT_PHRASES",
    "FREE_TEMPLATES",
    "INVERSE",
    "Identity",
    "RELATION_AXIS",
    "RELATION_TEMPLATES",
    "SINGLE_TEMPLATES",
    "Scene",
    "TEXTURES",
    "WORLD_VERSION",
    "WorldSpec",
    "caption_scene",
    "default_rrnet_triples",
    "iter_pretraining",
    "object_name",
    "pretraining_item",
    "prompt",
    "read_pretraining_set",
    "sample_scene",
    "sample_single",
    "swapped_prompts",
    "texture_colour",
    "texture_mask",
    "words",
    "write_pretraining_set",
    "write_world_dreamrelation",
    "write_world_reversion",
    "write_world_rrnet",
    "WORLDS",
    "colourless_mentions",
    "world_spec",
]
