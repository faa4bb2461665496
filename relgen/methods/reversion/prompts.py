"""ReVersion's benchmark as an evaluation prompt set (``prompts=reversion_benchmark``)."""

from __future__ import annotations

from typing import Any, Optional

from relgen.errors import ConfigError
from relgen.evaluate.samples import EvalPrompt
from relgen.methods.reversion.words import load_benchmark_scenarios


def benchmark_prompt_set(relation_words: dict[str, str], loaded_run: Any = None, relation: Optional[str] = None,
                         limit: Optional[int] = None) -> list[EvalPrompt]:
    """The registered prompt set ``reversion_benchmark`` (any run, or none)."""
    return reversion_benchmark(relation_words, relation, limit)


def reversion_benchmark(relation_words: dict[str, str], relation: Optional[str] = None,
                        limit: Optional[int] = None) -> list[EvalPrompt]:
    """ReVersion's benchmark scenarios as evaluation prompts.

    Args:
        relation_words: The words of each benchmark relation ("painted_on" -> "painted on").
        relation: Only this relation; ``None``: all ten.
        limit: Keep the first ``limit`` scenarios of each relation.
    """
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
