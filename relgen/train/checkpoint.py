"""Resumable checkpoints, written atomically.

A checkpoint is a folder ``checkpoints/step-<N>/`` holding ``state.pt`` (method state,
optimizer, LR scheduler, RNG states, step) and ``config.yaml`` (the resolved run config).
It is written under a temporary name and renamed into place, so a process killed at any
moment leaves the previous checkpoint intact; leftovers of killed writes are ignored.
Everything loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path
from typing import Any, Optional

import torch

from relgen.errors import RelgenError, write_error
from relgen.tensorfile import nonfinite_keys

_STEP_DIR = re.compile(r"^step-(\d+)$")


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir()
             if (m := _STEP_DIR.match(p.name)) and (p / "state.pt").is_file()]
    return [p for _, p in sorted(found)]


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "generator": generator.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuple(state["python"]))
    generator.set_state(state["generator"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(x):
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def nonfinite_tensors(obj: Any, prefix: str = "") -> list[str]:
    """Dotted names of the floating-point tensors in ``obj`` (nested dicts/lists) holding NaN or inf."""
    return nonfinite_keys(obj, prefix)


def oversized_tensors(obj: Any, max_abs: Optional[float], prefix: str = "") -> list[str]:
    """Dotted names of the floating-point tensors in ``obj`` with an entry whose magnitude exceeds
    ``max_abs`` (``trainer.max_abs_weight``; ``None``: none are)."""
    if max_abs is None:
        return []
    bad: list[str] = []
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point() and obj.numel() and float(obj.detach().abs().max()) > max_abs:
            bad.append(prefix or "tensor")
    elif isinstance(obj, dict):
        for key, value in obj.items():
            bad.extend(oversized_tensors(value, max_abs, f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            bad.extend(oversized_tensors(value, max_abs, f"{prefix}[{i}]"))
    return bad


def _write_payload(path: Path, payload: dict[str, Any]) -> None:
    with open(path, "wb") as f:
        torch.save(payload, f)
        f.flush()
        os.fsync(f.fileno())


def save_checkpoint(run_dir: Path, step: int, payload: dict[str, Any], config_yaml: str,
                    keep: int = 2) -> Path:
    """Write ``checkpoints/step-<step>`` atomically, then drop all but the newest ``keep``."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    tmp = root / f".step-{step:06d}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        (tmp / "config.yaml").write_text(config_yaml)
        _write_payload(tmp / "state.pt", payload)
    except OSError as exc:  # a full disk: the previous checkpoint stays the newest complete one
        shutil.rmtree(tmp, ignore_errors=True)
        raise write_error(exc, final, f"checkpoint of step {step}") from None
    if final.exists():  # re-saving the same step (e.g. after a resume): replace it
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(root)
    for old in checkpoint_dirs(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".step-*.tmp-*"):  # leftovers of killed writes, never a live writer's
        if stale != tmp and not _writer_alive(stale):
            shutil.rmtree(stale, ignore_errors=True)
    return final


def _writer_alive(tmp: Path) -> bool:
    """Whether the process named by a ``.step-N.tmp-<pid>`` folder is still running."""
    try:
        pid = int(tmp.name.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def find_checkpoint(run_dir: Path, resume: str) -> Path:
    """``resume=latest`` → the newest complete checkpoint of ``run_dir``; or an explicit folder."""
    if resume == "latest":
        found = checkpoint_dirs(run_dir)
        if not found:
            raise RelgenError(f"resume=latest: no checkpoint in {Path(run_dir) / 'checkpoints'}; "
                              "start without resume= or point resume= at a checkpoint folder")
        return found[-1]
    path = Path(resume).expanduser()
    if (path / "state.pt").is_file():
        return path
    found = checkpoint_dirs(path)
    if found:
        return found[-1]
    raise RelgenError(f"resume={resume}: not a checkpoint folder (no state.pt) nor a run folder with "
                      "checkpoints/step-*; use resume=latest or a checkpoint path")


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        return torch.load(Path(path) / "state.pt", map_location="cpu", weights_only=True)
    except Exception as exc:
        raise RelgenError(f"{Path(path) / 'state.pt'}: cannot be read as a relgen checkpoint ({exc}); "
                          "resume from an earlier checkpoint") from exc


def check_same_run(state: dict[str, Any], method: str, backbone: str, path: Path) -> None:
    """Refuse to resume a checkpoint of another method or backbone."""
    theirs = (state.get("method"), state.get("backbone"))
    if theirs != (method, backbone):
        raise RelgenError(f"{path}: checkpoint is from method={theirs[0]} backbone={theirs[1]}, "
                          f"but this run is method={method} backbone={backbone}; resume it with the "
                          "same method and backbone, or start a new run")


def latest_step(run_dir: Path) -> Optional[int]:
    found = checkpoint_dirs(run_dir)
    return int(_STEP_DIR.match(found[-1].name).group(1)) if found else None
