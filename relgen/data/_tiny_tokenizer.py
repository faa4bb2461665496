"""A tiny CLIP BPE tokenizer written to disk, for offline tests and tiny backbones.

The vocabulary has the 512 byte-level base symbols in CLIP's order (each byte's character,
then the same characters with the ``</w>`` end-of-word marker), so nothing is ever unknown
and ``a</w>`` has id 320 as in the real CLIP vocabulary. Then come the merges that turn each
requested word into a single token ``word</w>``, and finally ``<|startoftext|>`` and
``<|endoftext|>``. Load the folder with ``transformers.CLIPTokenizer.from_pretrained(dir)``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterable

#: Words that are single tokens when no word list is given: common caption words, the
#: vocabulary of the synthetic shapes datasets, and the words of the official samples.
DEFAULT_WORDS: tuple[str, ...] = (
    # caption glue
    "a", "an", "the", "is", "are", "of", "and", "with", "in", "on", "to", "at", "by", "photo",
    "picture", "image", "top", "left", "right", "above", "below", "inside", "next", "under",
    "beside", "near", "behind", "front", "over",
    # shapes, colours and backgrounds of relgen.data.shapes
    "circle", "square", "triangle", "diamond", "cross", "star", "hexagon",
    "red", "green", "blue", "yellow", "purple", "orange", "pink", "cyan",
    # words of the official sample data and common relations
    "cat", "dog", "book", "bowl", "placed", "stone", "painted", "carved", "hug", "hugging",
    "shake", "shaking", "hands", "lion", "polar", "bear", "wolf", "leopard", "tiger", "man",
    "woman", "child", "rabbit", "panda", "contains", "beneath", "car", "bridge",
)

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"

# CLIP's pre-tokenizer splits text into runs of letters, single digits and runs of other
# non-space characters (after lower-casing); each run is one BPE "word".
_PRETOKEN = re.compile(r"[^\W\d_]+|\d|(?:[^\w\s]|_)+", re.UNICODE)


def bytes_to_unicode() -> dict[int, str]:
    """CLIP's (and GPT-2's) reversible map from the 256 byte values to printable characters.

    Printable Latin-1 bytes map to themselves; the others are shifted above 255.

    Returns:
        ``{byte: character}`` in CLIP's vocabulary order (iteration order of the dict).
    """
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, codes)}


def _symbols(word: str, byte_map: dict[int, str]) -> list[str]:
    chars = [byte_map[b] for b in word.encode("utf-8")]
    chars[-1] = chars[-1] + "</w>"
    return chars


def _apply_bpe(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Standard BPE: repeatedly merge the adjacent pair with the lowest rank."""
    symbols = list(symbols)
    while len(symbols) > 1:
        pairs = [(ranks.get((a, b)), i) for i, (a, b) in enumerate(zip(symbols, symbols[1:]))]
        ranked = [(r, i) for r, i in pairs if r is not None]
        if not ranked:
            break
        best_rank = min(r for r, _ in ranked)
        first, second = next((symbols[i], symbols[i + 1]) for r, i in ranked if r == best_rank)
        merged: list[str] = []
        i = 0
        while i < len(symbols):
            if i < len(symbols) - 1 and symbols[i] == first and symbols[i + 1] == second:
                merged.append(first + second)
                i += 2
            else:
                merged.append(symbols[i])
                i += 1
        symbols = merged
    return symbols


def tiny_clip_vocab(words: Iterable[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Build the vocabulary and merge list in memory.

    Merges are appended word by word. Each new merge ranks below every earlier one, so it
    never changes how an earlier word (already a single token) is split; for the current
    word, the first two symbols left after the existing merges are merged until one token
    remains.

    Args:
        words: Words to make single tokens; lower-cased and split the way CLIP's
            pre-tokenizer splits text (``"polar bear"`` gives ``polar`` and ``bear``).

    Returns:
        ``(vocab, merges)``: token -> id, and the ordered merge pairs.
    """
    byte_map = bytes_to_unicode()
    base = list(byte_map.values())
    vocab_list = base + [c + "</w>" for c in base]
    vocab = {token: i for i, token in enumerate(vocab_list)}
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    for text in words:
        for piece in _PRETOKEN.findall(text.lower()):
            symbols = _apply_bpe(_symbols(piece, byte_map), ranks)
            while len(symbols) > 1:
                pair = (symbols[0], symbols[1])
                ranks[pair] = len(merges)
                merges.append(pair)
                token = pair[0] + pair[1]
                if token not in vocab:
                    vocab[token] = len(vocab)
                symbols = _apply_bpe(symbols, {pair: 0})
    for special in (BOS_TOKEN, EOS_TOKEN):
        vocab[special] = len(vocab)
    return vocab, merges


def write_tiny_clip_tokenizer(
    directory: str | Path,
    words: Iterable[str] | None = None,
    *,
    pad_token: str = EOS_TOKEN,
    model_max_length: int = 77,
) -> None:
    """Write ``vocab.json``, ``merges.txt`` and ``tokenizer_config.json`` of a tiny CLIP tokenizer.

    Every listed word tokenizes to exactly one token ``word</w>``; any other text falls back
    to byte-level pieces, never to an unknown token.

    Args:
        directory: Output folder (created if needed).
        words: Words to make single tokens; ``None`` uses :data:`DEFAULT_WORDS`.
        pad_token: ``<|endoftext|>`` as SD1.5 and SDXL's first tokenizer, or ``"!"`` as SD2.x
            and SDXL's second tokenizer.
        model_max_length: The padded sequence length (77 for every CLIP text encoder).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab, merges = tiny_clip_vocab(DEFAULT_WORDS if words is None else words)
    with open(directory / "vocab.json", "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(directory / "merges.txt", "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for a, b in merges:
            f.write(f"{a} {b}\n")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": model_max_length,
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "unk_token": EOS_TOKEN,
        "pad_token": pad_token,
        "do_lower_case": True,
    }
    with open(directory / "tokenizer_config.json", "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
