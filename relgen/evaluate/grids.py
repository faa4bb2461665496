"""Labelled evaluation grids: rows = prompt x seed, columns = conditions, with each metric's
verdict under every image and the boxes a metric found drawn on it (green: verdict right,
red: wrong)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from relgen import grid
from relgen.evaluate.samples import Box


@dataclass
class Cell:
    """One image of the grid with its labels and boxes (``(label, box, ok)`` in image pixels)."""

    image: Any
    lines: list[str] = field(default_factory=list)
    boxes: list[tuple[str, Box, bool]] = field(default_factory=list)


def labelled_grid(columns: list[str], rows: list[tuple[str, list[Cell]]], cell_size: int = 160,
                  label_width: int = 180) -> Any:
    """One RGB image (:func:`relgen.grid.labelled_grid`): a header of column names, then per row
    its label and its cells, each with its verdict lines under it and its boxes on it."""
    return grid.labelled_grid([[c.image for c in cells] for _, cells in rows], row_labels=[label for label, _ in rows],
                              column_labels=list(columns), max_cell=cell_size, label_width=label_width,
                              notes=[[c.lines for c in cells] for _, cells in rows],
                              boxes=[[c.boxes for c in cells] for _, cells in rows])
