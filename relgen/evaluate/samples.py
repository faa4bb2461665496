"""What a metric scores: an evaluation prompt, and one image generated from it.

An :class:`EvalPrompt` carries everything the protocols read from a prompt: the text the model
renders (which may hold a learned token such as ``<R>``), the same text with the relation
written out (what CLIP and a judge can read), the two entity words, the predicate, the
object-swapped twin, and reference images for CLIP-I/DINO.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from relgen.errors import DataError

Box = tuple[float, float, float, float]  # (x0, y0, x1, y1) in pixels, y downwards


@dataclass(frozen=True)
class EvalPrompt:
    """One evaluation prompt "A R B".

    Attributes:
        id: Stable identifier (the bootstrap's cluster).
        text: The prompt given to the generator.
        readable: ``text`` with the relation written out in words.
        a: Entity A's words.
        b: Entity B's words.
        predicate: The relation words as they appear in ``readable`` (e.g. ``"painted on"``).
        relation: Relation key (``"painted_on"``, ``"above"``); the predicate when unset.
        swapped: The object-swapped twin "B R A" with the relation written out (``None``:
            made from the entities and the predicate).
        order: 0 when this is the pair's "A R B" prompt, 1 when it is the swapped "B R A".
        references: Reference image paths per entity word (CLIP-I, DINO); the key ``"*"``
            holds references of the whole image (:mod:`relgen.evaluate.references`).
        reference_boxes: Per entity, one box (or ``None``) per reference image.
        objects: relworld only: ``{"a": [shape, colour], "b": [shape, colour]}``.
    """

    id: str
    text: str
    readable: str
    a: str
    b: str
    predicate: str
    relation: str = ""
    swapped: Optional[str] = None
    order: int = 0
    references: dict[str, list[str]] = field(default_factory=dict)
    reference_boxes: dict[str, list[Optional[Box]]] = field(default_factory=dict)
    objects: Optional[dict[str, list[str]]] = None

    def __post_init__(self) -> None:
        if self.predicate and self.predicate.lower() not in self.readable.lower():
            raise DataError(f"prompt '{self.id}': the relation words '{self.predicate}' are not in "
                            f"'{self.readable}'; give the predicate exactly as it appears in the prompt")
        if not self.relation:
            object.__setattr__(self, "relation", self.predicate.replace(" ", "_"))

    @property
    def twin(self) -> str:
        """The object-swapped prompt with the relation written out."""
        return self.swapped or f"{self.b} {self.predicate} {self.a}"

    @property
    def pair(self) -> tuple[str, str]:
        """``("A R B", "B R A")`` in the pair's fixed order, whichever of the two this is."""
        return (self.readable, self.twin) if self.order == 0 else (self.twin, self.readable)

    def predicate_span(self) -> tuple[int, int]:
        """Character span ``[start, end)`` of the predicate in ``readable``."""
        start = self.readable.lower().find(self.predicate.lower())
        return start, start + len(self.predicate)


@dataclass
class Sample:
    """One generated (or given) image.

    Attributes:
        prompt: What it was generated from.
        seed: Its generation seed.
        condition: Which condition made it (``"method"``, ``"base"``, ``"lambda=0.6"``, ...).
        image: A PIL image (RGB).
        path: Where it is stored, if anywhere.
    """

    prompt: EvalPrompt
    seed: int
    condition: str
    image: Any
    path: Optional[Path] = None

    @property
    def key(self) -> tuple[str, int]:
        """``(prompt id, seed)``: what two conditions pair on."""
        return self.prompt.id, self.seed


@dataclass
class ImageScore:
    """A metric's outcome on one image.

    Attributes:
        values: Output name -> value (rates 0/1, scores as floats); ``None`` when the output
            does not apply to this image (e.g. a relation the box rule cannot decide).
        verdict: A short label for the grids ("ok", "A missing", "left_of").
        boxes: ``(label, box, ok)`` to draw on the image.
        details: Anything worth keeping in ``results.json`` (answers, detections).
        unparsed: Number of judge answers that parsed as nothing.
    """

    values: dict[str, Optional[float]]
    verdict: str = ""
    boxes: list[tuple[str, Box, bool]] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    unparsed: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"values": self.values, "verdict": self.verdict, "unparsed": self.unparsed,
                "boxes": [{"label": label, "box": list(box), "ok": ok} for label, box, ok in self.boxes],
                "details": self.details}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ImageScore":
        boxes = [(b["label"], tuple(b["box"]), bool(b["ok"])) for b in data.get("boxes", [])]
        return cls(dict(data["values"]), data.get("verdict", ""), boxes, dict(data.get("details", {})),
                   int(data.get("unparsed", 0)))
