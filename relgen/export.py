"""Write a run's export folder: the method's files, ``relgen.json`` and a model card.

``export/`` is what a run hands on: the artifact in standard formats (see each method's
``export``) in files named after what they hold (``reversion-R.safetensors``, see
:mod:`relgen.names`), ``relgen.json`` (what ``relgen.load`` and ``relgen.generate`` read,
with each file's name under its role in ``files``) and
``README.md``, a model card in the layout of the Hugging Face hub's cards: what was trained on
which backbone and data, for how many steps, by which command, how to load it in diffusers,
and what the files do not contain. Intermediate exports (``method.export_every``) go to
``export/step-NNNNNN/`` with the same three parts and survive checkpoint rotation and the
final export.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

import relgen
from relgen.card import BASE_MODEL_KEY, EXPORT_PATH_KEY, FOLDER_KEY, base_model
from relgen.errors import write_error
from relgen.names import META_FILE
from relgen.registry import get_method

CARD_FILE = "README.md"
STEP_PREFIX = "step-"


def export_run(cfg: DictConfig, run_dir: Path, method, *, step: Optional[int] = None, final: bool = True,
               dataset: Optional[str] = None, command: Optional[str] = None) -> Path:
    """Write ``export/`` (or ``export/step-NNNNNN/`` when not ``final``) atomically.

    Args:
        cfg: The run's resolved config.
        run_dir: The run folder.
        method: Anything with ``export(folder)`` returning ``{role: path}`` or a list of paths
            (a trained method).
        step: The optimizer step the weights are from (in ``relgen.json`` and the card).
        final: ``True``: the run's ``export/``; ``False``: ``export/step-NNNNNN/`` for ``step``.
        dataset: How the card names the data (default: the dataset option's name).
        command: The command that made the weights (default: this process's command line).
    """
    run_dir = Path(run_dir)
    root = run_dir / "export"
    target = root if final else root / f"{STEP_PREFIX}{int(step):06d}"
    _recover_export(run_dir)
    tmp = run_dir / f".export.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        return _export_into(cfg, run_dir, method, tmp, root, target, final, step, dataset, command)
    except OSError as exc:  # the old export (if any) is untouched until the final swap
        shutil.rmtree(tmp, ignore_errors=True)

        raise write_error(exc, target, "export") from None


def _export_into(cfg: DictConfig, run_dir: Path, method, tmp: Path, root: Path, target: Path, final: bool,
                 step: Optional[int], dataset: Optional[str], command: Optional[str]) -> Path:
    """Write the export into ``tmp``, then publish it at ``target`` in one step: the old one and
    the new one are swapped, so a process killed at any moment leaves one of them, never none."""

    tmp.mkdir(parents=True)
    written = method.export(tmp)
    # {role: file name}: loaders find each file by its role (relgen.names.exported_file)
    if isinstance(written, dict):
        files = {str(role): Path(path).name for role, path in written.items()}
    else:
        files = {Path(path).name: Path(path).name for path in written}
    meta: dict[str, Any] = {
        "method": cfg.method.name,
        "backbone": OmegaConf.to_container(cfg.backbone, resolve=True),
        "method_config": OmegaConf.to_container(cfg.method, resolve=True),
        "dataset": dataset or cfg.dataset.name,
        "step": step,
        "cache_dir": cfg.cache_dir,
        "files": files,
        "command": command or _command_line(),
        "relgen_version": relgen.__version__,
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
    export_path = "export" if final else f"export/{target.name}"
    (tmp / CARD_FILE).write_text(model_card(meta, export_path, tmp), encoding="utf-8")
    if final and root.is_dir():  # keep the intermediate exports inside the new export/
        for sub in root.glob(f"{STEP_PREFIX}*"):
            if sub.is_dir():
                shutil.copytree(sub, tmp / sub.name)
    _sync_tree(tmp)
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        tmp.rename(target)
    elif exchange_paths(tmp, target):
        shutil.rmtree(tmp)  # now the old export
    else:
        # No atomic exchange on this system: move the old one aside first; a kill between the two
        # renames leaves it at .export.old-*, which the next export (or resume) puts back.
        old = run_dir / f".export.old-{os.getpid()}"
        target.rename(old)
        tmp.rename(target)
        shutil.rmtree(old)
    return target


def _command_line() -> str:
    argv = sys.argv[1:] if sys.argv and sys.argv[0] not in ("", "-c") else []
    module = "relgen" if sys.argv and sys.argv[0].endswith(("__main__.py", "relgen")) else Path(sys.argv[0]).name
    return " ".join(["python -m " + module if module == "relgen" else module, *argv]).strip()


def model_card(meta: dict, export_path: str = "export", folder: Optional[Path] = None) -> str:
    """The export's ``README.md`` (hub-style front matter, then the sections a user looks for).

    ``export_path``: the export folder as seen from the run folder (``export`` or
    ``export/step-NNNNNN``), which the card's code blocks are run from; ``folder``: where the
    export's files are being written (methods read their own files there for the examples).
    """

    backbone = meta["backbone"]
    base = base_model(backbone, meta.get("cache_dir"))
    meta = {**meta, EXPORT_PATH_KEY: export_path, BASE_MODEL_KEY: base, FOLDER_KEY: str(folder) if folder else None}
    source = backbone.get("pretrained") or f"tiny random weights ({backbone.get('tiny')}, seed {backbone.get('tiny_seed')})"
    revision = backbone.get("revision") or ("main" if backbone.get("pretrained") else "—")
    method_cls = get_method(meta["method"])
    usage_text, limits = method_cls.card_usage(meta)
    step = meta.get("step")
    lines = [
        "---",
        "library_name: diffusers",
        f"base_model: {base}",
        "tags: [relgen, text-to-image, " + meta["method"] + "]",
        "---",
        "",
        f"# {meta['method']} on {backbone.get('name')}",
        "",
        "| | |",
        "|---|---|",
        f"| method | `{meta['method']}` |",
        f"| backbone | `{backbone.get('name')}`: {source} (revision `{revision}`) |",
        f"| dataset | {meta.get('dataset')} |",
        f"| steps | {step if step is not None else '—'} |",
        f"| files | {', '.join(f'`{f}`' for f in _file_names(meta))} |",
        f"| made by | `{meta.get('command') or '—'}` |",
        f"| relgen | {meta.get('relgen_version')} |",
        "",
        "## Loading it in diffusers",
        "",
        "Each block below is a whole program: run it from the run folder (the one holding `export/`).",
        "",
        usage_text.strip(),
        "",
        "With relgen, `relgen.load(run_dir)` applies every part (and `python -m relgen.generate run_dir=...` "
        "renders with it).",
        "",
        "## What these files do not contain",
        "",
        *([f"- {line}" for line in limits] or ["- The backbone's own weights: load them from the backbone above."]),
        "",
    ]
    return "\n".join(lines)


def _file_names(meta: dict) -> list[str]:
    files = meta.get("files") or []
    return list(files.values()) if isinstance(files, dict) else list(files)  # a list: exports of older relgen


__all__ = ["CARD_FILE", "META_FILE", "export_run", "model_card"]


def _recover_export(run_dir: Path) -> None:
    """Put back an export moved aside by a replace that was killed half-way; drop stale temporaries."""
    final = run_dir / "export"
    olds = sorted(run_dir.glob(".export.old-*"))
    if not final.exists() and olds:
        olds.pop().rename(final)
    for stale in [*olds, *run_dir.glob(".export.tmp-*")]:
        shutil.rmtree(stale, ignore_errors=True)


def exchange_paths(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):  # kernel or filesystem without it
        return False
    raise OSError(err, os.strerror(err), str(b))


def current_umask() -> int:
    """The process's umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _sync_tree(folder: Path) -> None:
    """fsync every file of ``folder`` so a rename never publishes unwritten data, and give every
    file and folder the mode the umask asks for: writers that go through a temporary file
    (safetensors' ``save_file``) leave it ``0600``, which colleagues on a shared cluster cannot read."""
    mask = current_umask()
    for path in [folder, *folder.rglob("*")]:
        if path.is_symlink():
            continue
        want = (0o777 if path.is_dir() else 0o666) & ~mask
        if path.stat().st_mode & 0o777 != want:
            os.chmod(path, want)
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
