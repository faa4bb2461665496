"""ReVersion steering loss, row gathering and word-list data."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from relgen.errors import ConfigError
from relgen.methods.reversion.losses import gather_steering_rows, steering_loss
from relgen.methods.reversion.words import (
    excluded_token_ids,
    load_benchmark_scenarios,
    load_prepositions,
    load_stop_words,
    sample_positive_words,
    special_token_ids,
)

# ----------------------------------------------------------------------------------------------
# A tiny CLIP-style BPE tokenizer: 512 byte-level base symbols in CLIP's order, a few merges.
# ----------------------------------------------------------------------------------------------


def _byte_symbols() -> list[str]:
    """The 256 byte-level symbols in CLIP's order (printable ranges first, then the rest)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("\u00a1"), ord("\u00ac") + 1))
        + list(range(ord("\u00ae"), ord("\u00ff") + 1))
    )
    codes = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def _word_merges(word: str) -> list[tuple[str, str]]:
    """Left-to-right merges that turn ``word`` into the single token ``word</w>``."""
    merges = []
    for k in range(1, len(word)):
        right = word[k] + ("</w>" if k == len(word) - 1 else "")
        merges.append((word[:k], right))
    return merges


# "pebble" becomes two pieces, "peb" + "ble</w>"; the other words become one token each.
_MERGES = (
    _word_merges("cat")
    + _word_merges("stone")
    + _word_merges("the")
    + _word_merges("on")
    + [("p", "e"), ("pe", "b"), ("b", "l"), ("bl", "e</w>")]
)


def _write_tiny_tokenizer(directory: Path) -> None:
    base = _byte_symbols()
    tokens = base + [s + "</w>" for s in base]
    for left, right in _MERGES:
        merged = left + right
        if merged not in tokens:
            tokens.append(merged)
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    (directory / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in _MERGES]
    (directory / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("tiny_clip_tokenizer")
    _write_tiny_tokenizer(directory)
    return directory


def _load_tokenizer(directory: Path, pad_style: str):
    from transformers import CLIPTokenizer

    if pad_style == "eos":  # SD1.5 style: pad = EOS
        tok = CLIPTokenizer.from_pretrained(directory, pad_token="<|endoftext|>")
    else:  # SD2.x / SDXL second tokenizer style: pad = "!"
        tok = CLIPTokenizer.from_pretrained(directory, pad_token="!")
    tok.add_tokens(["<R>"])
    return tok


def _ids(tok, text: str, max_length: int = 16) -> list[int]:
    return tok(text, padding="max_length", max_length=max_length, truncation=True)["input_ids"]


def _index_table(vocab_size: int, dim: int = 3) -> torch.Tensor:
    """An embedding table whose row ``i`` is filled with the value ``i``, shape ``[V, D]``."""
    return torch.arange(vocab_size, dtype=torch.float32).unsqueeze(1).repeat(1, dim)


# ----------------------------------------------------------------------------------------------
# steering_loss
# ----------------------------------------------------------------------------------------------


def test_steering_loss_matches_hand_computed_value() -> None:
    anchor = torch.tensor([[1.0, 0.0]])
    positives = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    negatives = torch.tensor([[-1.0, 0.0]])
    tau = 0.5
    # cosines: positives 1 and 0, negative -1; logits = cosine / tau
    expected = math.log(math.exp(2.0) + math.exp(0.0) + math.exp(-2.0)) - math.log(
        math.exp(2.0) + math.exp(0.0)
    )
    loss = steering_loss(anchor, positives, negatives, tau)
    assert loss.dim() == 0
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    # A 1-D anchor gives the same value.
    assert steering_loss(anchor[0], positives, negatives, tau).item() == pytest.approx(expected, abs=1e-6)


def test_steering_loss_is_scale_invariant_and_only_anchor_gets_gradient() -> None:
    gen = torch.Generator().manual_seed(0)
    anchor = torch.randn(1, 8, generator=gen, requires_grad=True)
    positives = torch.randn(5, 8, generator=gen, requires_grad=True)
    negatives = torch.randn(7, 8, generator=gen, requires_grad=True)
    loss = steering_loss(anchor, positives, negatives, 0.07)
    scaled = steering_loss(anchor * 3.0, positives * 0.25, negatives * 11.0, 0.07)
    assert scaled.item() == pytest.approx(loss.item(), rel=1e-5, abs=1e-6)

    loss.backward()
    assert anchor.grad is not None and anchor.grad.abs().sum() > 0
    for leaf in (positives, negatives):
        assert leaf.grad is None or torch.count_nonzero(leaf.grad) == 0


def test_steering_loss_without_negatives_is_zero() -> None:
    anchor = torch.randn(1, 4, requires_grad=True)
    positives = torch.randn(3, 4)
    loss = steering_loss(anchor, positives, torch.empty(0, 4), 0.07)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(anchor.grad).all() and torch.count_nonzero(anchor.grad) == 0
    with pytest.raises(ValueError):
        steering_loss(anchor, torch.empty(0, 4), positives, 0.07)
    with pytest.raises(ValueError):
        steering_loss(anchor, positives, positives, 0.0)


# ----------------------------------------------------------------------------------------------
# gather_steering_rows with real tokenization
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pad_style", ["eos", "bang"])
def test_gather_steering_rows_drops_special_stop_and_relation_ids(
    tokenizer_dir: Path, pad_style: str
) -> None:
    tok = _load_tokenizer(tokenizer_dir, pad_style)
    r_id = tok.convert_tokens_to_ids("<R>")
    bos, eos, pad = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
    if pad_style == "eos":
        assert pad == eos
    else:
        assert tok.convert_ids_to_tokens(pad) == "!" and pad != eos
    special = special_token_ids(tok)
    assert special == {bos, eos, pad}
    excluded = excluded_token_ids(tok, extra_ids=[r_id])

    cat, stone, peb, ble = tok.convert_tokens_to_ids(["cat</w>", "stone</w>", "peb", "ble</w>"])
    assert tok("the pebble", add_special_tokens=False)["input_ids"][1:] == [peb, ble]
    captions = ["a cat <R> a stone", "the pebble <R> on the cat"]
    caption_ids = torch.tensor([_ids(tok, c) for c in captions])  # [2, 16]
    assert (caption_ids == pad).any()  # padding really is present

    positive_sentences = ["on above", "inside the"]
    positive_ids = torch.tensor([_ids(tok, s) for s in positive_sentences])  # [2, 16]
    expected_pos = [i for s in positive_sentences for i in tok(s, add_special_tokens=False)["input_ids"]]

    table = _index_table(len(tok))
    positives, negatives = gather_steering_rows(table, positive_ids, caption_ids, excluded, special)
    pos_ids = positives[:, 0].long().tolist()
    neg_ids = negatives[:, 0].long().tolist()

    # Pooled over the batch in order, duplicates kept.
    assert neg_ids == [cat, stone, peb, ble, cat]
    assert pos_ids == expected_pos
    forbidden = {bos, eos, pad, r_id}
    assert not forbidden & set(pos_ids)
    assert not forbidden & set(neg_ids)
    assert not excluded & set(neg_ids)
    word_ids = set(tok(" ".join(load_stop_words() + load_prepositions()), verbose=False)["input_ids"])
    assert not word_ids & set(neg_ids)
    if pad_style == "bang":
        assert tok.convert_tokens_to_ids("!") not in neg_ids

    # Special ids are filtered even when the excluded set leaves them out.
    _, negatives_bare = gather_steering_rows(table, positive_ids, caption_ids, {r_id}, special)
    assert not {bos, eos, pad} & set(negatives_bare[:, 0].long().tolist())


def test_excluded_token_ids_cover_sub_pieces_and_specials(tokenizer_dir: Path) -> None:
    tok = _load_tokenizer(tokenizer_dir, "bang")
    excluded = excluded_token_ids(tok, extra_ids=(12345,))
    the, on, a, th = tok.convert_tokens_to_ids(["the</w>", "on</w>", "a</w>", "th"])
    assert {the, on, a} <= excluded
    assert th in excluded  # a piece of the multi-piece stop word "these"
    assert {tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, 12345} <= excluded
    content = tok.convert_tokens_to_ids(["cat</w>", "stone</w>", "peb", "ble</w>"])
    assert not set(content) & excluded


def test_gradient_reaches_only_relation_row(tokenizer_dir: Path) -> None:
    tok = _load_tokenizer(tokenizer_dir, "eos")
    r_id = tok.convert_tokens_to_ids("<R>")
    special = special_token_ids(tok)
    excluded = excluded_token_ids(tok, extra_ids=[r_id])
    caption_ids = torch.tensor([_ids(tok, "a cat <R> a stone"), _ids(tok, "the pebble <R> on the cat")])
    gen = torch.Generator().manual_seed(3)
    sentences = [" ".join(sample_positive_words(4, gen)) for _ in range(2)]
    positive_ids = torch.tensor([_ids(tok, s, max_length=32) for s in sentences])

    torch.manual_seed(0)
    embedding = nn.Embedding(len(tok), 8)
    positives, negatives = gather_steering_rows(
        embedding.weight, positive_ids, caption_ids, excluded, special
    )
    assert negatives.shape[0] == 5 and positives.shape[0] >= 8
    loss = steering_loss(embedding.weight[r_id], positives, negatives, 0.07)
    loss.backward()
    rows = torch.nonzero(embedding.weight.grad.abs().sum(dim=1)).flatten().tolist()
    assert rows == [r_id]

    # Rows taken from the table with their graph attached are detached inside the loss too.
    embedding.weight.grad = None
    pos_keep = positive_ids.flatten()[~torch.isin(positive_ids.flatten(), torch.tensor(sorted(special)))]
    loss = steering_loss(embedding.weight[r_id], embedding.weight[pos_keep], embedding.weight[[3, 4]], 0.07)
    loss.backward()
    rows = torch.nonzero(embedding.weight.grad.abs().sum(dim=1)).flatten().tolist()
    assert rows == [r_id]


# ----------------------------------------------------------------------------------------------
# Word lists and scenarios
# ----------------------------------------------------------------------------------------------


def test_word_lists() -> None:
    prepositions = load_prepositions()
    assert len(prepositions) == 56 and len(set(prepositions)) == 56
    assert prepositions[:3] == ["aboard", "about", "above"]
    assert prepositions[-3:] == ["versus", "with", "within"]
    stop_words = load_stop_words()
    assert len(stop_words) == 127 and len(set(stop_words)) == 127
    assert stop_words[:4] == ["i", "me", "my", "myself"]
    assert stop_words[-2:] == ["should", "now"]
    assert all(w == w.strip() and w for w in prepositions + stop_words)


def test_benchmark_scenarios() -> None:
    scenarios = load_benchmark_scenarios()
    assert sorted(scenarios) == sorted(
        ["painted_on", "carved_by", "shake_hands", "hug", "back2back", "inside", "on", "hanging_from",
         "wrapped_in", "ride_on"]
    )
    for templates in scenarios.values():
        assert len(templates) == 100
        assert all(t.count("{}") == 1 for t in templates)
    painted = scenarios["painted_on"]
    assert "cat {} stone" in painted
    assert "Michael Jackson {} wall" in painted
    assert painted[0] == "guitar {} paper" and painted[1] == "guitar {} canvas"  # subject outer loop
    assert "cat {} cat" in scenarios["hug"]  # pairs of a word with itself included
    assert "swimming pool {} paper bag" in scenarios["inside"]
    # the released order of templates/benchmark_scenarios.py: first prompt, first of the second subject
    released_starts = {
        "painted_on": ("guitar {} paper", "cat {} paper"), "carved_by": ("swan {} apple", "horse {} apple"),
        "shake_hands": ("man {} man", "woman {} man"), "hug": ("man {} man", "woman {} man"),
        "back2back": ("man {} man", "woman {} man"), "inside": ("child {} box", "cat {} box"),
        "on": ("book {} book", "toy truck {} book"), "hanging_from": ("schoolbag {} ceiling", "bag {} ceiling"),
        "wrapped_in": ("man {} towel", "woman {} towel"), "ride_on": ("man {} bicycle", "woman {} bicycle"),
    }
    assert list(scenarios) == list(released_starts)
    assert {r: (t[0], t[10]) for r, t in scenarios.items()} == released_starts
    assert scenarios["carved_by"][:10] == ["swan {} " + o for o in (
        "apple", "carrot", "clay", "glass", "jade", "marble", "metal", "wood", "plastic", "paper")]


def _released_scenarios_file() -> Path | None:
    """The released lists in order (a JSON copy of templates/benchmark_scenarios.py), when present."""
    candidates = [Path(__file__).resolve().parents[3] / "shared" / "reference"]
    if os.environ.get("RELGEN_SAMPLES_DIR"):
        candidates.insert(0, Path(os.environ["RELGEN_SAMPLES_DIR"]).resolve().parent / "reference")
    for folder in candidates:
        if (folder / "reversion_benchmark_scenarios.json").is_file():
            return folder / "reversion_benchmark_scenarios.json"
    return None


def test_benchmark_scenarios_match_the_released_order() -> None:
    path = _released_scenarios_file()
    if path is None:
        pytest.skip("the released benchmark_scenarios reference copy is not available")
    released = json.loads(path.read_text())["inference_templates"]
    assert load_benchmark_scenarios() == released  # same relations, same 100 prompts, same order


def test_sample_positive_words() -> None:
    words = sample_positive_words(4, torch.Generator().manual_seed(2023))
    assert len(words) == 4 and len(set(words)) == 4
    assert set(words) <= set(load_prepositions())
    assert sample_positive_words(4, torch.Generator().manual_seed(2023)) == words
    gen = torch.Generator().manual_seed(2023)
    draws = {tuple(sample_positive_words(4, gen)) for _ in range(5)}
    assert len(draws) > 1  # the generator advances
    assert sample_positive_words(0, gen) == []
    with pytest.raises(ConfigError):
        sample_positive_words(57, gen)
