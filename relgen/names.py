"""Names of what relgen writes: portable file and folder names, and the exported artifacts' names.

* :func:`slug` - a name every shell and file system accepts (``"cat <R> stone"`` -> ``cat_R_stone``);
  image folders, grids and exported files are all named with it.
* :func:`export_file_name` - an exported file says what it holds, as files on the Hugging Face
  hub name their concept: ``<method>-<token or relation>[-<part>].safetensors``
  (``reversion-R.safetensors``, ``rrnet-place.safetensors``,
  ``relationbooth-hugging-lora.safetensors``).
* :func:`exported_file` - where a loader finds one: ``export/relgen.json`` records every file's
  name under its role (``"files": {"embeddings": "reversion-R.safetensors"}``), so no loader
  guesses a name; exports written before the names were recorded keep their old fixed names.

A lower layer than everything that writes or reads files (the generate command, the evaluation
harness, the methods' exports and loaders).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional

from relgen.errors import RelgenError

META_FILE = "relgen.json"  # in every export folder: what relgen.load reads

_WINDOWS_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)), *(f"lpt{i}" for i in range(1, 10))}


def slug(text: str, limit: int = 80, fallback: str = "prompt") -> str:
    """A file or folder name for ``text`` that every shell and file system accepts.

    Letters, digits, ``.``, ``_``, ``-`` and ``=`` are kept; every other run of characters
    (spaces, ``<``, ``>``, ``:``, quotes, slashes) becomes one ``_``, so ``"cat <R> stone"``
    gives ``cat_R_stone``. Nothing left, or a name Windows reserves (``con``): ``fallback``
    (``prompt``, ``prompt_con``).
    """
    name = re.sub(r"[<>]", "", str(text))  # "<R>" -> "R", not "_R_"
    name = re.sub(r"[^A-Za-z0-9._=-]+", "_", name).strip("._")[:limit].rstrip("._")
    if not name or name.lower().split(".")[0] in _WINDOWS_RESERVED:
        name = f"{fallback}_{name}" if name else fallback
    return name


def export_file_name(method: str, name: str, part: str = "", suffix: str = ".safetensors",
                     fallback: str = "artifact") -> str:
    """``<method>-<name>[-<part>]<suffix>``, with ``name`` made portable by :func:`slug`.

    Examples: ``export_file_name("reversion", "<R>") == "reversion-R.safetensors"``;
    ``export_file_name("relationbooth", "hugging", "lora") == "relationbooth-hugging-lora.safetensors"``.
    ``fallback`` stands in for a name with no portable character (a token ``<*>``).
    """
    return f"{method}-{slug(name, fallback=fallback)}{'-' + part if part else ''}{suffix}"


def recorded_files(export_dir: Path, meta: Optional[dict] = None) -> Optional[dict[str, str]]:
    """``{role: file name}`` from ``meta["files"]`` (``meta`` None or without it: ``relgen.json``).

    ``None`` for an export written before the names were recorded (its ``files`` is a list of
    the old fixed names) and for a folder without ``relgen.json``: their loaders read the old
    fixed names.
    """
    if meta is None or "files" not in meta:
        path = Path(export_dir) / META_FILE
        if not path.is_file():
            return None
        try:
            meta = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise RelgenError(f"{path}: invalid JSON ({exc})") from exc
    files = meta.get("files")
    return {str(k): str(v) for k, v in files.items()} if isinstance(files, dict) else None


def recorded_name(meta: dict, role: str, legacy: str) -> Optional[str]:
    """The name ``meta["files"]`` records for ``role``, without reading the disk (None: none).

    Older exports (``files`` a list of the fixed names): ``legacy`` when the list holds it.
    """
    files = meta.get("files")
    if isinstance(files, dict):
        return files.get(role)
    return legacy if isinstance(files, list) and legacy in files else None


def exported_file(export_dir: Path, meta: Optional[dict], role: str, legacy: str,
                  required: bool = True) -> Optional[Path]:
    """The path of the export's ``role`` file, by the name ``relgen.json`` records for it.

    Args:
        export_dir: The export folder.
        meta: Its ``relgen.json`` contents (None: read from the folder).
        role: The file's role (e.g. ``"embeddings"``, ``"lora"``).
        legacy: Its fixed name in exports that record no names (e.g. ``learned_embeds.safetensors``).
        required: When the names are recorded but not this role's: raise (True) or return None.

    Raises:
        RelgenError: naming ``relgen.json`` and the roles it records.
    """
    export_dir = Path(export_dir)
    files = recorded_files(export_dir, meta)
    if files is None:
        return export_dir / legacy
    if role in files:
        return export_dir / files[role]
    if required:
        raise RelgenError(f"{export_dir / META_FILE}: 'files' records no '{role}' file (only "
                          f"{', '.join(sorted(files)) or 'none'}); re-export the run")
    return None


__all__ = ["META_FILE", "export_file_name", "exported_file", "recorded_files", "recorded_name", "slug"]
