"""Readers for the official dataset layouts of ReVersion, RRNet and DreamRelation.

Each reader checks the whole folder up front and stops at the first problem with a
:class:`~relgen.errors.DataError` whose one-line message names the file and field at fault
and says how to fix it. Images are not decoded here (only their headers are read where a size
is needed); :func:`relgen.data.images.load_image` decodes them later.
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from relgen.data.images import IMAGE_EXTENSIONS, is_image_file, list_images, natural_key, one_line
from relgen.errors import DataError
from relgen.text import find_words, word_index, words

_EXTENSIONS_TEXT = ", ".join(sorted(e.lstrip(".") for e in IMAGE_EXTENSIONS))

# --------------------------------------------------------------------------------------------
# Shared utilities
# --------------------------------------------------------------------------------------------


def _require_root(root: str | Path, layout: str) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise DataError(
            f"{root}: dataset folder does not exist; set dataset.root= to a folder in the "
            f"{layout} layout"
        )
    return root


def _read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise DataError(f"{path}: file is missing; {what}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{path}: invalid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); "
            "fix the syntax"
        ) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot be read ({one_line(exc)}); {what}") from exc


def _contains_word(text: str, word: str) -> bool:
    """Whether ``word`` (one or more words) occurs in ``text`` as whole words, ignoring case."""
    return word_index(text, word) >= 0


def _image_size(path: Path, what: str) -> tuple[int, int]:
    """``(width, height)`` from the image header, without decoding the pixels."""
    if not path.is_file():
        raise DataError(f"{path}: file is missing; add the {what}")
    try:
        with Image.open(path) as image:
            return image.size
    except Exception as exc:  # PIL raises many types for a bad header
        raise DataError(
            f"{path}: cannot be read as an image ({one_line(exc)}); replace or remove it"
        ) from exc


# --------------------------------------------------------------------------------------------
# ReVersion
# --------------------------------------------------------------------------------------------


@dataclass
class ReversionItem:
    """One exemplar image of a ReVersion relation.

    Attributes:
        image: The image file.
        templates: Caption templates, each with exactly one ``{}`` that the relation token
            (``<R>``) fills.
    """

    image: Path
    templates: list[str]


@dataclass
class ReversionData:
    """A ReVersion relation folder.

    Attributes:
        root: The folder holding the images and ``text.json``.
        items: One item per image, in natural order of the file names.
    """

    root: Path
    items: list[ReversionItem]


def read_reversion_folder(root: str | Path) -> ReversionData:
    """Read a ReVersion relation folder: exemplar images plus ``text.json``.

    ``text.json`` maps each image file name to a list of caption templates with one ``{}``
    placeholder for the relation token, e.g. ``{"0.jpg": ["cat {} stone", "a cat {} a stone"]}``.
    Every image in the folder needs an entry: ReVersion's released dataset looks the templates
    up by file name and fails on an image without one.

    Args:
        root: The relation folder.

    Returns:
        The parsed folder.

    Raises:
        DataError: If the folder, ``text.json`` or an image it names is missing, the JSON is
            invalid, a template lacks its ``{}``, an image has no templates, or there are no
            images.
    """
    root = _require_root(root, "ReVersion (images + text.json)")
    text_json = root / "text.json"
    data = _read_json(
        text_json,
        'add text.json mapping each image file name to caption templates, e.g. '
        '{"0.jpg": ["cat {} stone"]}',
    )
    if not isinstance(data, dict):
        raise DataError(
            f"{text_json}: expected an object mapping image file names to template lists, got "
            f"{type(data).__name__}"
        )

    for key, templates in data.items():
        path = root / key
        if not is_image_file(path):
            raise DataError(
                f"{text_json}: entry '{key}' is not an image file name (expected one of "
                f"{_EXTENSIONS_TEXT}); rename it to the image it describes"
            )
        if not path.is_file():
            raise DataError(
                f"{text_json}: entry '{key}' names an image that does not exist in {root}; add "
                "the image or remove the entry"
            )
        if not isinstance(templates, list) or not templates:
            raise DataError(
                f"{text_json}: entry '{key}' must be a non-empty list of templates, got "
                f"{one_line(json.dumps(templates))}; write e.g. [\"cat {{}} stone\"]"
            )
        for template in templates:
            if not isinstance(template, str):
                raise DataError(
                    f"{text_json}: entry '{key}' has a template that is not a string "
                    f"({one_line(json.dumps(template))}); use strings such as \"cat {{}} stone\""
                )
            if template.count("{}") != 1 or not _formats_once(template):
                raise DataError(
                    f"{text_json}: template {template!r} for image '{key}' must contain exactly "
                    "one '{}' for the relation token (and no other braces); write e.g. "
                    "'cat {} stone'"
                )

    images = list_images(root)
    if not images:
        raise DataError(
            f"{root}: no images found ({_EXTENSIONS_TEXT}); add the exemplar images and list "
            "them in text.json"
        )
    items = []
    for image in images:
        if image.name not in data:
            raise DataError(
                f"{text_json}: no entry for image '{image.name}'; add its caption templates "
                f"(e.g. \"{image.name}\": [\"cat {{}} stone\"]) or remove the image"
            )
        items.append(ReversionItem(image=image, templates=list(data[image.name])))
    return ReversionData(root=root, items=items)


def _formats_once(template: str) -> bool:
    try:
        return template.format("<R>").count("<R>") >= 1
    except (IndexError, KeyError, ValueError):
        return False


# --------------------------------------------------------------------------------------------
# RRNet
# --------------------------------------------------------------------------------------------

_RRNET_KEYS = ("A", "B", "R", "ARB", "BRA", "ARB_dir", "BRA_dir")


@dataclass
class RRNetRelation:
    """One RRNet relation folder.

    Attributes:
        name: The folder name (e.g. ``place``).
        A: Object word A (e.g. ``book``); also the name of A's image folder.
        B: Object word B (e.g. ``bowl``); also the name of B's image folder.
        R: The relation word (e.g. ``placed``).
        ARB: Prompt with A R B (e.g. ``a book is placed on a bowl``).
        BRA: The object-swapped prompt B R A (e.g. ``a bowl is placed on the book``).
        ARB_dir: Folder holding the ARB images; may differ from the ``ARB`` prompt.
        BRA_dir: Folder holding the BRA images; may differ from the ``BRA`` prompt.
        images: Image paths under the keys ``"A"``, ``"B"``, ``"ARB"`` and ``"BRA"``, each in
            natural order of the file names.
        root: The relation folder.
    """

    name: str
    A: str
    B: str
    R: str
    ARB: str
    BRA: str
    ARB_dir: str
    BRA_dir: str
    images: dict[str, list[Path]]
    root: Path | None = None


def read_rrnet_folder(root: str | Path) -> list[RRNetRelation]:
    """Read one RRNet relation folder, or a folder of them.

    A relation folder holds ``index.json`` (keys ``A``, ``B``, ``R``, ``ARB``, ``BRA``,
    ``ARB_dir``, ``BRA_dir``) and four image folders: ``<A>/``, ``<B>/``, ``<ARB_dir>/`` and
    ``<BRA_dir>/``, as in RRNet's released ``Dataset/``.

    Args:
        root: A relation folder (it has ``index.json``) or a folder whose sub-folders are
            relation folders.

    Returns:
        The relations, sorted by folder name.

    Raises:
        DataError: If the folder is missing or holds no relation, a sub-folder lacks
            ``index.json``, a key is missing, a prompt lacks its A, R or B word, or an image
            folder is missing or empty.
    """
    root = _require_root(root, "RRNet (index.json + image folders)")
    if (root / "index.json").is_file():
        return [_read_rrnet_relation(root)]
    subfolders = sorted(
        (p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
        key=lambda p: natural_key(p.name),
    )
    if not subfolders:
        raise DataError(
            f"{root}: no index.json and no relation sub-folders; point dataset.root= at an RRNet "
            "relation folder (with index.json) or a folder of them"
        )
    for sub in subfolders:
        if not (sub / "index.json").is_file():
            raise DataError(
                f"{sub / 'index.json'}: file is missing; every sub-folder of {root} must be an "
                "RRNet relation folder (add index.json or move the folder out)"
            )
    return [_read_rrnet_relation(sub) for sub in subfolders]


def _read_rrnet_relation(folder: Path) -> RRNetRelation:
    index = folder / "index.json"
    data = _read_json(index, "add index.json with keys " + ", ".join(_RRNET_KEYS))
    if not isinstance(data, dict):
        raise DataError(f"{index}: expected a JSON object with keys {', '.join(_RRNET_KEYS)}")
    values: dict[str, str] = {}
    for key in _RRNET_KEYS:
        if key not in data:
            raise DataError(
                f"{index}: missing key '{key}'; RRNet's index.json needs "
                f"{', '.join(_RRNET_KEYS)}"
            )
        value = data[key]
        if not isinstance(value, str) or not value.strip():
            raise DataError(
                f"{index}: key '{key}' must be a non-empty string, got "
                f"{one_line(json.dumps(value))}"
            )
        values[key] = value.strip()

    for prompt_key in ("ARB", "BRA"):
        for word_key in ("A", "R", "B"):
            word = values[word_key]
            if not _contains_word(values[prompt_key], word):
                raise DataError(
                    f"{index}: '{prompt_key}' prompt {values[prompt_key]!r} does not contain the "
                    f"{word_key} word '{word}' as a word; RRNet builds its graph from these "
                    "words, so use them verbatim in both prompts"
                )

    # RRNet learns the difference between the two orders of two different objects: with A = B,
    # or one prompt for both orders, the positive and the negative term are the same sample.
    if values["A"].casefold() == values["B"].casefold():
        raise DataError(f"{index}: A and B are both {values['A']!r}; RRNet learns the order of two "
                        "different objects, so name two different ones")
    if " ".join(values["ARB"].casefold().split()) == " ".join(values["BRA"].casefold().split()):
        raise DataError(f"{index}: ARB and BRA are the same prompt {values['ARB']!r}; BRA must be the "
                        "object-swapped prompt (B R A), or RRNet's positive and negative terms cancel")
    if values["ARB_dir"] == values["BRA_dir"]:
        raise DataError(f"{index}: ARB_dir and BRA_dir are the same folder {values['ARB_dir']!r}; the two "
                        "orders need their own images")

    images: dict[str, list[Path]] = {}
    for key, dir_key in (("A", "A"), ("B", "B"), ("ARB", "ARB_dir"), ("BRA", "BRA_dir")):
        sub = folder / values[dir_key]
        if not sub.is_dir():
            raise DataError(
                f"{sub}: image folder for '{key}' ({dir_key}={values[dir_key]!r} in {index}) does "
                "not exist; create it with the images or fix index.json"
            )
        paths = list_images(sub)
        if not paths:
            raise DataError(
                f"{sub}: image folder for '{key}' ({dir_key}={values[dir_key]!r} in {index}) has "
                f"no images ({_EXTENSIONS_TEXT}); add some"
            )
        images[key] = paths
    return RRNetRelation(
        name=folder.name,
        A=values["A"],
        B=values["B"],
        R=values["R"],
        ARB=values["ARB"],
        BRA=values["BRA"],
        ARB_dir=values["ARB_dir"],
        BRA_dir=values["BRA_dir"],
        images=images,
        root=folder,
    )


# --------------------------------------------------------------------------------------------
# DreamRelation
# --------------------------------------------------------------------------------------------

_NUM_KEYPOINTS = 17


@dataclass
class DreamRelationItem:
    """One DreamRelation training item: a relation image with its entities' concept images.

    Attributes:
        id: The item key in ``prompts.json`` (also the folder name under ``videos/`` and
            ``masks/``).
        prompt: The caption, e.g. ``"A bear is hugging a tiger."``.
        entities: The entity names, one or two, in image order.
        predicate: The relation words, consecutive in the prompt (e.g. ``["hugging"]``); None
            when ``prompts.json`` gives none for the item (DreamRelation's released ``shake`` data).
        concept_images: One concept (identity) image per entity (``concept0.png``, ``concept1.png``;
            ``concept.png`` for a single entity).
        motion_image: The relation ("motion") image, ``motion.png``.
        concept_keypoints: ``float32 [n, 17, 2]``, normalised ``(x, y)`` in [0, 1] on each
            entity's concept image.
        motion_keypoints: ``float32 [n, 17, 2]``, normalised ``(x, y)`` in [0, 1] on the motion
            image, entity ``i`` in row ``i``.
        mask_paths: One L-mode mask per entity on the motion image (``masks/<id>/motion{i}.png``).
        boxes: One normalised ``(x0, y0, x1, y1)`` box per entity, from its mask at full
            resolution.
    """

    id: str
    prompt: str
    entities: list[str]
    predicate: Optional[list[str]]
    concept_images: list[Path]
    motion_image: Path
    concept_keypoints: torch.Tensor
    motion_keypoints: torch.Tensor
    mask_paths: list[Path]
    boxes: list[tuple[float, float, float, float]] = field(default_factory=list)


def read_dreamrelation_folder(root: str | Path) -> list[DreamRelationItem]:
    """Read a DreamRelation data folder (the layout of its released ``data/<relation>/``).

    Layout::

        prompts.json            {"<id>": {"prompt": str, "entities": [e1, e2],
                                          "predicate": [word, ...]}}
        videos/<id>/concept0.png, concept1.png       concept image of each entity
        videos/<id>/motion.png                       the relation image
        videos/<id>/concept_keyposes_one.pth, concept_keyposes_two.pth   (1, 17, 2) each
        videos/<id>/motion_keyposes.pth              (n, 17, 2)
        masks/<id>/motion0.png, motion1.png          per-entity masks of motion.png (L mode)

    A single-entity item uses ``concept.png`` and ``concept_keyposes.pth`` instead, and
    ``masks/<id>/motion0.png``. ``predicate`` is optional: an item without it reads with
    ``predicate=None`` (the released train.py crashes on such items, e.g. its ``shake`` data);
    a method that needs it says so.

    Args:
        root: The data folder.

    Returns:
        The items in natural order of their ids.

    Raises:
        DataError: If a file is missing, an item lacks ``prompt``/``entities``, a given
            predicate is malformed or its words are not in the prompt, a keypoint tensor has the wrong shape or
            values outside [0, 1], or a mask is empty or the wrong size.
    """
    root = _require_root(root, "DreamRelation (prompts.json, videos/, masks/)")
    prompts_json = root / "prompts.json"
    data = _read_json(
        prompts_json,
        'add prompts.json mapping each item id to {"prompt", "entities", "predicate"}',
    )
    if not isinstance(data, dict) or not data:
        raise DataError(
            f"{prompts_json}: expected a non-empty object mapping item ids to "
            '{"prompt", "entities", "predicate"}'
        )
    return [_read_dreamrelation_item(root, prompts_json, str(k), data[k])
            for k in sorted(data, key=natural_key)]


def _read_dreamrelation_item(
    root: Path, prompts_json: Path, item_id: str, entry: Any
) -> DreamRelationItem:
    where = f"{prompts_json}: item '{item_id}'"
    if not isinstance(entry, dict):
        raise DataError(f"{where} must be an object with 'prompt', 'entities' and 'predicate'")
    prompt = entry.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise DataError(
            f"{where} has no 'prompt' string; add e.g. \"prompt\": \"A bear is hugging a tiger.\""
        )
    entities = entry.get("entities")
    if (
        not isinstance(entities, list)
        or not 1 <= len(entities) <= 2
        or not all(isinstance(e, str) and e.strip() for e in entities)
    ):
        raise DataError(
            f"{where} needs 'entities': a list of one or two names, got "
            f"{one_line(json.dumps(entities))}; write e.g. \"entities\": [\"bear\", \"tiger\"]"
        )
    predicate = entry.get("predicate")
    if predicate is not None and (
        not isinstance(predicate, list)
        or not predicate
        or not all(isinstance(w, str) and w.strip() for w in predicate)
    ):
        raise DataError(
            f"{where}: 'predicate' must be a non-empty list of words, got "
            f"{one_line(json.dumps(predicate))}; write e.g. \"predicate\": [\"hugging\"]"
        )
    predicate_words = [w for p in (predicate or []) for w in words(p)]
    if predicate is not None and find_words(words(prompt), predicate_words) < 0:
        raise DataError(
            f"{where}: predicate {predicate} does not appear as consecutive words in its prompt "
            f"{prompt!r}; use the predicate words exactly as written in the prompt"
        )

    n = len(entities)
    videos = root / "videos" / item_id
    masks_dir = root / "masks" / item_id
    if not videos.is_dir():
        raise DataError(
            f"{videos}: folder is missing; add the images and keypoints of item '{item_id}'"
        )
    if n == 2:
        concept_images = [videos / "concept0.png", videos / "concept1.png"]
        concept_kp_files = [
            videos / "concept_keyposes_one.pth",
            videos / "concept_keyposes_two.pth",
        ]
    else:
        concept_images = [videos / "concept.png"]
        concept_kp_files = [videos / "concept_keyposes.pth"]
    motion_image = videos / "motion.png"
    mask_paths = [masks_dir / f"motion{i}.png" for i in range(n)]

    for i, path in enumerate(concept_images):
        _image_size(path, f"concept image of entity '{entities[i]}'")
    motion_w, motion_h = _image_size(motion_image, "relation (motion) image")

    concept_keypoints = torch.cat([_load_keypoints(p, 1) for p in concept_kp_files], dim=0)
    motion_keypoints = _load_keypoints(videos / "motion_keyposes.pth", n)

    boxes = []
    for i, path in enumerate(mask_paths):
        mask = _load_mask(path, f"mask of entity '{entities[i]}'")
        if mask.shape != (motion_h, motion_w):
            raise DataError(
                f"{path}: mask is {mask.shape[1]}x{mask.shape[0]} but {motion_image.name} is "
                f"{motion_w}x{motion_h}; masks must match the motion image size"
            )
        if not mask.any():
            raise DataError(
                f"{path}: mask is empty (all zero); mark entity '{entities[i]}' with non-zero "
                "pixels"
            )
        boxes.append(mask_to_box(mask))
    return DreamRelationItem(
        id=item_id,
        prompt=prompt,
        entities=list(entities),
        predicate=None if predicate is None else list(predicate),
        concept_images=concept_images,
        motion_image=motion_image,
        concept_keypoints=concept_keypoints,
        motion_keypoints=motion_keypoints,
        mask_paths=mask_paths,
        boxes=boxes,
    )


def _load_keypoints(path: Path, n: int) -> torch.Tensor:
    if not path.is_file():
        raise DataError(
            f"{path}: keypoint file is missing; add a ({n}, 17, 2) tensor saved with torch.save"
        )
    try:
        value = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated zip, a pickle of a disallowed type, ...
        reason = one_line(exc)[:200]
        if "Weights only load failed" in reason:
            reason = "it holds Python objects that weights_only=True refuses"
        raise DataError(
            f"{path}: cannot be loaded as a tensor ({reason}); save a plain tensor with torch.save"
        ) from exc
    expected = (n, _NUM_KEYPOINTS, 2)
    if not isinstance(value, torch.Tensor):
        raise DataError(
            f"{path}: expected a tensor of shape {expected}, got a {type(value).__name__}"
        )
    if tuple(value.shape) != expected:
        raise DataError(
            f"{path}: keypoints have shape {tuple(value.shape)}, expected {expected} "
            f"({n} entit{'y' if n == 1 else 'ies'} x 17 keypoints x normalised (x, y))"
        )
    value = value.detach().to(torch.float32)
    inside = (value >= 0) & (value <= 1)  # also False for NaN
    if not bool(inside.all()):
        raise DataError(
            f"{path}: keypoints must be normalised to [0, 1] (x / width, y / height), got values "
            f"in [{value.nan_to_num(nan=float('inf')).min().item():.4g}, "
            f"{value.nan_to_num(nan=float('-inf')).max().item():.4g}]"
            + (" including NaN" if bool(value.isnan().any()) else "")
        )
    return value.contiguous()


def _load_mask(path: Path, what: str) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"{path}: file is missing; add the {what} (L mode, non-zero inside)")
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("L"))
    except Exception as exc:
        raise DataError(
            f"{path}: cannot be read as a mask image ({one_line(exc)}); replace it"
        ) from exc


# --------------------------------------------------------------------------------------------
# Boxes and predicate spans
# --------------------------------------------------------------------------------------------


def mask_to_box(
    mask: np.ndarray | torch.Tensor, threshold: float = 0.0
) -> tuple[float, float, float, float]:
    """Bounding box of a mask, normalised to [0, 1].

    Pixel ``(row, col)`` covers ``[col, col + 1) x [row, row + 1)``, so the box is
    ``(min_col / W, min_row / H, (max_col + 1) / W, (max_row + 1) / H)``: the far edges are
    exclusive pixel edges and a full mask gives ``(0, 0, 1, 1)``.

    Args:
        mask: ``[H, W]`` array or tensor (bool, integer or float).
        threshold: A pixel belongs to the object when its value is greater than this.

    Returns:
        ``(x0, y0, x1, y1)`` as Python floats with ``x0 < x1`` and ``y0 < y1``.

    Raises:
        DataError: If no pixel is above ``threshold``.
        ValueError: If ``mask`` is not 2-D.
    """
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D [H, W], got shape {mask.shape}")
    inside = mask > threshold
    rows = np.flatnonzero(inside.any(axis=1))
    cols = np.flatnonzero(inside.any(axis=0))
    if rows.size == 0:
        raise DataError("mask is empty (all zero); no box can be derived from it")
    h, w = mask.shape
    return (
        float(cols[0]) / w,
        float(rows[0]) / h,
        float(cols[-1] + 1) / w,
        float(rows[-1] + 1) / h,
    )


def validate_boxes(boxes: Sequence[Sequence[float]] | torch.Tensor, where: str) -> None:
    """Check normalised ``(x0, y0, x1, y1)`` boxes.

    Args:
        boxes: ``[n, 4]`` tensor or a sequence of 4-sequences.
        where: Names the file or field the boxes came from; starts the error message.

    Raises:
        DataError: If a box does not have 4 numbers, has a coordinate outside [0, 1] (or NaN),
            or has ``x0 >= x1`` or ``y0 >= y1``.
    """
    if isinstance(boxes, torch.Tensor):
        boxes = boxes.detach().cpu().tolist()
    for i, box in enumerate(boxes):
        try:
            x0, y0, x1, y1 = (float(v) for v in box)
        except (TypeError, ValueError) as exc:
            raise DataError(
                f"{where}: box {i} must be 4 numbers (x0, y0, x1, y1), got {one_line(box)}"
            ) from exc
        text = f"({x0:.4g}, {y0:.4g}, {x1:.4g}, {y1:.4g})"
        if not all(0.0 <= v <= 1.0 for v in (x0, y0, x1, y1)):
            raise DataError(
                f"{where}: box {i} {text} is outside [0, 1]; boxes are normalised "
                "(x / width, y / height)"
            )
        if x0 >= x1 or y0 >= y1:
            raise DataError(
                f"{where}: box {i} {text} needs x0 < x1 and y0 < y1 (order x0, y0, x1, y1)"
            )


def predicate_token_span(tokenizer: Any, prompt: str, predicate: Sequence[str]) -> tuple[int, int]:
    """Token span ``[start, end)`` of the predicate words in the tokenized prompt.

    Counted word by word as DreamRelation's released ``get_phrase_idx`` does: the prompt is
    split on whitespace, the position starts at 1 (BOS sits at index 0), every word before the
    predicate adds its pieces as written (punctuation attached to it included, as
    ``"Look, a cat is hugging ..."`` needs), and the predicate words add theirs, the last one
    without its trailing punctuation. Words are matched by :func:`relgen.text.words` (case ignored, all
    trailing punctuation stripped), which is more lenient than the released match (case-
    sensitive, one final ``.!?,:`` stripped); where both match words without a hyphen, the
    spans are equal.

    Args:
        tokenizer: A Hugging Face tokenizer (``tokenizer(text, add_special_tokens=False)``
            returns ``input_ids``); CLIP's for the Stable Diffusion backbones.
        prompt: The caption.
        predicate: The predicate words, consecutive in the prompt (an entry may hold several
            words separated by spaces).

    Returns:
        ``(start, end)`` indices into the tokenized prompt (with BOS at 0); ``end - start`` is
        the number of predicate tokens.

    Raises:
        DataError: If the predicate is empty, not found, or lies past the tokenizer's maximum
            length.
    """
    target = [w for p in predicate for w in words(p)]
    target = [w for w in target if w]
    if not target:
        raise DataError(f"predicate {list(predicate)} has no words; give e.g. [\"hugging\"]")
    raw_words = prompt.split()
    start_word = find_words(words(prompt), target)
    if start_word < 0:
        raise DataError(
            f"predicate {list(predicate)} not found as consecutive words in prompt {prompt!r}; "
            "use the predicate words exactly as written in the prompt"
        )

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else 0

    position = 1  # BOS
    for raw in raw_words[:start_word]:
        position += count(raw)
    start = position
    for k in range(start_word, start_word + len(target)):
        raw = raw_words[k]
        if k < start_word + len(target) - 1:
            position += count(raw)
        else:  # the last predicate word ends before its trailing punctuation
            position += count(raw.rstrip(string.punctuation))
    end = position
    max_length = getattr(tokenizer, "model_max_length", None)
    if isinstance(max_length, int) and max_length < 10**6 and end > max_length - 1:
        raise DataError(
            f"predicate {list(predicate)} ends at token {end} of prompt {prompt!r}, past the "
            f"tokenizer's {max_length}-token limit (with EOS); shorten the prompt"
        )
    return start, end


__all__ = [
    "DreamRelationItem",
    "RRNetRelation",
    "ReversionData",
    "ReversionItem",
    "mask_to_box",
    "predicate_token_span",
    "read_dreamrelation_folder",
    "read_reversion_folder",
    "read_rrnet_folder",
    "validate_boxes",
]


#: The key of reference images that belong to the whole image rather than to one entity.
WHOLE_IMAGE = "*"


def reference_images(layout: str, data: Any) -> Optional[dict[str, list[str]]]:
    """The reference images a dataset of ``layout`` holds, as read by its reader: ``{entity:
    paths}`` (DreamRelation: each entity's concept images; RRNet: the object images of A and B)
    or ``{WHOLE_IMAGE: paths}`` (ReVersion: the exemplars), in the reader's order; ``None`` for
    a layout without reference images."""
    pairs = _REFERENCE_IMAGES.get(layout)
    if pairs is None:
        return None
    out: dict[str, list[str]] = {}
    for key, paths in pairs(data):
        known = out.setdefault(key, [])
        known += [str(p) for p in paths if str(p) not in known]
    return out


#: ``(entity, paths)`` pairs of each layout's reference images, in the reader's order.
_REFERENCE_IMAGES: dict[str, Callable[[Any], Iterable[tuple[str, Sequence]]]] = {
    "reversion": lambda data: [(WHOLE_IMAGE, [item.image for item in data.items])],
    "rrnet": lambda data: [pair for rel in data for pair in ((rel.A, rel.images["A"]), (rel.B, rel.images["B"]))],
    "dreamrelation": lambda data: [(entity, [image]) for item in data
                                   for entity, image in zip(item.entities, item.concept_images)],
}
