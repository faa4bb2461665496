"""Readers of the official layouts, image loading, boxes, predicate spans, tiny tokenizer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from relgen.data._tiny_tokenizer import DEFAULT_WORDS, write_tiny_clip_tokenizer
from relgen.data.images import IMAGE_EXTENSIONS, image_digest, list_images, load_image
from relgen.data.readers import (
    DreamRelationItem,
    mask_to_box,
    predicate_token_span,
    read_dreamrelation_folder,
    read_reversion_folder,
    read_rrnet_folder,
    validate_boxes,
)
from relgen.data.shapes import (
    write_shapes_dreamrelation,
    write_shapes_reversion,
    write_shapes_rrnet,
)
from relgen.errors import DataError

# --------------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------------


def _pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import CLIPTokenizer

    folder = tmp_path_factory.mktemp("tiny_tokenizer")
    write_tiny_clip_tokenizer(folder, DEFAULT_WORDS)
    return CLIPTokenizer.from_pretrained(folder)


@pytest.fixture(scope="module")
def shapes_cache(tmp_path_factory) -> dict[str, Path]:
    """Synthetic datasets written once per module; tests copy them before breaking them."""
    base = tmp_path_factory.mktemp("shapes")
    return {
        "reversion": write_shapes_reversion(base / "reversion", seed=0, num_images=3, size=32),
        "rrnet": write_shapes_rrnet(base / "rrnet", seed=0, images_per_folder=2, size=32),
        "dreamrelation": write_shapes_dreamrelation(base / "dreamrelation", seed=0, num_items=2,
                                                    size=32),
    }


def _copy(shapes_cache, kind: str, tmp_path: Path) -> Path:
    dst = tmp_path / kind
    shutil.copytree(shapes_cache[kind], dst)
    return dst


@pytest.fixture
def reversion_root(shapes_cache, tmp_path):
    return _copy(shapes_cache, "reversion", tmp_path)


@pytest.fixture
def rrnet_root(shapes_cache, tmp_path):
    """A single relation folder (the one inside the generated folder of relations)."""
    return _copy(shapes_cache, "rrnet", tmp_path) / "above"


@pytest.fixture
def dr_root(shapes_cache, tmp_path):
    return _copy(shapes_cache, "dreamrelation", tmp_path)


def _raises(fn, *fragments: str) -> str:
    """Call ``fn``; assert a one-line DataError mentioning every fragment; return the message."""
    with pytest.raises(DataError) as info:
        fn()
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


# --------------------------------------------------------------------------------------------
# images
# --------------------------------------------------------------------------------------------


def test_list_images_filters_and_sorts_naturally(tmp_path):
    for name in ["10.png", "2.JPG", "1.jpeg", "readme.txt", "._3.png", "a.WebP", "b.tiff"]:
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub.png").mkdir()
    names = [p.name for p in list_images(tmp_path)]
    assert names == ["1.jpeg", "2.JPG", "10.png", "a.WebP", "b.tiff"]
    assert {".gif", ".ppm", ".bmp", ".tif"} <= IMAGE_EXTENSIONS


def test_load_image_resizes_to_range_and_shape(tmp_path):
    array = np.zeros((20, 30, 4), np.uint8)
    array[..., 0] = 255  # pure red, with alpha
    array[..., 3] = 128
    Image.fromarray(array, "RGBA").save(tmp_path / "x.png")
    image = load_image(tmp_path / "x.png", 16)
    assert image.shape == (3, 16, 16) and image.dtype == torch.float32
    assert torch.allclose(image[0], torch.ones(16, 16))
    assert torch.allclose(image[1], -torch.ones(16, 16))
    assert load_image(tmp_path / "x.png", (8, 12)).shape == (3, 8, 12)  # (height, width)


def test_load_image_corrupt_file_raises_data_error(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    _raises(lambda: load_image(bad, 8), str(bad), "cannot be read as an image", "replace or remove")
    _raises(lambda: load_image(tmp_path / "missing.jpg", 8), "missing.jpg", "does not exist")


def test_image_digest_is_sha256_of_bytes(tmp_path):
    import hashlib

    (tmp_path / "f.png").write_bytes(b"abc")
    assert image_digest(tmp_path / "f.png") == hashlib.sha256(b"abc").hexdigest()


# --------------------------------------------------------------------------------------------
# real samples
# --------------------------------------------------------------------------------------------


def test_rrnet_place_sample(samples_dir):
    (relation,) = read_rrnet_folder(samples_dir / "rrnet" / "place")
    assert relation.name == "place"
    assert (relation.A, relation.R, relation.B) == ("book", "placed", "bowl")
    assert relation.ARB == "a book is placed on a bowl"
    assert relation.BRA == "a bowl is placed on the book"
    assert relation.BRA_dir == "a bowl is placed on the book"
    assert len(relation.images["ARB"]) == 4 and len(relation.images["BRA"]) == 4
    assert len(relation.images["A"]) == 2 and len(relation.images["B"]) == 4
    assert relation.images["A"][0].parent.name == "book"
    # mixed png (RGBA) / jpg / jpeg all load
    for key in ("A", "B", "ARB", "BRA"):
        image = load_image(relation.images[key][0], 32)
        assert image.shape == (3, 32, 32) and image.min() >= -1 and image.max() <= 1


def test_rrnet_folder_of_relations_sample(samples_dir):
    relations = read_rrnet_folder(samples_dir / "rrnet")
    assert [r.name for r in relations] == ["place"]


def test_dreamrelation_hug_sample(samples_dir, tokenizer):
    items = read_dreamrelation_folder(samples_dir / "dreamrelation" / "hug")
    assert [item.id for item in items] == ["0", "1"]
    first = items[0]
    assert first.prompt == "A lion and a polar bear hug."
    assert first.entities == ["lion", "polar bear"] and first.predicate == ["hug"]
    assert [p.name for p in first.concept_images] == ["concept0.png", "concept1.png"]
    assert first.motion_image.name == "motion.png"
    for item in items:
        assert item.concept_keypoints.shape == (2, 17, 2)
        assert item.motion_keypoints.shape == (2, 17, 2)
        assert item.concept_keypoints.dtype == torch.float32
        assert 0 <= item.motion_keypoints.min() and item.motion_keypoints.max() <= 1
        assert len(item.boxes) == 2
        validate_boxes(item.boxes, f"item {item.id}")
        for box, path in zip(item.boxes, item.mask_paths):
            x0, y0, x1, y1 = box
            assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1
            assert box == mask_to_box(_pixels(path))
    # "hug" is token 7: <bos> a lion and a polar bear hug . <eos>
    start, end = predicate_token_span(tokenizer, first.prompt, first.predicate)
    assert (start, end) == (7, 8)
    ids = tokenizer(first.prompt).input_ids
    assert ids[start:end] == tokenizer("hug", add_special_tokens=False).input_ids


# --------------------------------------------------------------------------------------------
# ReVersion
# --------------------------------------------------------------------------------------------


def test_reversion_reads_synthetic(reversion_root):
    data = read_reversion_folder(reversion_root)
    assert data.root == reversion_root
    assert [item.image.name for item in data.items] == ["0.png", "1.png", "2.png"]
    for item in data.items:
        assert item.templates and all(t.count("{}") == 1 for t in item.templates)


def test_reversion_root_missing(tmp_path):
    _raises(lambda: read_reversion_folder(tmp_path / "nope"), "nope", "does not exist",
            "dataset.root=")


def test_reversion_no_text_json(reversion_root):
    (reversion_root / "text.json").unlink()
    _raises(lambda: read_reversion_folder(reversion_root), "text.json", "missing")


def test_reversion_invalid_json(reversion_root):
    (reversion_root / "text.json").write_text('{"0.png": ["a {} b",]')
    _raises(lambda: read_reversion_folder(reversion_root), "text.json", "invalid JSON", "line 1")


def test_reversion_entry_names_missing_image(reversion_root):
    text = json.loads((reversion_root / "text.json").read_text())
    text["7.png"] = ["cat {} stone"]
    (reversion_root / "text.json").write_text(json.dumps(text))
    _raises(lambda: read_reversion_folder(reversion_root), "text.json", "'7.png'", "does not exist")


def test_reversion_template_without_placeholder(reversion_root):
    text = json.loads((reversion_root / "text.json").read_text())
    text["1.png"] = ["cat {} stone", "cat on stone"]
    (reversion_root / "text.json").write_text(json.dumps(text))
    _raises(lambda: read_reversion_folder(reversion_root), "text.json", "'1.png'",
            "'cat on stone'", "{}")


def test_reversion_no_images(tmp_path):
    (tmp_path / "text.json").write_text("{}")
    _raises(lambda: read_reversion_folder(tmp_path), str(tmp_path), "no images")


def test_reversion_image_without_entry(reversion_root):
    text = json.loads((reversion_root / "text.json").read_text())
    del text["2.png"]
    (reversion_root / "text.json").write_text(json.dumps(text))
    _raises(lambda: read_reversion_folder(reversion_root), "text.json", "'2.png'", "no entry")


def test_reversion_templates_not_a_list(reversion_root):
    text = json.loads((reversion_root / "text.json").read_text())
    text["0.png"] = "cat {} stone"
    (reversion_root / "text.json").write_text(json.dumps(text))
    _raises(lambda: read_reversion_folder(reversion_root), "text.json", "'0.png'", "list")


# --------------------------------------------------------------------------------------------
# RRNet
# --------------------------------------------------------------------------------------------


def _edit_index(root: Path, **changes) -> None:
    index = json.loads((root / "index.json").read_text())
    for key, value in changes.items():
        if value is None:
            del index[key]
        else:
            index[key] = value
    (root / "index.json").write_text(json.dumps(index))


def test_rrnet_reads_synthetic_relation_folder(rrnet_root):
    (relation,) = read_rrnet_folder(rrnet_root)
    assert (relation.A, relation.R, relation.B) == ("circle", "above", "square")
    assert relation.ARB == relation.ARB_dir == "a circle is above a square"
    assert set(relation.images) == {"A", "B", "ARB", "BRA"}
    assert all(len(paths) == 2 for paths in relation.images.values())


@pytest.mark.parametrize("key", ["A", "R", "ARB", "BRA_dir"])
def test_rrnet_index_missing_key(rrnet_root, key):
    _edit_index(rrnet_root, **{key: None})
    _raises(lambda: read_rrnet_folder(rrnet_root), "index.json", f"missing key '{key}'")


@pytest.mark.parametrize(
    "field, prompt, word",
    [
        ("ARB", "a disc is above a square", "circle"),  # A missing
        ("ARB", "a circle is over a square", "above"),  # R missing
        ("BRA", "a square is above a circles", "circle"),  # A only as part of a word
        ("BRA", "a box is above a circle", "square"),  # B missing
    ],
)
def test_rrnet_prompt_missing_word(rrnet_root, field, prompt, word):
    _edit_index(rrnet_root, **{field: prompt})
    _raises(lambda: read_rrnet_folder(rrnet_root), "index.json", f"'{field}'", f"'{word}'")


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"B": "circle", "ARB": "a circle is above a circle", "BRA": "a circle is above the circle"},
         ["A and B are both 'circle'"]),
        ({"BRA": "A circle is  above a square"}, ["ARB and BRA are the same prompt"]),
        ({"BRA_dir": "a circle is above a square"}, ["ARB_dir and BRA_dir are the same folder"]),
    ],
)
def test_rrnet_data_that_cannot_teach_is_refused(rrnet_root, changes, words):
    _edit_index(rrnet_root, **changes)
    _raises(lambda: read_rrnet_folder(rrnet_root), "index.json", *words)


def test_rrnet_image_folder_missing(rrnet_root):
    shutil.rmtree(rrnet_root / "a square is above a circle")
    _raises(lambda: read_rrnet_folder(rrnet_root), "a square is above a circle", "'BRA'",
            "does not exist")


def test_rrnet_image_folder_empty(rrnet_root):
    for path in (rrnet_root / "square").iterdir():
        path.unlink()
    _raises(lambda: read_rrnet_folder(rrnet_root), "square", "'B'", "no images")


def test_rrnet_subfolder_without_index(rrnet_root):
    (rrnet_root.parent / "stray").mkdir()
    _raises(lambda: read_rrnet_folder(rrnet_root.parent), "stray", "index.json")


# --------------------------------------------------------------------------------------------
# DreamRelation
# --------------------------------------------------------------------------------------------


def _edit_prompts(root: Path, item: str, **changes) -> None:
    prompts = json.loads((root / "prompts.json").read_text())
    for key, value in changes.items():
        if value is None:
            del prompts[item][key]
        else:
            prompts[item][key] = value
    (root / "prompts.json").write_text(json.dumps(prompts))


def test_dreamrelation_reads_synthetic(dr_root):
    items = read_dreamrelation_folder(dr_root)
    assert len(items) == 2 and all(isinstance(i, DreamRelationItem) for i in items)
    for item in items:
        assert item.predicate == ["above"] and len(item.entities) == 2
        assert item.concept_keypoints.shape == (2, 17, 2)
        assert item.motion_keypoints.shape == (2, 17, 2)
        assert [p.name for p in item.mask_paths] == ["motion0.png", "motion1.png"]


def test_dreamrelation_single_entity_item(dr_root):
    videos = dr_root / "videos" / "1"
    (videos / "concept0.png").rename(videos / "concept.png")
    (videos / "concept_keyposes_one.pth").rename(videos / "concept_keyposes.pth")
    (videos / "concept1.png").unlink()
    (videos / "concept_keyposes_two.pth").unlink()
    torch.save(torch.load(videos / "motion_keyposes.pth", weights_only=True)[:1],
               videos / "motion_keyposes.pth")
    (dr_root / "masks" / "1" / "motion1.png").unlink()
    prompts = json.loads((dr_root / "prompts.json").read_text())
    prompts["1"]["entities"] = prompts["1"]["entities"][:1]
    (dr_root / "prompts.json").write_text(json.dumps(prompts))
    item = read_dreamrelation_folder(dr_root)[1]
    assert [p.name for p in item.concept_images] == ["concept.png"]
    assert item.concept_keypoints.shape == (1, 17, 2) and item.motion_keypoints.shape == (1, 17, 2)
    assert len(item.mask_paths) == 1 and len(item.boxes) == 1


def test_dreamrelation_item_without_predicate_reads(dr_root):
    # DreamRelation's released shake data have no predicate; what needs one says so itself
    _edit_prompts(dr_root, "1", predicate=None)
    items = read_dreamrelation_folder(dr_root)
    assert items[1].predicate is None and items[0].predicate is not None
    _edit_prompts(dr_root, "1", predicate=[])
    _raises(lambda: read_dreamrelation_folder(dr_root), "item '1'", "'predicate' must be a non-empty list")


def test_dreamrelation_predicate_not_in_prompt(dr_root):
    _edit_prompts(dr_root, "0", predicate=["hugging"])
    _raises(lambda: read_dreamrelation_folder(dr_root), "prompts.json", "item '0'", "hugging")


def test_dreamrelation_predicate_match_ignores_case_and_punctuation(dr_root):
    _edit_prompts(dr_root, "0", prompt="Two shapes, one ABOVE.", predicate=["above"])
    assert read_dreamrelation_folder(dr_root)[0].predicate == ["above"]


def test_dreamrelation_keypoints_wrong_shape(dr_root):
    path = dr_root / "videos" / "0" / "motion_keyposes.pth"
    torch.save(torch.rand(2, 16, 2), path)
    _raises(lambda: read_dreamrelation_folder(dr_root), str(path), "(2, 16, 2)", "(2, 17, 2)")


def test_dreamrelation_keypoints_outside_unit_range(dr_root):
    path = dr_root / "videos" / "1" / "concept_keyposes_two.pth"
    torch.save(torch.rand(1, 17, 2) * 1024, path)  # pixel coordinates instead of normalised
    _raises(lambda: read_dreamrelation_folder(dr_root), str(path), "[0, 1]")


def test_dreamrelation_empty_mask(dr_root):
    path = dr_root / "masks" / "0" / "motion1.png"
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(path)
    _raises(lambda: read_dreamrelation_folder(dr_root), str(path), "empty")


@pytest.mark.parametrize(
    "relative",
    [
        "videos/0/concept1.png",
        "videos/0/motion.png",
        "videos/1/concept_keyposes_one.pth",
        "videos/1/motion_keyposes.pth",
        "masks/1/motion0.png",
        "prompts.json",
    ],
)
def test_dreamrelation_missing_file(dr_root, relative):
    (dr_root / relative).unlink()
    _raises(lambda: read_dreamrelation_folder(dr_root), str(dr_root / relative), "missing")


# --------------------------------------------------------------------------------------------
# boxes
# --------------------------------------------------------------------------------------------


def test_mask_to_box_uses_exclusive_far_edges():
    mask = np.zeros((10, 20), np.uint8)
    mask[2:5, 4:10] = 255
    assert mask_to_box(mask) == (4 / 20, 2 / 10, 10 / 20, 5 / 10)
    assert mask_to_box(torch.ones(4, 4)) == (0.0, 0.0, 1.0, 1.0)
    _raises(lambda: mask_to_box(np.zeros((4, 4))), "empty")


@pytest.mark.parametrize(
    "box, fragment",
    [((0.1, 0.2, 1.2, 0.9), "outside [0, 1]"), ((-0.1, 0.2, 0.5, 0.9), "outside [0, 1]"),
     ((0.5, 0.2, 0.5, 0.9), "x0 < x1"), ((0.1, 0.9, 0.5, 0.2), "x0 < x1 and y0 < y1")],
)
def test_validate_boxes_rejects(box, fragment):
    _raises(lambda: validate_boxes([(0.0, 0.0, 1.0, 1.0), box], "config.yaml: boxes"),
            "config.yaml: boxes", "box 1", fragment)


def test_validate_boxes_accepts_tensor():
    validate_boxes(torch.tensor([[0.0, 0.2, 0.55, 0.85], [0.55, 0.26, 0.95, 0.90]]), "boxes")


# --------------------------------------------------------------------------------------------
# tokenizer and predicate spans
# --------------------------------------------------------------------------------------------


def test_tiny_tokenizer_words_are_single_tokens(tmp_path):
    from transformers import CLIPTokenizer

    words = ["cat", "at", "c", "catcat", "hugging", "hug", "polar bear", "t-shirt"]
    write_tiny_clip_tokenizer(tmp_path, words, pad_token="!")
    tok = CLIPTokenizer.from_pretrained(tmp_path)
    for word in ["cat", "at", "c", "catcat", "hugging", "hug", "polar", "bear", "t", "shirt"]:
        ids = tok(word, add_special_tokens=False).input_ids
        assert tok.convert_ids_to_tokens(ids) == [f"{word}</w>"], word
    assert tok.convert_ids_to_tokens(tok("t-shirt", add_special_tokens=False).input_ids) == [
        "t</w>", "-</w>", "shirt</w>"]
    assert tok.convert_ids_to_tokens(320) == "a</w>"  # CLIP's byte order
    assert tok.pad_token == "!" and tok.model_max_length == 77
    assert tok.convert_ids_to_tokens([tok.bos_token_id, tok.eos_token_id]) == [
        "<|startoftext|>", "<|endoftext|>"]
    assert tok("zq").input_ids[1:-1] and tok.unk_token_id not in tok("zq").input_ids[1:-1]


def test_predicate_span_simple(tokenizer):
    prompt = "A bear is hugging a tiger."
    assert predicate_token_span(tokenizer, prompt, ["hugging"]) == (4, 5)


def test_predicate_span_multiword_and_case(tokenizer):
    prompt = "A Red circle is ON TOP of a blue square."
    start, end = predicate_token_span(tokenizer, prompt, ["on", "top"])
    ids = tokenizer(prompt).input_ids
    assert ids[start:end] == tokenizer("on top", add_special_tokens=False).input_ids
    assert (start, end) == (5, 7)


def test_predicate_span_counts_earlier_punctuation(tokenizer):
    # "Look," is two tokens in the full prompt: the span must account for the comma
    prompt = "Look, a zzcat is hugging a dog!"
    start, end = predicate_token_span(tokenizer, prompt, ["hugging"])
    ids = tokenizer(prompt).input_ids
    assert ids[start:end] == tokenizer("hugging", add_special_tokens=False).input_ids


def test_predicate_span_multi_token_predicate(tokenizer):
    prompt = "a cat is snuggling a dog"  # "snuggling" is not in the tiny vocabulary
    start, end = predicate_token_span(tokenizer, prompt, ["snuggling"])
    assert end - start == len(tokenizer("snuggling", add_special_tokens=False).input_ids) > 1
    assert tokenizer(prompt).input_ids[start:end] == tokenizer(
        "snuggling", add_special_tokens=False).input_ids


def test_predicate_span_not_found(tokenizer):
    _raises(lambda: predicate_token_span(tokenizer, "A bear is hugging a tiger.", ["kissing"]),
            "kissing", "A bear is hugging a tiger.")
