"""RRNet's object-swapped prompt pair as an evaluation prompt set (``prompts=rrnet_pairs``)."""

from __future__ import annotations

from typing import Any, Optional

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
    return [EvalPrompt(id=arb, text=arb, readable=arb, a=relation["A"], b=relation["B"], predicate=r,
                       relation=r, swapped=bra, order=0),
            EvalPrompt(id=bra, text=bra, readable=bra, a=relation["B"], b=relation["A"], predicate=r,
                       relation=r, swapped=arb, order=1)]
