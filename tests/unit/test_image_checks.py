"""Images are read faithfully or refused; a dry run decodes every image; extreme sizes warn."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from relgen.data.images import check_images, open_rgb
from relgen.errors import DataError
from relgen.run import run_training
from relgen.testing import compose


def test_a_16_bit_png_is_read_to_the_right_values(tmp_path):
    values = np.array([[0, 257, 32768], [65535, 1000, 12850]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    rgb = np.asarray(open_rgb(tmp_path / "g16.png"))
    expected = np.array([[0, 1, 128], [255, 4, 50]], dtype=np.uint8)  # round(v * 255 / 65535)
    assert rgb.shape == (2, 3, 3) and all(np.array_equal(rgb[..., c], expected) for c in range(3))


def test_a_float_image_is_refused_naming_the_file(tmp_path):
    Image.fromarray(np.full((4, 4), 0.5, dtype=np.float32)).save(tmp_path / "f.tiff")
    with pytest.raises(DataError, match=r"f\.tiff: a floating-point TIFF image has no defined 8-bit colour range"):
        open_rgb(tmp_path / "f.tiff")


def test_extreme_sizes_warn_and_say_what_is_done(tmp_path):
    Image.new("RGB", (1, 1)).save(tmp_path / "dot.png")
    Image.new("RGB", (4000, 40)).save(tmp_path / "strip.png")
    Image.new("RGB", (80, 60)).save(tmp_path / "fine.png")
    lines = check_images([tmp_path / "dot.png", tmp_path / "strip.png", tmp_path / "fine.png"], 64, decode=True)
    assert lines == [
        f"{tmp_path / 'dot.png'}: 1x1 is far from the training size 64x64; it is resized to 64x64 (upscaled 64x); "
        "crop or resize it yourself if that is not what you want",
        f"{tmp_path / 'strip.png'}: 4000x40 is far from the training size 64x64; it is resized to 64x64 (stretched "
        "from a 100:1 aspect ratio, downscaled 62x); crop or resize it yourself if that is not what you want",
    ]


def _reversion_folder(root, broken: bytes):
    root.mkdir()
    buf = io.BytesIO()
    Image.fromarray(np.random.RandomState(0).randint(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    (root / "0.jpg").write_bytes(buf.getvalue())
    (root / "1.jpg").write_bytes(broken(buf.getvalue()))
    (root / "text.json").write_text(json.dumps({"0.jpg": ["cat {} stone"], "1.jpg": ["dog {} box"]}))


@pytest.mark.parametrize("kind,broken", [("truncated", lambda good: good[: len(good) // 2]),
                                         ("text", lambda good: b"this is not a picture\n")])
def test_the_dry_run_decodes_every_image(tmp_path, kind, broken):
    root = tmp_path / "rel"
    _reversion_folder(root, broken)
    with pytest.raises(DataError, match=r"1\.jpg: cannot be read as an image"):
        run_training(compose("dataset=reversion_folder", f"dataset.root={root}", "dry_run=true"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_template_whose_token_falls_past_77_tokens_is_refused(tmp_path):
    root = tmp_path / "rel"
    root.mkdir()
    Image.new("RGB", (64, 64), "red").save(root / "0.png")
    long = "a cat " * 40 + "{} a stone"
    (root / "text.json").write_text(json.dumps({"0.png": ["cat {} stone", long]}))
    with pytest.raises(DataError, match=r"text\.json: template 'a cat a cat .*' of 0\.png puts <R> at token 81, "
                                        r"past the text_encoder tokenizer's limit of 77 tokens"):
        run_training(compose("backbone=tiny_sd15", "dataset=reversion_folder", f"dataset.root={root}",
                             "trainer=debug", "method=reversion"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_generate_warns_on_a_truncated_prompt():
    from relgen.generate import GenerationOptions, render
    from relgen.testing import load_tiny

    bb = load_tiny("tiny_sd15")

    class Plain:
        def pipeline_inputs(self, pipe, prompts):
            return {"prompt": prompts}

    with pytest.warns(UserWarning, match=r"prompt is longer than 77 tokens and was cut after: 'a dog a dog"):
        rows = render(bb.pipeline(), Plain(), ["a dog " * 50], GenerationOptions(num_images=1, steps=1), bb.cfg)
    assert len(rows) == 1 and rows[0][0].size == (64, 64)
