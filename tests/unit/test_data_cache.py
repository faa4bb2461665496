"""cache_key and the atomic safetensors TensorCache."""

from __future__ import annotations

import os

import pytest
import torch

from relgen.data import cache as cache_module
from relgen.data.cache import TensorCache, cache_key


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(4, 8, 8, generator=g)
    latents[0, 0, 0] = float("nan")
    return {
        "latents": latents,
        "half": torch.randn(3, 5, generator=g).half(),
        "bf16": torch.randn(2, 2, generator=g).bfloat16(),
        "ids": torch.arange(7, dtype=torch.int64),
        "transposed": torch.randn(3, 4, generator=g).t(),  # non-contiguous
    }


def _bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))


def test_cache_key_is_stable_and_unambiguous():
    key = cache_key("latents", "sd15", 512, 0.18215, b"\x00\x01")
    assert key == cache_key("latents", "sd15", 512, 0.18215, b"\x00\x01")
    assert len(key) == 64 and all(c in "0123456789abcdef" for c in key)
    assert cache_key("ab", "c") != cache_key("a", "bc")
    variants = {cache_key(1), cache_key("1"), cache_key(1.0), cache_key(b"1"), cache_key(True)}
    assert len(variants) == 5
    assert cache_key() != cache_key("")
    with pytest.raises(TypeError):
        cache_key(["not", "allowed"])


def test_round_trip(tmp_path):
    cache = TensorCache(tmp_path / "cache")
    key = cache_key("round-trip")
    assert cache.get(key) is None and key not in cache
    tensors = _tensors()
    cache.put(key, tensors)
    assert key in cache
    loaded = cache.get(key)
    assert loaded.keys() == tensors.keys()
    for name, value in tensors.items():
        assert _bitwise_equal(loaded[name], value), name


def test_shared_storage_is_stored(tmp_path):
    cache = TensorCache(tmp_path)
    base = torch.arange(10.0)
    cache.put("shared", {"a": base[:5], "b": base[5:], "c": base})
    loaded = cache.get("shared")
    assert torch.equal(loaded["b"], torch.arange(5.0, 10.0)) and torch.equal(loaded["c"], base)


def test_same_key_returns_bitwise_same_tensors(tmp_path):
    cache = TensorCache(tmp_path)
    key = cache_key("computed", 1)
    calls = []

    def compute():
        calls.append(1)
        return _tensors()

    first = cache.get_or_compute(key, compute)
    second = cache.get_or_compute(key, compute)
    third = TensorCache(tmp_path).get(key)  # a new process would see the same
    assert len(calls) == 1
    for name in first:
        assert _bitwise_equal(first[name], second[name])
        assert _bitwise_equal(first[name], third[name])


def test_leftover_temp_file_is_ignored(tmp_path):
    cache = TensorCache(tmp_path)
    key = cache_key("temp")
    path = cache.path(key)
    path.parent.mkdir(parents=True)
    # what a writer killed before os.replace leaves behind
    leftover = path.parent / f".{key}.12345.deadbeef.tmp"
    leftover.write_bytes(b"partial safetensors header")
    assert cache.get(key) is None
    cache.put(key, {"x": torch.ones(2)})
    assert torch.equal(cache.get(key)["x"], torch.ones(2))
    assert leftover.exists()  # never read, never mistaken for the entry


def test_failed_write_leaves_no_entry_and_no_temp_file(tmp_path, monkeypatch):
    cache = TensorCache(tmp_path)
    key = cache_key("fails")

    def broken_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(cache_module.os, "fsync", broken_fsync)
    from relgen.errors import WriteError

    with pytest.raises(WriteError, match=r"\.safetensors: cannot write the cache entry \(disk full\)"):
        cache.put(key, {"x": torch.ones(3)})
    assert cache.get(key) is None
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_overwrite_is_atomic_replacement(tmp_path):
    cache = TensorCache(tmp_path)
    cache.put("k1", {"x": torch.zeros(2)})
    cache.put("k1", {"x": torch.ones(2)})
    assert torch.equal(cache.get("k1")["x"], torch.ones(2))
    assert [p.name for p in cache.path("k1").parent.iterdir()] == ["k1.safetensors"]


def test_damaged_entry_counts_as_missing(tmp_path):
    cache = TensorCache(tmp_path)
    cache.put("k2", {"x": torch.ones(2)})
    cache.path("k2").write_bytes(b"\x00garbage")
    assert cache.get("k2") is None
    assert torch.equal(cache.get_or_compute("k2", lambda: {"x": torch.full((2,), 3.0)})["x"],
                       torch.full((2,), 3.0))


@pytest.mark.parametrize("key", ["../escape", "a/b", "", ".hidden"])
def test_unsafe_keys_are_rejected(tmp_path, key):
    with pytest.raises(ValueError):
        TensorCache(tmp_path).path(key)
    assert not os.listdir(tmp_path)
