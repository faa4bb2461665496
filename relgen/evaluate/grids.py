"""Labelled evaluation grids: rows = prompt x seed, columns = conditions, with each metric's
verdict under every image and the boxes a metric found drawn on it (green: verdict right,
red: wrong)."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from typing import Any

from relgen.evaluate.samples import Box

_LINE = 11  # pixels per text line of PIL's default bitmap font
_PAD = 4


@dataclass
class Cell:
    """One image of the grid with its labels and boxes (``(label, box, ok)`` in image pixels)."""

    image: Any
    lines: list[str] = field(default_factory=list)
    boxes: list[tuple[str, Box, bool]] = field(default_factory=list)


def labelled_grid(columns: list[str], rows: list[tuple[str, list[Cell]]], cell_size: int = 160,
                  label_width: int = 180) -> Any:
    """One RGB image: a header of column names, then per row its label and its cells."""
    from PIL import Image, ImageDraw

    n_lines = max([len(c.lines) for _, cells in rows for c in cells] + [0])
    band = n_lines * _LINE + _PAD
    header = 2 * _LINE + _PAD
    width = label_width + len(columns) * cell_size
    height = header + len(rows) * (cell_size + band)
    grid = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(grid)
    for j, name in enumerate(columns):
        draw.text((label_width + j * cell_size + _PAD, _PAD), name[: cell_size // 6], fill="black")
    for r, (label, cells) in enumerate(rows):
        top = header + r * (cell_size + band)
        wrapped = textwrap.wrap(label, width=max(8, label_width // 6))[: (cell_size + band) // _LINE]
        for k, line in enumerate(wrapped):
            draw.text((_PAD, top + _PAD + k * _LINE), line, fill="black")
        for j, cell in enumerate(cells):
            left = label_width + j * cell_size
            image = cell.image.convert("RGB")
            scale = cell_size / max(image.size)
            shown = image.resize((max(1, round(image.size[0] * scale)), max(1, round(image.size[1] * scale))),
                                 Image.NEAREST if scale > 1 else Image.BICUBIC)
            grid.paste(shown, (left, top))
            for name, (x0, y0, x1, y1), ok in cell.boxes:
                colour = (0, 170, 0) if ok else (220, 0, 0)
                rect = [left + x0 * scale, top + y0 * scale, left + x1 * scale - 1, top + y1 * scale - 1]
                rect[2], rect[3] = max(rect[0], rect[2]), max(rect[1], rect[3])  # degenerate boxes
                draw.rectangle(rect, outline=colour, width=2)
                draw.text((rect[0] + 2, rect[1] + 1), name[:12], fill=colour)
            for k, line in enumerate(cell.lines):
                draw.text((left + _PAD, top + cell_size + k * _LINE + 1), line[: cell_size // 6], fill="black")
    return grid
