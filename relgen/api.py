"""Python API: ``relgen.load(run_dir)`` applies a finished run to your own pipeline.

    import relgen
    from diffusers import StableDiffusionPipeline
    run = relgen.load("outputs/reversion/sd15/.../2026-01-01_12-00-00")
    pipe = StableDiffusionPipeline.from_pretrained("runwayml/stable-diffusion-v1-5")
    run.apply(pipe)                                   # token rows / LoRA / graph network
    images = pipe(**run.pipeline_inputs(pipe, ["cat <R> stone"])).images
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from relgen.config import BackboneConfig
from relgen.errors import RelgenError
from relgen.names import META_FILE
from relgen.registry import get_method


@dataclass
class LoadedRun:
    """A run's exported artifact plus what is needed to rebuild its backbone.

    Attributes:
        run_dir: The run folder.
        meta: ``relgen.json`` of the export.
        artifact: The method's :class:`~relgen.plugin.Artifact`.
        export_dir: The export folder read (``export/`` or ``export/step-NNNNNN/``).
    """

    run_dir: Path
    meta: dict
    artifact: Any
    export_dir: Optional[Path] = None

    @property
    def method(self) -> str:
        return self.meta["method"]

    def apply(self, pipe) -> None:
        """Install the trained artifact into a diffusers pipeline (in place)."""
        self.artifact.apply(pipe)

    def pipeline_inputs(self, pipe, prompts: list[str], **options) -> dict:
        """Pipeline keyword arguments for ``prompts`` (prompt strings or edited embeddings)."""
        return self.artifact.pipeline_inputs(pipe, prompts, **options)

    def load_backbone(self, **overrides):
        """Load the backbone the run was trained on (overrides: e.g. ``pretrained=...``)."""
        from omegaconf import OmegaConf

        from relgen.backbones.loading import load_backbone

        cfg = OmegaConf.merge(OmegaConf.structured(BackboneConfig), self.meta["backbone"], overrides)
        return load_backbone(cfg, self.meta.get("cache_dir"))


def export_folder(run_dir: Path, step: Optional[int] = None) -> Path:
    """``<run_dir>/export``, or with ``step`` the intermediate export ``export/step-NNNNNN``."""
    export = Path(run_dir).expanduser() / "export"
    if step is None:
        return export
    folder = export / f"step-{int(step):06d}"
    if not folder.is_dir():
        steps = sorted(p.name for p in export.glob("step-*") if p.is_dir())
        raise RelgenError(f"{folder}: no export of step {int(step)}; this run has "
                          + (", ".join(steps) if steps else "no intermediate exports (set method.export_every=N "
                                                            "when training)"))
    return folder


def load(run_dir, export_dir: Optional[str] = None, step: Optional[int] = None) -> LoadedRun:
    """Read ``<run_dir>/export/relgen.json`` and the method's exported files.

    Args:
        run_dir: A finished run's folder (or one written by ``python -m relgen.import_official``).
        export_dir: Read this export folder instead of the run's.
        step: Read the intermediate export of that step (``export/step-NNNNNN/``, written every
            ``method.export_every`` steps) instead of the final one.
    """

    run_dir = Path(run_dir).expanduser()
    export = Path(export_dir) if export_dir else export_folder(run_dir, step)
    meta_path = export / META_FILE
    if not meta_path.is_file():
        raise RelgenError(f"{meta_path}: not found; run_dir= must be a finished relgen run "
                          "(its export/ folder is written at the end of training)")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise RelgenError(f"{meta_path}: invalid JSON ({exc})") from exc
    method_cls = get_method(meta["method"])
    return LoadedRun(run_dir, meta, method_cls.load_artifact(export, meta), export)
