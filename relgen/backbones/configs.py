"""What an artifact must fit, read from a backbone's config files alone (no weights load).

Used by importers of official checkpoints (:meth:`relgen.plugin.Method.import_official`) to
check a file against the backbone before anything is written.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from huggingface_hub import snapshot_download

from relgen.backbones import single_file
from relgen.backbones.loading import materialize_tiny, resolve_pretrained
from relgen.errors import RelgenError


def text_encoder_widths(bcfg, cache_dir: Optional[str] = None) -> Optional[list[int]]:
    """Token-embedding width of each text encoder, read from the configs (no weights are loaded).

    ``None`` when the configs are not on disk (a hub id that is not cached).
    """
    folder = config_folder(bcfg, cache_dir)
    if folder is None:
        return None
    subfolders = ["text_encoder"] + (["text_encoder_2"] if bcfg.family == "sdxl" else [])
    widths = []
    for sub in subfolders:
        path = folder / sub / "config.json"
        if not path.is_file():
            return None
        widths.append(int(json.loads(path.read_text())["hidden_size"]))
    return widths


def unet_cross_attention_dim(bcfg, cache_dir: Optional[str] = None) -> Optional[int]:
    folder = config_folder(bcfg, cache_dir)
    path = folder / "unet" / "config.json" if folder is not None else None
    if path is None or not path.is_file():
        return None
    return int(json.loads(path.read_text())["cross_attention_dim"])


def unet_skeleton(bcfg, cache_dir: Optional[str] = None):
    """The backbone's UNet built from its ``config.json`` on the ``meta`` device (no weights are read),
    to check an artifact's keys and shapes against; ``None`` when the config is not on disk."""
    folder = config_folder(bcfg, cache_dir)
    path = folder / "unet" / "config.json" if folder is not None else None
    if path is None or not path.is_file():
        return None
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    with init_empty_weights():
        return UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(str(path.parent)))


def config_folder(bcfg, cache_dir: Optional[str]) -> Optional[Path]:
    """The backbone's diffusers folder of configs (and tokenizers) on disk, without loading
    weights; ``None`` when it is not there (a hub id that is not cached)."""
    if bcfg.tiny:
        return materialize_tiny(bcfg, cache_dir)
    source = resolve_pretrained(bcfg)
    local = Path(source).expanduser()
    if local.is_dir():
        return local
    if local.suffix in (".safetensors", ".ckpt"):
        if bcfg.single_file_config:
            return Path(bcfg.single_file_config).expanduser()
        info = single_file.detect(local)
        return single_file.config_folder(info.architecture, info.prediction_type or bcfg.prediction_type)
    try:  # a hub id: its configs, if they are in the local cache
        return Path(snapshot_download(source, revision=bcfg.revision, allow_patterns=["*.json"],
                                      local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached: the widths are checked when the model loads
        return None


def check_width(file: Path, what: str, got: int, widths: Optional[list[int]], bcfg) -> None:
    if widths is not None and got != sum(widths):
        raise RelgenError(f"{file}: {what} is {got}-wide but backbone {bcfg.name}'s text encoders are "
                          f"{'+'.join(map(str, widths))}-wide; import it with the backbone it was trained on")
