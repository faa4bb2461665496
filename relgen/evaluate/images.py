"""Reading image files and folders for evaluation, with one-line errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from relgen.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def open_rgb(path: str | Path) -> Any:
    """The image at ``path`` as an RGB PIL image (loaded, file closed)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except FileNotFoundError:
        raise DataError(f"{path}: image not found") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"{path}: not a readable image ({exc})") from None


def list_images(folder: str | Path, key: str) -> list[Path]:
    """Image files directly in ``folder`` and below it, sorted; a folder without any is an
    error naming ``key`` (the option that pointed at it)."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DataError(f"{key}={folder}: not a folder")
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise DataError(f"{key}={folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in the folder")
    return paths
