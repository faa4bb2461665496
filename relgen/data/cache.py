"""A content-keyed on-disk cache of tensor dicts (VAE latents, text embeddings).

Entries are safetensors files written to a temporary file in the same folder and moved into
place with :func:`os.replace`, so a reader sees either the whole entry or none of it, even if
the writer is killed. Leftover temporary files are never read.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import struct
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file
from safetensors.torch import save as save_bytes

from relgen import atomic

logger = logging.getLogger(__name__)

_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_SUFFIX = ".safetensors"


def cache_key(*parts: str | bytes | int | float) -> str:
    """SHA-256 hex digest identifying a cache entry.

    Each part is hashed with a type tag and its length, so the parts cannot run into each
    other: ``cache_key("ab", "c") != cache_key("a", "bc")`` and ``cache_key(1) !=
    cache_key("1") != cache_key(1.0)``. Floats are hashed by their exact ``repr``.

    Args:
        *parts: Strings (e.g. a model id, an image digest), bytes, ints or floats (e.g. a
            resolution).

    Returns:
        64 lower-case hex characters.

    Raises:
        TypeError: For a part of another type.
    """
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, bool):
            tag, data = b"?", b"1" if part else b"0"
        elif isinstance(part, int):
            tag, data = b"i", str(part).encode()
        elif isinstance(part, float):
            tag, data = b"f", repr(part).encode()
        elif isinstance(part, str):
            tag, data = b"s", part.encode("utf-8")
        elif isinstance(part, (bytes, bytearray, memoryview)):
            tag, data = b"b", bytes(part)
        else:
            raise TypeError(
                f"cache_key parts must be str, bytes, int or float, got {type(part).__name__}"
            )
        digest.update(tag + struct.pack("<Q", len(data)) + data)
    return digest.hexdigest()


class TensorCache:
    """Tensor dicts stored as ``<root>/<key[:2]>/<key>.safetensors``.

    Args:
        root: The cache folder (created on the first write).

    Example:
        >>> cache = TensorCache(run_dir / "cache")
        >>> key = cache_key("latents", model_id, image_digest(path), 512)
        >>> latents = cache.get_or_compute(key, lambda: {"latents": vae_encode(path)})["latents"]
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def path(self, key: str) -> Path:
        """The file that holds ``key``'s entry.

        Raises:
            ValueError: If ``key`` is not a safe file name (letters, digits, ``_.-``).
        """
        if not isinstance(key, str) or not _KEY.match(key):
            raise ValueError(f"cache key must be letters, digits, '_', '.' or '-', got {key!r}")
        return self.root / key[:2] / f"{key}{_SUFFIX}"

    def get(self, key: str) -> dict[str, torch.Tensor] | None:
        """The stored tensors for ``key`` (on the CPU), or ``None`` if there are none.

        An unreadable entry (damaged on disk) counts as missing and is logged; the next
        :meth:`put` replaces it.
        """
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            return load_file(path, device="cpu")
        except Exception as exc:  # safetensors raises its own error types for bad files
            logger.warning("ignoring unreadable cache entry %s (%s)", path, exc)
            return None

    def put(self, key: str, tensors: dict[str, torch.Tensor]) -> None:
        """Store ``tensors`` under ``key`` atomically (temporary file, fsync, then ``os.replace``).

        Tensors are copied to the CPU first; they may be non-contiguous or share storage.
        """
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # clone: safetensors refuses tensors that share storage
        data = save_bytes(
            {name: t.detach().to("cpu").contiguous().clone() for name, t in tensors.items()}
        )
        atomic.write_with(path, lambda tmp: _write_synced(tmp, data), "cache entry")

    def get_or_compute(
        self, key: str, fn: Callable[[], dict[str, torch.Tensor]]
    ) -> dict[str, torch.Tensor]:
        """Return the entry for ``key``, computing and storing it with ``fn()`` on a miss.

        On a miss the stored entry is read back, so a hit and a miss return bitwise the same
        CPU tensors.
        """
        cached = self.get(key)
        if cached is not None:
            return cached
        self.put(key, fn())
        stored = self.get(key)
        if stored is None:  # pragma: no cover - only if the file vanished right after writing
            raise OSError(f"{self.path(key)}: cache entry disappeared right after it was written")
        return stored

    def __contains__(self, key: str) -> bool:
        return self.path(key).is_file()


def _write_synced(path: Path, data: bytes) -> None:
    """Write ``data`` and flush it to the disk before it is renamed into place."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


__all__ = ["TensorCache", "cache_key"]

