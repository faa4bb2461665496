"""The one grid layout: labelled rows and columns, nearest-neighbour cells of at least 128 px."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from relgen.grid import cell_scale, labelled_grid, wrap_text, default_font


def _solid(colour, size=64):
    return Image.new("RGB", (size, size), colour)


def _dark_pixels(image: Image.Image, box) -> int:
    """Pixels darker than mid-grey in ``box`` (where text was drawn on the white background)."""
    return int((np.asarray(image.crop(box).convert("L")) < 128).sum())


def test_small_images_are_enlarged_with_nearest_neighbour_to_128_px_cells():
    checker = Image.fromarray(np.kron(np.indices((8, 8)).sum(0) % 2, np.ones((8, 8))).astype(np.uint8) * 255).convert("RGB")
    grid = labelled_grid([[checker, _solid("red")]])
    assert grid.size == (2 * 128, 128)  # no labels: cells only, 64 px -> 128 px
    cell = np.asarray(grid.crop((0, 0, 128, 128)))
    # every source pixel became an exact 2 x 2 block: nearest-neighbour, no blur
    assert np.array_equal(cell, np.asarray(checker).repeat(2, 0).repeat(2, 1))
    assert np.array_equal(np.asarray(grid.crop((128, 0, 256, 128))), np.asarray(_solid("red", 128)))
    assert cell_scale(64, 64) == 2 and cell_scale(512, 512) == 1 and cell_scale(100, 50) == 3


def test_headers_and_row_labels_are_drawn_outside_the_cells():
    rows = [[_solid("red"), _solid("blue")], [_solid("green"), _solid("black")]]
    grid = labelled_grid(rows, row_labels=["a red circle <R> a blue square\nseed 0", "second prompt\nseed 1"],
                         column_labels=["λ = 0", "λ = 0.6"], title="rrnet · tiny_sd21")
    width, height = grid.size
    assert width == 160 + 2 * 128
    y0 = height - 2 * 128  # title and header band
    assert y0 > 20
    # each cell holds its image untouched, at the offsets the docstring gives
    for r, row in enumerate(rows):
        for c, img in enumerate(row):
            cell = grid.crop((160 + c * 128, y0 + r * 128, 160 + (c + 1) * 128, y0 + (r + 1) * 128))
            assert np.array_equal(np.asarray(cell), np.asarray(img.resize((128, 128), Image.Resampling.NEAREST)))
    # text sits in the label column, the header band of each column and the title line
    for r in range(2):
        assert _dark_pixels(grid, (0, y0 + r * 128, 160, y0 + (r + 1) * 128)) > 30
    for c in range(2):
        assert _dark_pixels(grid, (160 + c * 128, 0, 160 + (c + 1) * 128, y0)) > 10
    # without labels the same rows make a bare grid with no band or column
    assert labelled_grid(rows).size == (256, 256)


def test_wrapping_keeps_lines_within_the_width_and_marks_a_cut():
    font = default_font()
    lines = wrap_text("a long prompt with a great many words about a cat painted on a stone wall", font, 100)
    assert len(lines) > 2
    from PIL import ImageDraw

    measure = ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength
    assert all(measure(line, font=font) <= 100 for line in lines)
    assert " ".join(lines) == "a long prompt with a great many words about a cat painted on a stone wall"
    cut = wrap_text("a long prompt with a great many words about a cat painted on a stone wall", font, 100, 2)
    assert len(cut) == 2 and cut[-1].endswith("…")
    assert wrap_text("line one\nseed 3", font, 150) == ["line one", "seed 3"]
    assert wrap_text("RRNet λ = 0.6", font, 150) == ["RRNet lambda = 0.6"]  # no glyph box for λ


def test_label_counts_must_match():
    with pytest.raises(ValueError, match="1 row labels for 2 rows"):
        labelled_grid([[_solid("red")], [_solid("red")]], row_labels=["x"])
    with pytest.raises(ValueError, match="3 column labels for 1 columns"):
        labelled_grid([[_solid("red")]], column_labels=["a", "b", "c"])


def test_relworld_method_grid_is_labelled_with_conditions_prompts_and_seeds(relworld_script):
    from relgen.relworld import bench
    from relgen.relworld.detector import Reading

    methods = relworld_script("methods")
    prompts = [bench.Prompt(("circle", "red"), "above", ("square", "blue"), "a red circle above a blue square")]
    conds = [bench.Condition("written word", "written"), bench.Condition("ReVersion token", "relation_token")]
    task = bench.TaskResult("inversion", prompts, conds,
                            images={"written word": [[[_solid("red"), _solid("red")]]],
                                    "ReVersion token": [[[_solid("blue"), _solid("blue")]]]})
    right, wrong = Reading("above", object(), object(), "above"), Reading("above", None, None, None)
    task.readings = {"written word": {"strict": [[[wrong, wrong]]]}, "ReVersion token": {"strict": [[[right, right]]]}}
    grid = methods.task_grid(task, bench.Settings(seed=5, samples=2, grid_seeds=2, grid_prompts=1))
    assert grid.size[0] == 160 + 2 * 128 and grid.size[1] > 2 * 128  # 64 px cells enlarged, title and header on top
    y0 = grid.size[1] - 2 * 128
    assert grid.getpixel((160 + 10, y0 + 10)) == (255, 0, 0) and grid.getpixel((160 + 138, y0 + 138)) == (0, 0, 255)
    # the verdicts along each image's bottom edge: red bar (wrong) under the written word, green under the token
    assert grid.getpixel((160 + 10, y0 + 126)) == (210, 40, 40) and grid.getpixel((160 + 138, y0 + 126)) == (40, 170, 60)
    assert _dark_pixels(grid, (0, y0, 160, y0 + 128)) > 30  # "a red circle ... seed 5"


def test_sample_grids_during_training_are_on_by_default_and_labelled(tmp_path):
    from conftest import grid_cells
    from relgen.testing import compose, short_run

    assert compose().trainer.sample_every == 250  # on by default (diffusers' --validation_steps)
    run = short_run(tmp_path / "run", "backbone=tiny_sd15", "dataset=shapes_reversion", "trainer.sample_every=1",
                    "method.grad_accum=1", "method.sample_steps=2")
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["step-000001.png"]  # the last step's is final.png
    assert grid_cells(run / "samples" / "step-000001.png") == (2, 1)  # two sample prompts, one seed


def test_a_log_key_that_first_appears_later_reaches_metrics_csv(tmp_path):
    import csv

    from relgen.train.loop import _MetricsWriter

    writer = _MetricsWriter(tmp_path)
    writer.write(1, {"loss": 0.5})
    writer.write(2, {"loss": 0.25, "grad_norm": 1.5})
    writer.write(3, {"loss": 0.125})
    with open(tmp_path / "metrics.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows == [["step", "loss", "grad_norm"], ["1", "0.5", ""], ["2", "0.25", "1.5"], ["3", "0.125", ""]]
