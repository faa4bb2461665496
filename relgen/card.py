"""The python blocks of an export's model card: complete programs that run as written.

Each block loads the base model the run used (a hub id, a local diffusers folder, a single
checkpoint file, the relworld weights' real path, or for a tiny test backbone the folder it was
saved to), then the export, then makes one image. The paths of the export are relative to the
run folder (the one holding ``export/``), so a block runs from there wherever the run was
copied. A method's :meth:`~relgen.methods.base.Method.card_usage` writes the lines between the
base model and the image with :func:`program`; one block is one way of loading it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from omegaconf import OmegaConf

from relgen.config import BackboneConfig

#: Keys :func:`relgen.export.model_card` adds to the ``relgen.json`` content it gives ``card_usage``.
EXPORT_PATH_KEY = "card_export_path"
BASE_MODEL_KEY = "card_base_model"
FOLDER_KEY = "card_folder"


def export_json(meta: dict, name: str) -> dict:
    """A JSON file the method wrote into the export being carded (``{}`` when absent)."""
    folder = meta.get(FOLDER_KEY)
    path = Path(folder) / name if folder else None
    if path is None or not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def base_model(backbone: dict, cache_dir=None) -> str:
    """The base model as ``from_pretrained`` (or ``from_single_file``) reads it.

    A tiny backbone is the diffusers folder its seeded weights are saved to (built now if the
    cache lost it); ``pkg://<package>/<folder>`` is that folder's real path.
    """
    from relgen.backbones.loading import materialize_tiny, resolve_pretrained  # imports torch

    cfg = OmegaConf.merge(OmegaConf.structured(BackboneConfig), backbone)
    if cfg.tiny:
        return str(Path(materialize_tiny(cfg, cache_dir)).resolve())
    if not cfg.pretrained:
        return str(cfg.name)
    source = resolve_pretrained(cfg)
    local = Path(source).expanduser()
    return str(local.resolve()) if local.exists() else source


def export_ref(meta: dict, name: str = "") -> str:
    """``export/<name>`` (or ``export/step-NNNNNN/<name>``): a file of the export, from the run folder."""
    folder = meta.get(EXPORT_PATH_KEY) or "export"
    return f"{folder}/{name}" if name else folder


def load_run_line(meta: dict) -> str:
    """``run = relgen.load(".")`` for this export (``step=N`` for an intermediate one)."""
    folder = meta.get(EXPORT_PATH_KEY) or "export"
    step = f", step={int(meta['step'])}" if folder != "export" and meta.get("step") is not None else ""
    return f"run = relgen.load(\".\"{step})  # this run folder: reads {folder}/"


def generation_kwargs(meta: dict) -> str:
    """The keyword arguments relgen's own samples use (the backbone's steps, guidance and size)."""
    bb = meta.get("backbone") or {}
    res = int(bb.get("resolution") or 512)
    return (f"num_inference_steps={int(bb.get('inference_steps') or 50)}, "
            f"guidance_scale={float(bb.get('guidance_scale') or 7.5):g}, height={res}, width={res}")


def program(meta: dict, body: Sequence[str], imports: Sequence[str] = ()) -> str:
    """A fenced python block: imports, the base model, ``body`` (which sets ``image``), a save.

    ``body`` loads the export into ``pipe`` and makes ``image``; the block adds the rest.
    """
    bb = meta.get("backbone") or {}
    pipeline = "StableDiffusionXLPipeline" if bb.get("family") == "sdxl" else "StableDiffusionPipeline"
    base = meta.get(BASE_MODEL_KEY) or bb.get("pretrained") or bb.get("name")
    loader = "from_single_file" if str(base).endswith((".safetensors", ".ckpt")) else "from_pretrained"
    revision = f", revision=\"{bb['revision']}\"" if bb.get("revision") and loader == "from_pretrained" else ""
    lines = ["# run from the run folder (the one holding export/)", "import torch",
             f"from diffusers import {pipeline}", *imports, "",
             f"pipe = {pipeline}.{loader}(\"{base}\"{revision})  # the base model of the run",
             "pipe.to(\"cuda\" if torch.cuda.is_available() else \"cpu\")",
             *body,
             f"image.save(\"{meta.get('method', 'relgen')}-sample.png\")"]
    return "```python\n" + "\n".join(lines) + "\n```"


def python_blocks(card: str) -> list[str]:
    """The code of every fenced python block of a card, in order (what a reader copies)."""
    blocks, rest = [], card
    while "```python\n" in rest:
        rest = rest.split("```python\n", 1)[1]
        code, _, rest = rest.partition("```")
        blocks.append(code)
    return blocks


__all__ = ["base_model", "export_json", "export_ref", "generation_kwargs", "load_run_line", "program", "python_blocks"]
