"""Reference images of the image-reference metrics (``clip_i``, ``dino``) when the prompts carry none.

A prompt file can name each entity's reference images. When no prompt does and a metric needs
them, the harness takes them from:

* ``eval.references=<folder>``: its sub-folders named after entity words hold those entities'
  references; images directly in the folder are references of the whole image, for every prompt;
* otherwise, for a run, the images of its training dataset (the run folder's ``config.yaml``
  names it), read by relgen's reader of the dataset's layout (:mod:`relgen.data.readers`):

  - DreamRelation layout (RelationBooth): each entity's concept images, for the prompt
    entities that name it;
  - RRNet layout: the object images of A and B (``<A>/``, ``<B>/``), likewise;
  - ReVersion layout (ReVersion, textual inversion): the exemplar images, references of the
    whole image for every prompt.

A prompt entity names a dataset entity when it is that word or holds it as a whole word
("red circle" names "circle"; the longest such name wins).
"""

from __future__ import annotations

import logging
import re
from dataclasses import replace
from pathlib import Path
from typing import Optional

from relgen.data.readers import WHOLE_IMAGE, reference_images
from relgen.data.registry import open_dataset
from relgen.errors import DataError, RelgenError
from relgen.evaluate.images import list_images
from relgen.evaluate.samples import EvalPrompt

log = logging.getLogger("relgen")


#: The config key that names reference images (``eval.references=<folder>``).
KEY = "eval.references"


def folder_references(folder: str | Path) -> dict[str, list[str]]:
    """Reference images of ``eval.references=<folder>``: ``{entity: paths}`` from sub-folders
    named after entities, and ``{WHOLE_IMAGE: paths}`` from images directly in the folder."""

    folder = Path(folder).expanduser()
    paths = list_images(folder, KEY)  # a missing or empty folder fails here, naming the key
    out: dict[str, list[str]] = {}
    for path in paths:
        parts = path.relative_to(folder).parts
        out.setdefault(WHOLE_IMAGE if len(parts) == 1 else parts[0], []).append(str(path))
    return out


def dataset_references(run_dir: str | Path, metrics: str = "clip_i/dino") -> dict[str, list[str]]:
    """Reference images of a run's training dataset: ``{entity: paths}`` (DreamRelation and
    RRNet layouts) or ``{WHOLE_IMAGE: paths}`` (ReVersion layout), paths in the reader's order.

    Raises:
        DataError: naming the run and ``eval.references=`` when the run names no dataset or its
            folder is missing or unreadable.
    """
    from omegaconf import OmegaConf

    run_dir = Path(run_dir).expanduser()
    where = f"run_dir={run_dir}: the prompts carry no reference images for {metrics}"
    config = run_dir / "config.yaml"
    if not config.is_file():
        raise DataError(f"{where}; the run has no config.yaml naming its dataset: give {KEY}=<folder of images>")
    cfg = OmegaConf.load(config)
    if "dataset" not in cfg or not cfg.dataset.get("name"):
        raise DataError(f"{where}; {config} names no dataset: give {KEY}=<folder of images>")

    def missing(root: Path) -> DataError:
        return DataError(f"{where}; its dataset folder {root} (dataset {cfg.dataset.name}) is missing: give "
                         f"{KEY}=<folder of images>")

    given = cfg.dataset.get("root")
    if given and not Path(str(given)).expanduser().exists():
        raise missing(Path(str(given)).expanduser())
    try:
        handle = open_dataset(cfg.dataset, cfg.get("cache_dir"))
    except RelgenError as exc:
        raise DataError(f"{where}; its dataset {cfg.dataset.name} cannot be opened ({exc}): give "
                        f"{KEY}=<folder of images>") from None
    if not handle.root.exists():  # a synthetic dataset written to another cache folder
        raise missing(handle.root)
    try:
        data = handle.reader(handle.root)
    except RelgenError as exc:
        raise DataError(f"{where}; its dataset {handle.root} cannot be read ({exc}): give "
                        f"{KEY}=<folder of images>") from None
    out = reference_images(handle.format, data)
    if out is None:
        raise DataError(f"{where}; dataset {handle.name} has the layout '{handle.format}', whose reference "
                        f"images are not known: give {KEY}=<folder of images>")
    return out


def _named(entity: str, names: list[str]) -> Optional[str]:
    """The reference entity that the prompt entity ``entity`` names (module docstring)."""
    text = entity.lower().strip()
    hits = [n for n in names if n != WHOLE_IMAGE and re.search(rf"(?<!\w){re.escape(n.lower().strip())}(?!\w)", text)]
    return max(hits, key=len) if hits else None


def attach_references(prompts: list[EvalPrompt], references: dict[str, list[str]]) -> list[EvalPrompt]:
    """``prompts`` with the references of their entities (and of the whole image) filled in."""
    names = sorted(references)
    out = []
    for prompt in prompts:
        refs: dict[str, list[str]] = {}
        for entity in (prompt.a, prompt.b):
            name = _named(entity, names)
            if name is not None and entity not in refs:
                refs[entity] = list(references[name])
        if references.get(WHOLE_IMAGE):
            refs[WHOLE_IMAGE] = list(references[WHOLE_IMAGE])
        out.append(replace(prompt, references=refs, reference_boxes={}))
    return out


def default_references(prompts: list[EvalPrompt], folder: Optional[str], run_dir: Optional[Path],
                       metrics: str = "clip_i/dino") -> list[EvalPrompt]:
    """The prompts with references for ``metrics``, which need them: unchanged when any prompt
    carries references; else from ``eval.references`` or the run's dataset (module docstring).
    Without either (an image folder scored on its own) the prompts stay as they are."""
    if any(p.references for p in prompts):
        return prompts
    if folder:
        references, source = folder_references(folder), f"{KEY}={folder}"
    elif run_dir is not None:
        references, source = dataset_references(run_dir, metrics), f"the dataset of run {run_dir}"
    else:
        return prompts
    out = attach_references(prompts, references)
    count = sum(len(v) for v in references.values())
    if not any(p.references for p in out):
        log.warning("relgen.evaluate: none of the prompts' entities is an entity of %s (%s): %s are not "
                    "applicable; give %s=<folder>", source, ", ".join(sorted(references)), metrics, KEY)
    else:
        log.info("relgen.evaluate: %s references: %d images of %s", metrics, count, source)
    return out


__all__ = ["KEY", "WHOLE_IMAGE", "attach_references", "dataset_references", "default_references",
           "folder_references"]
