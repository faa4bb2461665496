"""Prompt sets of the evaluation: ``prompts=reversion_benchmark | rrnet_pairs | <file.json>``.

* ``reversion_benchmark``: ReVersion's 10 relations x 100 scenarios ("cat {} stone": 10 subjects
  x 10 objects); ``{}`` is filled with each condition's relation token at generation and with
  the relation's words (``relation_words``) for CLIP and the judge. ``relation=`` picks one
  relation; ``limit=`` keeps the first N scenarios of each.
* ``rrnet_pairs``: the object-swapped pair "A R B" / "B R A" of an RRNet run's relation.
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

from relgen.errors import ConfigError, DataError
from relgen.evaluate.samples import EvalPrompt

#: Named prompt sets.
PROMPT_SETS = ("reversion_benchmark", "rrnet_pairs", "relworld_relation")

#: ``relworld_relation``: object pairs per prompt set (each drawn in both orders).
RELWORLD_RELATION_PAIRS = 8

_FILE_KEYS = {"id", "text", "readable", "a", "b", "predicate", "relation", "swapped", "order", "references",
              "reference_boxes", "objects"}


def reversion_benchmark(relation_words: dict[str, str], relation: Optional[str] = None,
                        limit: Optional[int] = None) -> list[EvalPrompt]:
    """ReVersion's benchmark scenarios as evaluation prompts.

    Args:
        relation_words: The words of each benchmark relation ("painted_on" -> "painted on").
        relation: Only this relation; ``None``: all ten.
        limit: Keep the first ``limit`` scenarios of each relation.
    """
    from relgen.methods.reversion.words import load_benchmark_scenarios

    scenarios = load_benchmark_scenarios()
    if relation is not None and relation not in scenarios:
        raise ConfigError(f"relation='{relation}' is not a ReVersion benchmark relation; known: {sorted(scenarios)}")
    out = []
    for key in [relation] if relation else sorted(scenarios):
        if key not in relation_words:
            raise ConfigError(f"relation_words has no words for benchmark relation '{key}'; add relation_words.{key}=")
        words = relation_words[key]
        for template in scenarios[key][: limit or None]:
            subject, _, obj = (part.strip() for part in template.partition("{}"))
            out.append(EvalPrompt(id=f"{key}:{subject}|{obj}", text=template, readable=template.format(words),
                                  a=subject, b=obj, predicate=words, relation=key,
                                  swapped=f"{obj} {words} {subject}"))
    return out


def rrnet_pairs(relation: dict[str, Any]) -> list[EvalPrompt]:
    """The pair "A R B" / "B R A" of an RRNet run's relation (``relation.json`` of its export)."""
    missing = [k for k in ("A", "R", "B", "ARB", "BRA") if not relation.get(k)]
    if missing:
        raise ConfigError(f"prompts=rrnet_pairs needs the run's relation words; the export's relation has no "
                          f"{missing} (an imported official checkpoint?): use prompts=<file.json>")
    arb, bra = relation["ARB"], relation["BRA"]
    r = relation["R"]
    # on relworld the pair also carries its objects, so relworld's exact detector can score it
    world = relworld_pair_objects(relation) if relation.get("backbone") == "relworld" else None
    key, objects_arb, objects_bra = world if world is not None else (r, None, None)
    return [EvalPrompt(id=arb, text=arb, readable=arb, a=relation["A"], b=relation["B"], predicate=r,
                       relation=key, swapped=bra, order=0, objects=objects_arb),
            EvalPrompt(id=bra, text=bra, readable=bra, a=relation["B"], b=relation["A"], predicate=r,
                       relation=key, swapped=arb, order=1, objects=objects_bra)]


def relworld_pair_objects(relation: dict[str, Any]) -> Optional[tuple[str, dict, dict]]:
    """For an RRNet relation written by relworld's RRNet dataset ("a red square is above a blue
    circle", A = ``square``, R = ``above``, B = ``circle``): the relation key and the
    ``objects`` of its ARB and BRA prompts (``{"a": [shape, colour], "b": [shape, colour]}``),
    which relworld's detector reads. ``None`` for any other relation."""
    import re

    from relgen.data.shapes import COLOURS, RELATIONS

    key = next((k for k, r in RELATIONS.items() if r.word == relation.get("R")), None)
    if key is None:
        return None

    def colour_of(shape: str, text: str) -> Optional[str]:
        found = re.search(rf"\b(\w+) {re.escape(shape)}\b", text)
        return found.group(1) if found and found.group(1) in COLOURS else None

    a, b, arb = relation["A"], relation["B"], relation["ARB"]
    ca, cb = colour_of(a, arb), colour_of(b, arb)
    if ca is None or cb is None:
        return None
    return key, {"a": [a, ca], "b": [b, cb]}, {"a": [b, cb], "b": [a, ca]}


def relworld_relation(relation: str, pairs: int = RELWORLD_RELATION_PAIRS, seed: int = 0) -> list[EvalPrompt]:
    """Object-swapped pairs "a red square {} a blue circle" / "a blue circle {} a red square" in
    relworld's words for the relation a relworld run learnt (``{}`` takes the run's token; the base
    model reads the relation's phrase): relworld's datasets write their captions this way, and the
    prompts carry their objects, so the ``relworld`` metric scores them.

    Args:
        relation: The relation key (``inside``: what ``relworld_reversion`` teaches by default).
        pairs: Object pairs, each in both orders; two different shapes and colours, drawn with ``seed``.
        seed: Seed of the draw.
    """
    import numpy as np

    from relgen.relworld import world as rw

    spec = rw.WorldSpec()
    if relation not in spec.phrases:
        raise ConfigError(f"prompts=relworld_relation: '{relation}' is not a relworld relation; known: "
                          f"{sorted(spec.phrases)}")
    rng = np.random.default_rng(seed)
    phrase = spec.phrases[relation][0]
    out: list[EvalPrompt] = []
    seen: set = set()
    while len(seen) < pairs:
        sa, sb = (spec.shapes[i] for i in rng.choice(len(spec.shapes), 2, replace=False))
        ca, cb = (spec.colours[i] for i in rng.choice(len(spec.colours), 2, replace=False))
        a, b = (sa, ca), (sb, cb)
        if (a, b) in seen or (b, a) in seen:
            continue
        seen.add((a, b))
        for order, (x, y) in enumerate(((a, b), (b, a))):
            nx, ny = rw.object_name(x), rw.object_name(y)
            out.append(EvalPrompt(id=f"a {nx} {phrase} a {ny}", text=f"a {nx} {{}} a {ny}",
                                  readable=f"a {nx} {phrase} a {ny}", a=nx, b=ny, predicate=phrase, relation=relation,
                                  swapped=f"a {ny} {phrase} a {nx}", order=order,
                                  objects={"a": list(x), "b": list(y)}))
    return out


def run_relation(run_dir: Any) -> str:
    """The relation key a relworld run's data showed (``dataset.relations`` of its ``config.yaml``,
    else relworld's held-out relation, which its ReVersion data shows by default)."""
    from omegaconf import OmegaConf

    from relgen.relworld import world as rw

    path = Path(run_dir) / "config.yaml"
    relations = OmegaConf.select(OmegaConf.load(path), "dataset.relations") if path.is_file() else None
    return str(relations[0]) if relations else str(rw.WorldSpec().heldout_relation)


def load_prompt_file(path: str | Path) -> tuple[str, list[EvalPrompt]]:
    """Read a prompt file (schema in the module docstring); returns ``(name, prompts)``."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"prompts={path}: not a prompt set ({', '.join(PROMPT_SETS)}) and no such file")
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
    """``(name, prompts)`` of ``prompts=<spec>``."""
    if spec == "reversion_benchmark":
        return spec, reversion_benchmark(relation_words, relation, limit)
    if spec == "relworld_relation":
        if loaded_run is None:
            raise ConfigError("prompts=relworld_relation takes the relation of a relworld run: give run_dir=")
        return spec, relworld_relation(run_relation(loaded_run.run_dir))[: limit or None]
    if spec == "rrnet_pairs":
        rel = getattr(getattr(loaded_run, "artifact", None), "relation", None)
        if not isinstance(rel, dict):
            raise ConfigError("prompts=rrnet_pairs takes the relation of an RRNet run: give run_dir= of an RRNet run")
        return spec, rrnet_pairs(rel)
    name, prompts = load_prompt_file(spec)
    return name, prompts[: limit or None]
