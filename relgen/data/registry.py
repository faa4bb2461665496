"""Built-in datasets: the three official layouts and their synthetic ``shapes_*`` twins.

A dataset option resolves to a :class:`DatasetHandle` that knows its format and what it
provides before anything is read, so incompatible method/dataset pairs fail at once.
The synthetic generators write the official layout into the cache folder (once per seed and
arguments) and then go through the same reader as real data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from relgen.errors import ConfigError, DataError
from relgen.registry import get_dataset, register_dataset

PROVIDES = {
    "reversion": frozenset({"images", "captions"}),
    "rrnet": frozenset({"images", "object_images", "relation_prompts"}),
    "dreamrelation": frozenset({"images", "captions", "keypoints", "masks", "references", "predicate"}),
}


#: How :meth:`DatasetHandle.describe` counts each layout's data: ``data -> (count, noun)``.
_COUNTS: dict[str, Callable[[Any], tuple[int, str]]] = {
    "reversion": lambda data: (len(data.items), "images"),
    "rrnet": lambda data: (len(data), "relations"),
    "dreamrelation": lambda data: (len(data), "items"),
}


@dataclass
class DatasetHandle:
    name: str
    format: str
    root: Path
    reader: Callable[[Path], Any]
    prepare: Optional[Callable[[], None]] = None  # writes synthetic data when needed

    @property
    def provides(self) -> frozenset[str]:
        return PROVIDES[self.format]

    def load(self) -> Any:
        if self.prepare is not None:
            self.prepare()
        return self.reader(self.root)

    def describe(self, data: Any) -> str:
        count, what = _COUNTS.get(self.format, _COUNTS["dreamrelation"])(data)
        return f"{count} {what} in {self.root}"


def open_dataset(dcfg, cache_dir: Optional[str] = None) -> DatasetHandle:
    return get_dataset(dcfg.name)(dcfg, cache_dir)


def _folder(fmt: str, reader_name: str):
    def opener(dcfg, cache_dir=None) -> DatasetHandle:
        from relgen.data import readers

        if not dcfg.root:
            raise ConfigError(f"dataset {dcfg.name}: set dataset.root= to the dataset folder")
        root = Path(str(dcfg.root)).expanduser()
        if not root.exists():
            raise DataError(f"{root}: dataset folder does not exist; fix dataset.root=")
        return DatasetHandle(dcfg.name, fmt, root, getattr(readers, reader_name))
    return opener


def synthetic_dataset(fmt: str, reader_name: str, writer: Callable[[Path, Any], None]):
    def opener(dcfg, cache_dir=None) -> DatasetHandle:
        from relgen.backbones.base import cache_root
        from relgen.data import readers
        from relgen.data.cache import cache_key

        if dcfg.root:
            root = Path(str(dcfg.root)).expanduser()
        else:
            # the identity only when set, so the folders of datasets without one keep their names
            key = cache_key(dcfg.name, dcfg.seed, dcfg.size, ",".join(dcfg.relations), dcfg.num_images,
                            dcfg.num_items, *([dcfg.identity] if dcfg.identity else []))[:16]
            root = cache_root(cache_dir) / "datasets" / f"{dcfg.name}-{key}"
        return DatasetHandle(dcfg.name, fmt, root, getattr(readers, reader_name),
                             prepare=lambda: writer(root, dcfg))
    return opener


def _write_reversion(root: Path, dcfg) -> None:
    from relgen.data.shapes import write_shapes_reversion

    kw = {"relation": dcfg.relations[0]} if dcfg.relations else {}
    write_shapes_reversion(root, seed=dcfg.seed, num_images=dcfg.num_images, size=dcfg.size, **kw)


def _write_rrnet(root: Path, dcfg) -> None:
    from relgen.data.shapes import write_shapes_rrnet

    kw = {}
    if dcfg.relations:
        triples = [tuple(r.split()) for r in dcfg.relations]
        if any(len(t) != 3 for t in triples):
            raise ConfigError(f"dataset.relations for {dcfg.name} must be 'A R B' triples of single "
                              f"words, e.g. ['circle above square'] (got {list(dcfg.relations)})")
        kw["relations"] = triples
    write_shapes_rrnet(root, seed=dcfg.seed, images_per_folder=max(2, dcfg.num_images // 2),
                       size=dcfg.size, **kw)


def _write_dreamrelation(root: Path, dcfg) -> None:
    from relgen.data.shapes import write_shapes_dreamrelation

    write_shapes_dreamrelation(root, seed=dcfg.seed, num_items=dcfg.num_items, size=dcfg.size)


register_dataset("reversion_folder", _folder("reversion", "read_reversion_folder"),
                 summary="ReVersion layout: exemplar images + text.json caption templates (dataset.root=)")
register_dataset("rrnet_folder", _folder("rrnet", "read_rrnet_folder"),
                 summary="RRNet layout: index.json + A/, B/, ARB_dir/, BRA_dir/ (one or many relations)")
register_dataset("dreamrelation_folder", _folder("dreamrelation", "read_dreamrelation_folder"),
                 summary="DreamRelation layout: prompts.json + videos/<id>/ + masks/<id>/ (dataset.root=)")
register_dataset("shapes_reversion", synthetic_dataset("reversion", "read_reversion_folder", _write_reversion),
                 summary="synthetic coloured shapes in one spatial relation, ReVersion layout")
register_dataset("shapes_rrnet", synthetic_dataset("rrnet", "read_rrnet_folder", _write_rrnet),
                 summary="synthetic object-swapped shape pairs, RRNet layout")
register_dataset("shapes_dreamrelation", synthetic_dataset("dreamrelation", "read_dreamrelation_folder",
                                                    _write_dreamrelation),
                 summary="synthetic relation triplets with keypoints and masks, DreamRelation layout")
