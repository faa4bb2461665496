"""Atomic writes: a reader sees the whole file or folder, or none of it.

Every write goes to a hidden temporary next to its target (``.<name>.tmp-<pid>-<random>``,
so concurrent writers never share one), then :func:`os.replace` renames it into place. A
failed write removes its temporary and raises :class:`relgen.errors.WriteError` naming the
target and what to do about it, so nothing half-written is left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from relgen.errors import write_error

#: The marker in every temporary name; a leftover of a killed writer matches ``.*.tmp-*``.
TEMP_MARK = ".tmp-"


def temp_path(path: Path) -> Path:
    """A fresh hidden temporary beside ``path``."""
    path = Path(path)
    return path.parent / f".{path.name}{TEMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}"


def write_with(path: Path, write: Callable[[Path], Any], what: str = "file") -> Path:
    """Call ``write(tmp)`` to write a temporary, then rename it to ``path``; returns ``path``."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise write_error(exc, path, what) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_bytes(path: Path, data: bytes, what: str = "file") -> Path:
    return write_with(path, lambda tmp: tmp.write_bytes(data), what)


def write_text(path: Path, text: str, what: str = "file") -> Path:
    return write_with(path, lambda tmp: tmp.write_text(text), what)


def write_json(path: Path, obj: Any, what: str = "file", newline: bool = True, **dumps: Any) -> Path:
    """``json.dumps(obj, indent=2, **dumps)`` (and a final newline unless ``newline=False``)."""
    dumps.setdefault("indent", 2)
    return write_text(path, json.dumps(obj, **dumps) + ("\n" if newline else ""), what)


def save_image(path: Path, image: Any, what: str = "image", format: str = "PNG") -> Path:
    """Save a PIL image (PNG unless ``format`` says otherwise)."""
    return write_with(path, lambda tmp: image.save(tmp, format=format), what)


@contextlib.contextmanager
def folder(path: Path, what: str = "folder", temp: Optional[Path] = None) -> Iterator[Path]:
    """Fill a temporary folder inside the ``with`` block; it becomes ``path`` when the block
    ends without error (``path`` must not exist yet) and is removed otherwise. ``temp`` names
    the temporary when others must see the folder is being written (a stale one is replaced)."""
    path = Path(path)
    tmp = Path(temp) if temp is not None else temp_path(path)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise write_error(exc, path, what) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
