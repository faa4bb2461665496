"""Word lists of ReVersion and the token ids they exclude from the steering loss.

The lists ship as package data in ``relgen/methods/reversion/data`` (see ``PROVENANCE.md`` there):

* ``prepositions.txt``: the 56 prepositions that are the positive words of the steering loss;
* ``stop_words.txt``: the classic 127-word NLTK English stop-word list;
* ``benchmark_scenarios.json``: the 10 benchmark relations, each with 10 subjects and 10 objects.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from importlib import resources
from typing import Any

import torch

from relgen.errors import ConfigError, DataError

_PACKAGE = "relgen.methods.reversion"
_DATA_DIR = "data"


def _read_data_text(name: str) -> str:
    """Read one package data file as UTF-8 text.

    Args:
        name: File name inside the package's ``data`` folder.

    Returns:
        The file's text.

    Raises:
        DataError: If the file is missing from the installed package.
    """
    path = resources.files(_PACKAGE).joinpath(_DATA_DIR).joinpath(name)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise DataError(
            f"package data file {_PACKAGE}/{_DATA_DIR}/{name} is missing; reinstall relgen "
            "so that relgen/methods/reversion/data/* is shipped with it"
        ) from exc


def _read_word_list(name: str) -> tuple[str, ...]:
    """Read a one-word-per-line data file, skipping blank lines.

    Args:
        name: File name inside the package's ``data`` folder.

    Returns:
        The stripped, non-empty lines in file order.
    """
    return tuple(line.strip() for line in _read_data_text(name).splitlines() if line.strip())


@functools.lru_cache(maxsize=None)
def _prepositions() -> tuple[str, ...]:
    return _read_word_list("prepositions.txt")


@functools.lru_cache(maxsize=None)
def _stop_words() -> tuple[str, ...]:
    return _read_word_list("stop_words.txt")


@functools.lru_cache(maxsize=None)
def _scenarios() -> dict[str, tuple[str, ...]]:
    name = "benchmark_scenarios.json"
    try:
        raw: Any = json.loads(_read_data_text(name))
    except json.JSONDecodeError as exc:
        raise DataError(f"package data file {name} is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise DataError(f"package data file {name} must hold a JSON object relation -> entry")
    scenarios: dict[str, tuple[str, ...]] = {}
    for relation, entry in raw.items():
        subjects = entry.get("subjects") if isinstance(entry, dict) else None
        objects = entry.get("objects") if isinstance(entry, dict) else None
        if not isinstance(subjects, list) or not isinstance(objects, list):
            raise DataError(
                f"package data file {name}: relation {relation!r} needs 'subjects' and 'objects' lists"
            )
        # Subject in the outer loop, pairs of a word with itself included.
        scenarios[relation] = tuple(f"{subject} {{}} {obj}" for subject in subjects for obj in objects)
    return scenarios


def load_prepositions() -> list[str]:
    """Return ReVersion's 56 prepositions, the positive words of the steering loss.

    Returns:
        The prepositions in their published order (a fresh list the caller may modify).
    """
    return list(_prepositions())


def load_stop_words() -> list[str]:
    """Return the classic 127-word NLTK English stop-word list.

    Returns:
        The stop words in NLTK's order (a fresh list the caller may modify).
    """
    return list(_stop_words())


def load_benchmark_scenarios() -> dict[str, list[str]]:
    """Return ReVersion's benchmark prompt templates.

    Each relation has 10 subjects and 10 objects; its templates are ``"subject {} object"`` for every
    pair, with the subject in the outer loop (100 templates per relation), in the order of ReVersion's
    released ``templates/benchmark_scenarios.py`` (so ``limit=N`` renders its first N). ``{}`` is where the relation
    token goes, e.g. ``template.format("<R>")``.

    Returns:
        Mapping relation name -> list of 100 prompt templates, each containing one ``{}``.
    """
    return {relation: list(templates) for relation, templates in _scenarios().items()}


def special_token_ids(tokenizer: Any) -> set[int]:
    """Return the tokenizer's BOS, EOS and pad ids (those that are set).

    The pad id is included on its own because it is not always EOS: SD1.5 pads with EOS, while the
    SD2.x tokenizer and SDXL's second tokenizer pad with ``"!"`` (id 0).

    Args:
        tokenizer: A Hugging Face tokenizer.

    Returns:
        The set of special ids, without ``None`` entries.
    """
    ids = (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    return {int(i) for i in ids if i is not None}


def excluded_token_ids(tokenizer: Any, extra_ids: Iterable[int] = ()) -> set[int]:
    """Return the token ids that never count as steering-loss negatives.

    The stop words and the prepositions are joined with spaces and tokenized as one string, so
    every sub-word piece of a word that splits into several tokens is excluded as well. The
    tokenizer's BOS, EOS and pad ids are added explicitly (the pad id is not EOS for SD2.x-style
    tokenizers), and so are ``extra_ids`` (typically the ids of the relation token ``<R>``).

    Args:
        tokenizer: A Hugging Face tokenizer (callable on a string, with ``bos_token_id``,
            ``eos_token_id`` and ``pad_token_id``).
        extra_ids: Further ids to exclude.

    Returns:
        The set of excluded token ids.
    """
    # as ReVersion's released train.py: one string of stop words + prepositions, special tokens on
    text = " ".join(load_stop_words() + load_prepositions())
    encoded = tokenizer(text, add_special_tokens=True, truncation=False, verbose=False)
    excluded = {int(i) for i in encoded["input_ids"]}
    excluded |= special_token_ids(tokenizer)
    excluded |= {int(i) for i in extra_ids}
    return excluded


def sample_positive_words(num_positives: int, generator: torch.Generator) -> list[str]:
    """Draw positive words from the prepositions without replacement.

    The draw uses ``torch.randperm`` with ``generator``, so a checkpointed generator reproduces it.
    ReVersion joins the drawn words with spaces into one positive sentence.

    Args:
        num_positives: Number of distinct prepositions to draw, 0 to 56.
        generator: The ``torch.Generator`` that controls the draw (its device is used).

    Returns:
        ``num_positives`` distinct prepositions, in drawn order.

    Raises:
        ConfigError: If ``num_positives`` is negative or larger than the number of prepositions.
    """
    words = _prepositions()
    if not 0 <= num_positives <= len(words):
        raise ConfigError(
            f"num_positives must be between 0 and {len(words)} (the number of prepositions), "
            f"got {num_positives}"
        )
    order = torch.randperm(len(words), generator=generator, device=generator.device)[:num_positives]
    return [words[i] for i in order.tolist()]
