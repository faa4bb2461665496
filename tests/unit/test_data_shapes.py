"""The synthetic shapes generators: formats, geometry, determinism, atomic writes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from relgen.data import shapes
from relgen.data._tiny_tokenizer import DEFAULT_WORDS
from relgen.data.readers import (
    mask_to_box,
    read_dreamrelation_folder,
    read_reversion_folder,
    read_rrnet_folder,
    validate_boxes,
)
from relgen.errors import ConfigError, DataError

SIZE = 48


def _pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


def _tree(root: Path) -> dict[str, bytes]:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): p.read_bytes() for p in files}


def test_vocabulary_sizes_and_tokenizer_coverage():
    assert len(shapes.SHAPES) >= 5 and len(shapes.COLOURS) >= 6
    assert all(" " not in w for w in (*shapes.SHAPES, *shapes.COLOURS))
    assert set(shapes.vocabulary()) <= set(DEFAULT_WORDS)
    assert {"above", "below", "left_of", "right_of", "on_top_of", "inside"} == set(shapes.RELATIONS)
    assert shapes.get_relation("left of").key == "left_of"
    assert shapes.get_relation("to the right of").key == "right_of"
    with pytest.raises(ConfigError, match="above"):
        shapes.get_relation("beside")


@pytest.mark.parametrize("shape", shapes.SHAPES)
def test_every_shape_contains_its_centre_and_fits_its_radius(shape):
    obj = shapes.SceneObject(shape, "red", 20.0, 20.0, 10.0)
    mask = shapes.shape_mask(obj, 40)
    assert mask[20, 20] and mask.sum() > 60
    rows, cols = np.nonzero(mask)
    assert rows.min() >= 10 and rows.max() < 30 and cols.min() >= 10 and cols.max() < 30


def test_render_scene_colours_match_masks():
    a = shapes.SceneObject("circle", "red", 16.0, 16.0, 8.0)
    b = shapes.SceneObject("square", "blue", 20.0, 20.0, 8.0)
    image, (mask_a, mask_b) = shapes.render_scene([a, b], 32)
    assert (image[mask_a] == shapes.COLOURS["red"]).all()
    assert (image[mask_b] == shapes.COLOURS["blue"]).all()
    assert not (mask_a & mask_b).any()  # visible masks: b occludes a
    assert (image[~(mask_a | mask_b)] == (236, 236, 236)).all()


def _rows_cols(mask):
    rows, cols = np.nonzero(mask)
    return rows, cols


@pytest.mark.parametrize("relation", list(shapes.RELATIONS))
def test_layout_geometry(relation):
    pairs = [(p, q) for p in shapes.SHAPES for q in shapes.SHAPES if p != q]
    for seed, (shape_a, shape_b) in enumerate(pairs):
        rng = np.random.default_rng(seed)
        a, b = shapes.layout_pair(rng, relation, (shape_a, "red"), (shape_b, "blue"), 64)
        _, (ma, mb) = shapes.render_pair(relation, a, b, 64)
        assert ma.any() and mb.any() and not (ma & mb).any()
        ra, ca = _rows_cols(ma)
        rb, cb = _rows_cols(mb)
        if relation == "above":
            assert ra.max() < rb.min()
        elif relation == "below":
            assert ra.min() > rb.max()
        elif relation == "left_of":
            assert ca.max() < cb.min()
        elif relation == "right_of":
            assert ca.min() > cb.max()
        elif relation == "on_top_of":
            # A rests on B: some pixel of A sits right above a pixel of B, none below it
            assert (ma[:-1] & mb[1:]).any()
            full_a = shapes.shape_mask(a, 64)
            for col in set(ca) & set(cb):
                assert ra[ca == col].max() < rb[cb == col].min()
            assert full_a.sum() == ma.sum()
        elif relation == "inside":
            full_b = shapes.shape_mask(b, 64)
            assert not (ma & ~full_b).any()  # A lies within B's outline
            assert ca.min() > cb.min() and ca.max() < cb.max()
            assert ra.min() > rb.min() and ra.max() < rb.max()


def test_write_reversion_reads_back(tmp_path):
    root = shapes.write_shapes_reversion(tmp_path / "rev", seed=1, relation="left_of",
                                         num_images=4, size=SIZE)
    data = read_reversion_folder(root)
    assert len(data.items) == 4
    for item in data.items:
        assert _pixels(item.image).shape == (SIZE, SIZE, 3)
        assert len(item.templates) >= 2
        first = item.templates[0].format("<R>").split()
        assert first[0] in shapes.COLOURS and first[1] in shapes.SHAPES and first[2] == "<R>"


def test_write_rrnet_reads_back(tmp_path):
    triples = [("circle", "above", "square"), ("star", "left of", "hexagon"),
               ("triangle", "above", "cross")]
    root = shapes.write_shapes_rrnet(tmp_path / "rr", seed=0, relations=triples,
                                     images_per_folder=2, size=SIZE)
    relations = read_rrnet_folder(root)
    names = [r.name for r in relations]
    assert names == sorted(["above_circle_square", "left_of", "above_triangle_cross"])
    by_name = {r.name: r for r in relations}
    left = by_name["left_of"]
    assert (left.A, left.R, left.B) == ("star", "left", "hexagon")
    assert left.ARB == left.ARB_dir == "a star is to the left of a hexagon"
    assert left.BRA == left.BRA_dir == "a hexagon is to the left of a star"
    assert all(len(v) == 2 for v in left.images.values())
    # one relation folder can be read on its own
    (single,) = read_rrnet_folder(root / "above_circle_square")
    assert (single.A, single.R, single.B) == ("circle", "above", "square")


def test_write_rrnet_rejects_bad_triples(tmp_path):
    with pytest.raises(ConfigError, match="two different shapes"):
        shapes.write_shapes_rrnet(tmp_path / "a", relations=[("circle", "above", "circle")])
    with pytest.raises(ConfigError, match="unknown shape"):
        shapes.write_shapes_rrnet(tmp_path / "b", relations=[("blob", "above", "circle")])
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.parametrize("relation", list(shapes.RELATIONS))
def test_write_dreamrelation_reads_back_with_keypoints_on_objects(tmp_path, relation):
    root = shapes.write_shapes_dreamrelation(tmp_path / "dr", seed=2, num_items=2, size=SIZE,
                                             relation=relation)
    items = read_dreamrelation_folder(root)
    assert [item.id for item in items] == ["0", "1"]
    for item in items:
        rel = shapes.RELATIONS[relation]
        assert item.predicate == list(rel.predicate)
        assert item.prompt == f"A {item.entities[0]} is {rel.phrase} a {item.entities[1]}."
        validate_boxes(item.boxes, item.id)
        motion = _pixels(item.motion_image)
        for i, entity in enumerate(item.entities):
            colour = shapes.COLOURS[entity.split()[0]]
            mask = _pixels(item.mask_paths[i])
            assert mask.ndim == 2 and set(np.unique(mask)) == {0, 255}  # L mode, 0 or 255
            assert item.boxes[i] == mask_to_box(mask)
            # every motion keypoint is on the entity's visible pixels, in its colour
            px = (item.motion_keypoints[i].numpy() * SIZE).astype(int)
            assert (mask[px[:, 1], px[:, 0]] == 255).all()
            assert (motion[px[:, 1], px[:, 0]] == colour).all()
            # every concept keypoint is on the entity in its concept image
            concept = _pixels(item.concept_images[i])
            px = (item.concept_keypoints[i].numpy() * SIZE).astype(int)
            assert (concept[px[:, 1], px[:, 0]] == colour).all()


def test_same_seed_same_files_and_different_seed_differs(tmp_path):
    a = _tree(shapes.write_shapes_dreamrelation(tmp_path / "a", seed=5, num_items=2, size=32))
    b = _tree(shapes.write_shapes_dreamrelation(tmp_path / "b", seed=5, num_items=2, size=32))
    c = _tree(shapes.write_shapes_dreamrelation(tmp_path / "c", seed=6, num_items=2, size=32))
    assert a.keys() == b.keys()
    for name in a:
        if name.endswith(".pth"):
            ta = torch.load(tmp_path / "a" / name, weights_only=True)
            tb = torch.load(tmp_path / "b" / name, weights_only=True)
            assert torch.equal(ta, tb) and ta.dtype == torch.float32
        else:
            assert a[name] == b[name], name
    assert a["videos/0/motion.png"] != c["videos/0/motion.png"]


def test_varied_background_is_deterministic(tmp_path):
    a = _tree(shapes.write_shapes_reversion(tmp_path / "a", num_images=2, size=32,
                                            background="varied"))
    b = _tree(shapes.write_shapes_reversion(tmp_path / "b", num_images=2, size=32,
                                            background="varied"))
    assert a == b
    image = _pixels(tmp_path / "a" / "0.png")
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 10


def test_second_call_is_a_no_op(tmp_path):
    root = shapes.write_shapes_rrnet(tmp_path / "rr", seed=0, size=32)
    marker = root / shapes.MARKER
    stamp = marker.stat().st_mtime_ns
    before = _tree(root)
    assert shapes.write_shapes_rrnet(tmp_path / "rr", seed=0, size=32) == root
    assert marker.stat().st_mtime_ns == stamp and _tree(root) == before
    assert json.loads(marker.read_text())["args"]["size"] == 32


def test_different_arguments_on_existing_folder_raise(tmp_path):
    shapes.write_shapes_reversion(tmp_path / "rev", seed=0, size=32)
    with pytest.raises(DataError, match="different arguments"):
        shapes.write_shapes_reversion(tmp_path / "rev", seed=1, size=32)


def test_foreign_folder_is_never_overwritten(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("user data")
    with pytest.raises(DataError, match="not a complete synthetic dataset"):
        shapes.write_shapes_reversion(tmp_path / "mine")
    assert (tmp_path / "mine" / "keep.txt").read_text() == "user data"


def test_empty_existing_folder_is_filled(tmp_path):
    (tmp_path / "empty").mkdir()
    root = shapes.write_shapes_reversion(tmp_path / "empty", size=32, num_images=2)
    assert len(read_reversion_folder(root).items) == 2


def test_killed_write_leaves_nothing_behind(tmp_path, monkeypatch):
    calls = {"n": 0}
    real_save = torch.save

    def dying_save(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:  # part-way through the dataset
            raise KeyboardInterrupt
        return real_save(*args, **kwargs)

    monkeypatch.setattr(shapes.torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        shapes.write_shapes_dreamrelation(tmp_path / "dr", num_items=3, size=32)
    assert list(tmp_path.iterdir()) == []  # neither the dataset nor its temporary folder
    monkeypatch.setattr(shapes.torch, "save", real_save)
    root = shapes.write_shapes_dreamrelation(tmp_path / "dr", num_items=3, size=32)
    assert len(read_dreamrelation_folder(root)) == 3


def test_stale_temporary_folder_is_ignored(tmp_path):
    # a process killed with SIGKILL cannot clean up; its leftovers must not matter
    stale = tmp_path / "rev.tmp-999999"
    stale.mkdir()
    (stale / "0.png").write_bytes(b"half")
    own = tmp_path / f"rev.tmp-{os.getpid()}"
    own.mkdir()
    root = shapes.write_shapes_reversion(tmp_path / "rev", size=32, num_images=2)
    assert len(read_reversion_folder(root).items) == 2
    assert not own.exists()
