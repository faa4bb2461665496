"""RelationBooth's checks of a composed config: they need no weights and no data, and run with
every other check before anything loads (:meth:`RelationBooth.check_config`)."""

from __future__ import annotations

from pathlib import Path

from relgen.data.transforms import BOX_FAR_EDGES
from relgen.errors import ConfigError
from relgen.hub import check_hub_source, looks_like_path


def check_config(cfg) -> list[str]:
    """Every RelationBooth check of the run config ``cfg``; returns the warnings."""
    check_values(cfg.method)
    check_box_far_edge(cfg)
    check_cal_layer_rule(cfg)
    check_method_paths(cfg)
    return check_local_tokens(cfg)


def check_values(cfg) -> None:
    """Crops, LoRA rank and the default box rows are in range (``cfg``: the method config)."""
    if not 0.0 <= cfg.crop_p <= 1.0:
        raise ConfigError(f"method.crop_p={cfg.crop_p} must be in [0, 1]")
    if cfg.num_crops < 1:
        raise ConfigError(f"method.num_crops={cfg.num_crops} must be at least 1")
    if len(cfg.crop_scale) != 2 or not 0 < cfg.crop_scale[0] <= cfg.crop_scale[1] <= 1:
        raise ConfigError(f"method.crop_scale={list(cfg.crop_scale)} must be [low, high] with 0 < low <= high <= 1")
    if cfg.rank < 1:
        raise ConfigError(f"method.rank={cfg.rank} must be at least 1")
    if len(cfg.default_box_y) != 2 or not 0 <= cfg.default_box_y[0] < cfg.default_box_y[1] <= 1:
        raise ConfigError(f"method.default_box_y={list(cfg.default_box_y)} must be [y0, y1] with 0 <= y0 < y1 <= 1")


def check_local_tokens(cfg) -> list[str]:
    """RelationBooth's local tokens without a CLIPSelf checkpoint are the plain-encoder variant: say so."""
    method = cfg.method
    if method.get("clipself_checkpoint") is not None:
        return []
    used = [key for key in ("local_tokens_train", "local_tokens_inference") if method.get(key)]
    if not used:
        return []
    return [f"method.{'/'.join(used)}=true without method.clipself_checkpoint: the local tokens come from the "
            "plain image encoder, not from DreamRelation's CLIPSelf encoder (set method.clipself_checkpoint=.../"
            "epoch_6.pt for the released tokens)"]


def check_box_far_edge(cfg) -> None:
    """``method.box_far_edge`` (RelationBooth) is one of :data:`relgen.data.transforms.BOX_FAR_EDGES`."""
    if cfg.method.box_far_edge not in BOX_FAR_EDGES:
        raise ConfigError(f"method.box_far_edge='{cfg.method.box_far_edge}' is not known; use one of "
                          f"{', '.join(BOX_FAR_EDGES)}")


def check_cal_layer_rule(cfg) -> None:
    """``method.cal_layer_rule`` (RelationBooth) is ``absolute`` or ``relative``, with a positive limit."""
    method = cfg.method
    if method.cal_layer_rule not in ("absolute", "relative"):
        raise ConfigError(f"method.cal_layer_rule='{method.cal_layer_rule}' is not known; use absolute (layers "
                          "with at most method.cal_max_queries queries) or relative (query-grid side at most "
                          "method.cal_max_side_fraction x the latent side)")
    if method.cal_layer_rule == "absolute" and method.cal_max_queries < 1:
        raise ConfigError(f"method.cal_max_queries={method.cal_max_queries} must be at least 1 (released: 1024)")
    if method.cal_layer_rule == "relative" and not 0 < method.cal_max_side_fraction <= 1:
        raise ConfigError(f"method.cal_max_side_fraction={method.cal_max_side_fraction} must be in (0, 1]")


def check_method_paths(cfg) -> None:
    """``method.ms_adapter`` and ``method.clipself_checkpoint`` are files; ``method.image_encoder``
    is a local folder or a hub id that is cached or reachable."""
    m = cfg.method
    for key in ("ms_adapter", "clipself_checkpoint"):
        value = m.get(key)
        if value and not Path(value).expanduser().is_file():
            raise ConfigError(f"method.{key}={value}: file not found; give the path of the file "
                              f"(or leave method.{key} unset)")
    encoder = m.get("image_encoder")
    if encoder:
        local = Path(encoder).expanduser()
        if local.exists() or looks_like_path(encoder):
            if not (local / "config.json").is_file():
                raise ConfigError(f"method.image_encoder={encoder}: not a transformers model folder (no config.json); "
                                  "point it at a CLIPVisionModelWithProjection folder or a hub id")
            return
        check_hub_source("method.image_encoder", encoder, None, "config.json",
                         hint="download it where there is network access, or set method.image_encoder= to a local folder")
