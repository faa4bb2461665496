"""relworld's own evaluation prompt set (``prompts=relworld_relation``): the relation a relworld
run learnt, on object-swapped pairs in relworld's words, with their objects for relworld's detector."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np
from omegaconf import OmegaConf

from relgen.errors import ConfigError
from relgen.evaluate.samples import EvalPrompt
from relgen.relworld import world as rw

#: ``relworld_relation``: object pairs per prompt set (each drawn in both orders).
RELWORLD_RELATION_PAIRS = 8


def relation_prompt_set(relation_words: dict[str, str], loaded_run: Any = None, relation: Optional[str] = None,
                        limit: Optional[int] = None) -> list[EvalPrompt]:
    """The registered prompt set ``relworld_relation``: the pairs of the relworld run ``loaded_run``."""
    if loaded_run is None:
        raise ConfigError("prompts=relworld_relation takes the relation of a relworld run: give run_dir=")
    return relworld_relation(run_relation(loaded_run.run_dir))[: limit or None]


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
    path = Path(run_dir) / "config.yaml"
    relations = OmegaConf.select(OmegaConf.load(path), "dataset.relations") if path.is_file() else None
    return str(relations[0]) if relations else str(rw.WorldSpec().heldout_relation)
