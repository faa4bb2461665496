"""Image files: listing, loading into [-1, 1] tensors, and content digests.

Loading follows the released ReVersion and RRNet data code: convert to RGB, resize to the
target size without preserving the aspect ratio (no crop, no flip), and scale the pixels to
[-1, 1].
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from relgen.errors import ConfigError, DataError

#: File-name suffixes (lower case, with the dot) treated as images; matched case-insensitively.
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".tif", ".tiff", ".gif", ".webp"}
)

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


def one_line(text: object) -> str:
    """Collapse ``text`` onto a single line (error messages must be one line)."""
    return " ".join(str(text).split())


def natural_key(name: str) -> list[object]:
    """Sort key that orders embedded numbers by value: ``2.png`` before ``10.png``."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def is_image_file(path: str | Path) -> bool:
    """Whether ``path`` has one of :data:`IMAGE_EXTENSIONS` (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def list_images(folder: str | Path) -> list[Path]:
    """List the image files directly inside ``folder``.

    Hidden files (names starting with ``.``, such as macOS ``._1.jpg`` resource forks) and
    sub-folders are skipped.

    Args:
        folder: The folder to list.

    Returns:
        The image paths in natural order of their file names (``2.png`` before ``10.png``).

    Raises:
        DataError: If ``folder`` does not exist or is not a folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: image folder does not exist; create it and add the images")
    paths = [
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and is_image_file(p)
    ]
    return sorted(paths, key=lambda p: natural_key(p.name))


def _as_hw(size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, int):
        height = width = size
    else:
        height, width = (int(s) for s in size)
    if height <= 0 or width <= 0:
        raise ConfigError(f"image size must be positive, got {size}")
    return height, width


def open_rgb(path: str | Path) -> Image.Image:
    """Open and fully decode an image as RGB.

    Only the first frame of an animated GIF/WebP is used. An alpha channel is dropped (no
    compositing), as ``PIL.Image.convert("RGB")`` in the released ReVersion code does.

    Args:
        path: The image file.

    Returns:
        The decoded RGB image.

    Raises:
        DataError: If the file is missing or cannot be decoded, naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: image file does not exist; add it or remove what names it")
    try:
        with Image.open(path) as image:
            image.load()
            mode, fmt = image.mode, image.format
            if mode.startswith("I;16") or (mode == "I" and fmt == "PNG"):
                # 16-bit grey: PIL's convert("RGB") clips every value above 255 to white;
                # scale the full 16-bit range to 8 bits instead.
                grey = np.asarray(image).astype(np.float64) * (255.0 / 65535.0)
                grey = np.clip(np.rint(grey), 0, 255).astype(np.uint8)
                return Image.fromarray(grey, mode="L").convert("RGB")
            if mode in ("I", "F"):
                raise DataError(f"{path}: a {'32-bit integer' if mode == 'I' else 'floating-point'} "
                                f"{fmt or ''} image has no defined 8-bit colour range; save it as an 8- or "
                                "16-bit PNG or a JPEG")
            return image.convert("RGB")
    except DataError:
        raise
    except Exception as exc:  # PIL raises many types (OSError, ValueError, SyntaxError, ...)
        raise DataError(
            f"{path}: cannot be read as an image ({one_line(exc)}); replace or remove it"
        ) from exc


def image_paths(data: Any) -> list[Path]:
    """Every image file a dataset object refers to (dataclasses, lists, tuples, dicts of paths)."""
    found: dict[str, Path] = {}

    def walk(obj: Any) -> None:
        if isinstance(obj, Path):
            if is_image_file(obj):
                found.setdefault(str(obj), obj)
        elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            for f in dataclasses.fields(obj):
                walk(getattr(obj, f.name))
        elif isinstance(obj, (list, tuple)):
            for item in obj:
                walk(item)
        elif isinstance(obj, dict):
            for item in obj.values():
                walk(item)

    walk(data)
    return list(found.values())


#: An image this many times smaller or larger than the training resolution, or this far from
#: square, is reported before training (it is stretched or scaled to the training size).
EXTREME_SCALE = 8.0
EXTREME_ASPECT = 4.0


def check_images(paths: Sequence[Path], resolution: int, decode: bool) -> list[str]:
    """Warnings for images far from ``resolution`` or from square; ``decode``: also decode each
    one fully (a truncated JPEG, a text file named ``.jpg`` or a 0-byte PNG raises here).

    Raises:
        DataError: naming the first file that cannot be read.
    """
    warnings = []
    for path in paths:
        if decode:
            open_rgb(path)
        try:
            with Image.open(path) as image:  # the header only
                width, height = image.size
        except Exception as exc:
            raise DataError(f"{path}: cannot be read as an image ({one_line(exc)}); replace or remove it") from exc
        short, long = max(1, min(width, height)), max(width, height)
        what = []
        if long / short >= EXTREME_ASPECT:
            what.append(f"stretched from a {long / short:.0f}:1 aspect ratio")
        if resolution / short >= EXTREME_SCALE:
            what.append(f"upscaled {resolution / short:.0f}x")
        if long / resolution >= EXTREME_SCALE:
            what.append(f"downscaled {long / resolution:.0f}x")
        if what:
            warnings.append(f"{path}: {width}x{height} is far from the training size {resolution}x{resolution}; "
                            f"it is resized to {resolution}x{resolution} ({', '.join(what)}); crop or resize "
                            "it yourself if that is not what you want")
    return warnings


def load_image(
    path: str | Path, size: int | tuple[int, int], resample: str = "bicubic"
) -> torch.Tensor:
    """Load an image as a float tensor in [-1, 1].

    The image is converted to RGB and resized to ``size`` with a plain resize: the aspect
    ratio is not preserved and nothing is cropped or flipped, as in the released ReVersion
    (``center_crop`` off by default, ``flip_p=0``) and RRNet (``VaeImageProcessor.preprocess``
    at a fixed height and width) code.

    Args:
        path: The image file.
        size: Target size; an int for a square image or ``(height, width)``.
        resample: PIL resampling filter: ``nearest``, ``bilinear``, ``bicubic``, ``lanczos``,
            ``box`` or ``hamming``.

    Returns:
        ``torch.float32`` tensor of shape ``[3, height, width]`` with values in [-1, 1].

    Raises:
        DataError: If the file is missing or cannot be decoded.
        ConfigError: If ``size`` or ``resample`` is invalid.
    """
    height, width = _as_hw(size)
    if resample not in _RESAMPLE:
        raise ConfigError(
            f"unknown resample filter '{resample}'; use one of {', '.join(sorted(_RESAMPLE))}"
        )
    image = open_rgb(path)
    if image.size != (width, height):
        image = image.resize((width, height), resample=_RESAMPLE[resample])
    array = np.asarray(image, dtype=np.float32)  # [H, W, 3] in [0, 255]
    tensor = torch.from_numpy(array / 127.5 - 1.0).permute(2, 0, 1).contiguous()
    return tensor


def load_image_vae_processor(
    path: str | Path, size: int | tuple[int, int], resample: str = "lanczos", vae_scale_factor: int = 8
) -> torch.Tensor:
    """Load an image the way diffusers' ``VaeImageProcessor.preprocess(image, height, width)`` does.

    RRNet's released dataset code loads every exemplar through ``VaeImageProcessor.preprocess``
    at a fixed height and width (diffusers 0.18.0, whose ``resample`` default is ``"lanczos"``,
    as it still is in the pinned diffusers); this calls that processor on the decoded RGB image:
    a plain resize (no crop, no flip) to multiples of ``vae_scale_factor``, then [0, 1] -> [-1, 1].

    Args:
        path: The image file.
        size: Target size; an int for a square image or ``(height, width)``.
        resample: The processor's PIL resampling filter (``nearest``, ``bilinear``, ``bicubic``,
            ``lanczos``).
        vae_scale_factor: The processor's size multiple (the backbone's VAE downscale).

    Returns:
        ``torch.float32`` tensor of shape ``[3, height, width]`` with values in [-1, 1].

    Raises:
        DataError: If the file is missing or cannot be decoded.
        ConfigError: If ``size`` or ``resample`` is invalid.
    """
    from diffusers.image_processor import VaeImageProcessor
    from diffusers.utils import PIL_INTERPOLATION

    height, width = _as_hw(size)
    if resample not in PIL_INTERPOLATION:
        raise ConfigError(
            f"unknown resample filter '{resample}'; use one of {', '.join(sorted(PIL_INTERPOLATION))}"
        )
    processor = VaeImageProcessor(vae_scale_factor=vae_scale_factor, resample=resample)
    pixels = processor.preprocess(open_rgb(path), height=height, width=width)
    return pixels[0].float().contiguous()


def image_digest(path: str | Path) -> str:
    """SHA-256 hex digest of a file's bytes (used in cache keys).

    Args:
        path: The file.

    Returns:
        64 lower-case hex characters.

    Raises:
        DataError: If the file cannot be read.
    """
    path = Path(path)
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({one_line(exc)}); check that it exists") from exc
    return digest.hexdigest()
