"""The relworld datasets: scenes of :mod:`relgen.relworld.world` written in each method's official
layout (deterministic for ``dataset.seed``, cached), read by the same readers as real data."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from relgen.data.registry import synthetic_dataset
from relgen.errors import ConfigError
from relgen.registry import register_dataset


def _one_relation(dcfg) -> Optional[str]:
    """The single relation key of ``dataset.relations`` (None when empty: the writer's default)."""
    if len(dcfg.relations) > 1:
        raise ConfigError(f"dataset.relations for {dcfg.name} takes one relation key (e.g. ['inside']), "
                          f"got {list(dcfg.relations)}")
    return dcfg.relations[0] if dcfg.relations else None


def _write_relworld_reversion(root: Path, dcfg) -> None:
    from relgen.relworld.world import write_world_reversion

    write_world_reversion(root, seed=dcfg.seed, relation=_one_relation(dcfg), num_images=dcfg.num_images)


def _write_relworld_rrnet(root: Path, dcfg) -> None:
    from relgen.relworld.world import write_world_rrnet

    triples = None
    if dcfg.relations:
        triples = [tuple(r.split()) for r in dcfg.relations]
        if any(len(t) != 3 for t in triples):
            raise ConfigError(f"dataset.relations for {dcfg.name} must be 'shape relation shape' triples, "
                              f"e.g. ['square above circle'] (got {list(dcfg.relations)})")
    write_world_rrnet(root, seed=dcfg.seed, triples=triples, images_per_folder=max(2, dcfg.num_images // 2))


def _write_relworld_dreamrelation(root: Path, dcfg) -> None:
    from relgen.relworld.world import WorldSpec, write_world_dreamrelation

    words = (dcfg.identity or "").split()
    if len(words) == 2:  # "<colour> <shape>": a plain identity named by its class
        spec = WorldSpec()
        if words[0] not in spec.colours or words[1] not in spec.shapes:
            raise ConfigError(f"dataset.identity '{dcfg.identity}': write a plain identity as '<colour> <shape>' "
                              f"with a colour of {', '.join(spec.colours)} and a shape of {', '.join(spec.shapes)}")
        write_world_dreamrelation(root, seed=dcfg.seed, relation=_one_relation(dcfg), num_items=dcfg.num_items,
                                  plain_identity=(words[1], words[0]))
        return
    write_world_dreamrelation(root, seed=dcfg.seed, relation=_one_relation(dcfg), num_items=dcfg.num_items,
                              identity=dcfg.identity)



register_dataset("relworld_reversion", synthetic_dataset("reversion", "read_reversion_folder", _write_relworld_reversion),
                 summary="relworld exemplars of one relation (default: the held-out 'inside'), ReVersion layout")
register_dataset("relworld_rrnet", synthetic_dataset("rrnet", "read_rrnet_folder", _write_relworld_rrnet),
                 summary="relworld biased pairs the way round pretraining never shows, RRNet layout")
register_dataset("relworld_dreamrelation", synthetic_dataset("dreamrelation", "read_dreamrelation_folder",
                                                      _write_relworld_dreamrelation),
                 summary="relworld identity in a relation, with keypoints and masks, DreamRelation layout")
