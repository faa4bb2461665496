"""RRNet's object-swapped prompt pair as an evaluation prompt set (``prompts=rrnet_pairs``)."""

from __future__ import annotations

import re
from typing import Any, Optional

from relgen.backbones import RELWORLD_BACKBONES
from relgen.data.shapes import COLOURS, RELATIONS
from relgen.errors import ConfigError
from relgen.evaluate.samples import EvalPrompt
from relgen.methods.rrnet.artifact import RRNetArtifact


def pair_prompt_set(relation_words: dict[str, str], loaded_run: Any = None, relation: Optional[str] = None,
                    limit: Optional[int] = None) -> list[EvalPrompt]:
    """The registered prompt set ``rrnet_pairs``: the pair of the RRNet run ``loaded_run``."""
    artifact = loaded_run.artifact if loaded_run is not None else None
    if not isinstance(artifact, RRNetArtifact) or not isinstance(artifact.relation, dict):
        raise ConfigError("prompts=rrnet_pairs takes the relation of an RRNet run: give run_dir= of an RRNet run")
    return rrnet_pairs(artifact.relation)


def rrnet_pairs(relation: dict[str, Any]) -> list[EvalPrompt]:
    """The pair "A R B" / "B R A" of an RRNet run's relation (``relation.json`` of its export)."""
    missing = [k for k in ("A", "R", "B", "ARB", "BRA") if not relation.get(k)]
    if missing:
        raise ConfigError(f"prompts=rrnet_pairs needs the run's relation words; the export's relation has no "
                          f"{missing} (an imported official checkpoint?): use prompts=<file.json>")
    arb, bra = relation["ARB"], relation["BRA"]
    r = relation["R"]
    # on relworld the pair also carries its objects, so relworld's exact detector can score it
    world = relworld_pair_objects(relation) if relation.get("backbone") in RELWORLD_BACKBONES else None
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
