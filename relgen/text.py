"""The one word splitter of prompts and captions, and whole-word search with it."""

from __future__ import annotations

import string
from typing import Sequence


def words(text: str) -> list[str]:
    """Lower-case words of ``text``: split on whitespace, punctuation stripped from both ends.

    DreamRelation's released phrase matcher (``get_phrase_idx``) also splits on whitespace, but
    compares case-sensitively and strips only one final ``.``, ``!``, ``?``, ``,`` or ``:``
    (it also accepts a prompt word containing ``-`` + the phrase word, which this rule does
    not). Apart from that hyphen case, every word the released matcher accepts is accepted here.
    """
    return [w.strip(string.punctuation).lower() for w in text.split()]


def find_words(haystack: Sequence[str], needle: Sequence[str]) -> int:
    """Index of the first occurrence of the word sequence ``needle`` in ``haystack``; -1 if none."""
    n = len(needle)
    if n == 0:
        return -1
    for i in range(len(haystack) - n + 1):
        if list(haystack[i:i + n]) == list(needle):
            return i
    return -1


def word_index(text: str, phrase: str) -> int:
    """Index (in :func:`words` of ``text``) of the first whole-word occurrence of ``phrase``; -1 if none."""
    return find_words(words(text), words(phrase))
