"""Reading trained tensors back: one line for a damaged file, and no NaN or inf let through.

Every loader of trained weights (a run's ``export/``, an imported official file, a file an
artifact applies later) goes through :func:`read_safetensors` / :func:`check_finite`, so a
truncated download, a half-copied export or weights that blew up during training are refused
where they enter, naming the file and the tensor, instead of rendering black images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch

from relgen.errors import RelgenError


def read_safetensors(path: Path, what: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors (on the CPU) and metadata of a ``.safetensors`` file, all finite.

    Args:
        path: The file.
        what: What it should hold, for the error line (``"exported embeddings"``).

    Raises:
        RelgenError: The file is missing, truncated or not a safetensors file, or a tensor holds
            NaN or infinite values.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise RelgenError(f"{path}: {what} not found; was the run finished?")
    try:
        with safe_open(str(path), "pt") as f:
            metadata = dict(f.metadata() or {})
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types for a damaged file
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RelgenError(f"{path}: cannot be read as {what} ({reason}); the file is damaged or incomplete "
                          "(a truncated copy or download): copy it again, or export the run again "
                          "(resume=latest in its folder)") from None
    check_finite(tensors, path, what)
    return tensors, metadata


def load_tensors(path: Path, what: str) -> dict[str, torch.Tensor]:
    """:func:`read_safetensors` without the metadata."""
    return read_safetensors(path, what)[0]


def nonfinite_keys(obj: Any, prefix: str = "") -> list[str]:
    """Dotted names of the floating-point tensors in ``obj`` (nested mappings and lists) that hold
    NaN or infinite values."""
    bad: list[str] = []
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point() and obj.numel() and not bool(torch.isfinite(obj).all()):
            bad.append(prefix or "tensor")
    elif isinstance(obj, Mapping):
        for key, value in obj.items():
            bad.extend(nonfinite_keys(value, f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            bad.extend(nonfinite_keys(value, f"{prefix}[{i}]"))
    return bad


def check_finite(tensors: Any, source: Any, what: str) -> None:
    """Refuse ``tensors`` (a tensor, or nested mappings/lists of them) holding NaN or inf.

    Raises:
        RelgenError: naming ``source``, the first bad tensor and how many there are.
    """
    bad = nonfinite_keys(tensors)
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise RelgenError(f"{source}: {what}: tensor '{bad[0]}'{more} holds NaN or infinite values, so it would "
                          "render black or noise; use weights from before training diverged (an earlier "
                          "checkpoint or export/step-NNNNNN/)")


__all__ = ["check_finite", "load_tensors", "nonfinite_keys", "read_safetensors"]
