"""Import RRNet's official ``gat_<R>`` (a ``torch.save`` of the graph network's state).

    python -m relgen.import_official method=rrnet file=checkpoints/gat_placed backbone=sd21_base \\
        run_dir=runs/placed A=book R=placed B=bowl
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import save_file

from relgen.atomic import write_json
from relgen.backbones.configs import text_encoder_widths
from relgen.errors import RelgenError
from relgen.methods.rrnet.artifact import (
    FORMAT,
    FORMAT_VERSION,
    NETWORK_ROLE,
    RELATION_FILE,
    RELATION_ROLE,
    RRNetArtifact,
    gat_file_name,
)
from relgen.plugin import Exporter

#: ``relgen.import_official``'s extra options for RRNet: the relation's words and its two prompts.
OFFICIAL_WORDS = ("A", "R", "B", "ARB", "BRA")


def official_exporter(cfg, file: Path, words: dict) -> Exporter:
    """``relgen.import_official`` for RRNet: read ``gat_<R>`` at the backbone's text width (read
    from its configs), and return the function that writes ``rrnet-<relation>.safetensors`` and
    ``relation.json`` with the relation's words (``A``, ``R``, ``B``, ``ARB``, ``BRA``)."""
    widths = text_encoder_widths(cfg.backbone, cfg.cache_dir)
    width = sum(widths) if widths else (1024 if cfg.backbone.family == "sd" else 2048)
    m = cfg.method
    try:
        art = RRNetArtifact.from_official(file, width=width, hidden=m.hidden_size, heads=m.num_heads,
                                          scale=m.inference_scale, **words)
    except RelgenError as exc:
        message = str(exc) if str(file) in str(exc) else f"{file}: {exc}"
        got = _rrnet_input_width(file)
        if got is not None and got != width:  # the network's width follows the text encoders it was trained on
            message += (f"; the file's network takes {got}-wide text features and backbone {cfg.backbone.name}'s are "
                        f"{width}-wide: import it with the backbone it was trained on (RRNet's release: sd21_base)")
        raise RelgenError(message) from exc
    relation = {"format": FORMAT, "version": FORMAT_VERSION, "relation": m.relation or words.get("R"),
                **{k: words.get(k) for k in OFFICIAL_WORDS}, "in_dim": width, "out_dim": width, "hidden": m.hidden_size,
                "heads": m.num_heads, "eot_self_loops": False, "node_widths": widths or [width],
                "object_template": m.object_template, "scale": m.inference_scale,
                "grid_scales": list(m.grid_scales), "backbone": cfg.backbone.name, "source": str(file)}

    name = gat_file_name(relation, cfg.method.name)  # rrnet-<relation>.safetensors

    def export(out: Path) -> dict[str, Path]:
        tensors = {k: v.detach().cpu().contiguous() for k, v in art.gnn.state_dict().items()}
        save_file(tensors, str(out / name), metadata={"format": FORMAT})
        write_json(out / RELATION_FILE, relation)
        return {NETWORK_ROLE: out / name, RELATION_ROLE: out / RELATION_FILE}

    return export


def _rrnet_input_width(file: Path) -> Optional[int]:
    """The input width of a ``gat_<R>`` file's first graph layer (``None`` if it cannot be read)."""
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
        return int(state["conv1.mods.link_oe.fc.weight"].shape[1])
    except Exception:  # noqa: BLE001 - only a hint for an error that is already being raised
        return None
