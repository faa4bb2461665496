"""Prompt sets of the evaluation: ``prompts=<a registered prompt set> | <file.json>``.

* a registered prompt set (:func:`relgen.registry.register_prompt_set`, a plugin's
  ``prompt_sets``; ``python -m relgen.list`` names them). The built-in methods register
  ``reversion_benchmark`` (ReVersion's 10 relations x 100 scenarios; ``{}`` is filled with each
  condition's relation token at generation and with the relation's words, ``relation_words``,
  for CLIP and the judge; ``relation=`` picks one relation, ``limit=`` keeps the first N
  scenarios of each) and ``rrnet_pairs`` (the object-swapped pair "A R B" / "B R A" of an RRNet
  run's relation); relworld registers ``relworld_relation`` (a relworld run's relation on
  object-swapped pairs in relworld's words).
* a JSON file (schema below), for any prompts with their predicate span, entity words and
  reference images.

The prompt file::

    {
      "name": "my_prompts",                         # optional; the report folder's name
      "prompts": [
        {
          "id": "cat-on-box",                       # optional; default: the readable text
          "text": "a cat {} a box",                 # what is rendered; "{}" takes the run's token
          "readable": "a cat on top of a box",      # optional when "text" has no "{}"
          "a": "cat", "b": "box",                   # the entity words
          "predicate": "on top of",                 # the relation words, as in "readable"
          "relation": "on_top_of",                  # optional relation key
          "swapped": "a box on top of a cat",       # optional; default "b predicate a"
          "order": 0,                               # optional; 1 when this is the swapped prompt
          "references": {"cat": ["refs/cat1.png"]}, # optional; for clip_i / dino (paths relative
          "reference_boxes": {"cat": [[0, 0, 64, 64]]},  #   to the file), boxes optional
          "objects": {"a": ["square", "red"], "b": ["circle", "blue"]}   # relworld only
        }
      ]
    }
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from relgen.errors import DataError
from relgen.evaluate.samples import EvalPrompt
from relgen.registry import get_prompt_set, list_prompt_sets

_FILE_KEYS = {"id", "text", "readable", "a", "b", "predicate", "relation", "swapped", "order", "references",
              "reference_boxes", "objects"}


def load_prompt_file(path: str | Path) -> tuple[str, list[EvalPrompt]]:
    """Read a prompt file (schema in the module docstring); returns ``(name, prompts)``."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"prompts={path}: not a prompt set ({', '.join(list_prompt_sets())}) and no such file")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: invalid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, dict) or not isinstance(data.get("prompts"), list) or not data["prompts"]:
        raise DataError(f"{path}: expected an object with a non-empty list 'prompts' (see docs/evaluation.md)")
    out, seen = [], set()
    for i, item in enumerate(data["prompts"]):
        where = f"{path}: prompts[{i}]"
        if not isinstance(item, dict):
            raise DataError(f"{where}: expected an object")
        unknown = set(item) - _FILE_KEYS
        if unknown:
            raise DataError(f"{where}: unknown key(s) {sorted(unknown)}; known: {sorted(_FILE_KEYS)}")
        for key in ("text", "a", "b", "predicate"):
            if not isinstance(item.get(key), str) or not item[key].strip():
                raise DataError(f"{where}: '{key}' must be a non-empty string")
        text = item["text"]
        readable = item.get("readable") or (text.format(item["predicate"]) if "{}" in text else text)
        for key in ("a", "b"):
            if item[key].lower() not in readable.lower():
                raise DataError(f"{where}: entity '{item[key]}' ({key}) is not in '{readable}'")
        refs = {}
        for entity, paths in (item.get("references") or {}).items():
            if not isinstance(paths, list):
                raise DataError(f"{where}: references.{entity} must be a list of image paths")
            resolved = [str((path.parent / p).resolve()) if not Path(p).is_absolute() else p for p in paths]
            for p in resolved:
                if not Path(p).is_file():
                    raise DataError(f"{where}: reference image {p} not found")
            refs[entity] = resolved
        boxes = {e: [tuple(b) if b is not None else None for b in bs]
                 for e, bs in (item.get("reference_boxes") or {}).items()}
        for entity, bs in boxes.items():
            if len(bs) != len(refs.get(entity, [])):
                raise DataError(f"{where}: reference_boxes.{entity} has {len(bs)} boxes for "
                                f"{len(refs.get(entity, []))} reference images")
        order = item.get("order", 0)
        if order not in (0, 1):
            raise DataError(f"{where}: 'order' must be 0 or 1")
        try:
            prompt = EvalPrompt(id=str(item.get("id") or readable), text=text, readable=readable, a=item["a"],
                                b=item["b"], predicate=item["predicate"], relation=item.get("relation") or "",
                                swapped=item.get("swapped"), order=order, references=refs, reference_boxes=boxes,
                                objects=item.get("objects"))
        except DataError as exc:
            raise DataError(f"{where}: {exc}") from None
        if prompt.id in seen:
            raise DataError(f"{where}: duplicate id '{prompt.id}'")
        seen.add(prompt.id)
        out.append(prompt)
    return str(data.get("name") or path.stem), out


def resolve_prompts(spec: str, relation_words: dict[str, str], loaded_run: Any = None,
                    relation: Optional[str] = None, limit: Optional[int] = None) -> tuple[str, list[EvalPrompt]]:
    """``(name, prompts)`` of ``prompts=<spec>``: a registered prompt set, else a prompt file."""
    if spec in list_prompt_sets():
        return spec, get_prompt_set(spec)(relation_words, loaded_run, relation, limit)
    name, prompts = load_prompt_file(spec)
    return name, prompts[: limit or None]
