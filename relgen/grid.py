"""Labelled image grids: the one layout every picture relgen writes uses.

Training sample grids, ``python -m relgen.generate`` grids, RRNet's λ grids and the relworld
benchmark grids all go through :func:`labelled_grid`: a header over each column (the
condition: a seed, a λ value, a baseline's name), a label beside each row (the prompt,
wrapped, and its seed when rows differ by seed), and an optional title line. Text is drawn
with PIL's built-in font, so no font file is needed; small images (relworld's 64 px) are
enlarged with nearest-neighbour resampling so each cell is at least ``min_cell`` pixels and
stays readable without blurring the pixels a detector scored.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

from PIL import Image, ImageDraw, ImageFont

#: Smallest cell side in pixels; smaller images are enlarged by a whole factor to reach it.
MIN_CELL = 128
FONT_SIZE = 12
_PAD = 4
_BACKGROUND = "white"
_INK = (20, 20, 20)


def default_font(size: int = FONT_SIZE) -> ImageFont.ImageFont:
    """PIL's built-in font at ``size`` (its bitmap font where FreeType is missing)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # Pillow < 10.1 or no FreeType: fixed-size bitmap font
        return ImageFont.load_default()


#: Letters PIL's default font has no glyph for, spelt out so a label never shows a box.
_SPELT = {"λ": "lambda", "≥": ">=", "≤": "<=", "×": "x", "γ": "gamma"}


def drawable(text: str) -> str:
    """``text`` with the letters of :data:`_SPELT` spelt out (``λ = 0.6`` -> ``lambda = 0.6``)."""
    for letter, spelt in _SPELT.items():
        text = text.replace(letter, spelt)
    return text


def wrap_text(text: str, font: ImageFont.ImageFont, width: int, max_lines: Optional[int] = None) -> list[str]:
    """Break ``text`` into lines no wider than ``width`` pixels (words longer than a line are cut).

    Explicit newlines start a new line. With ``max_lines``, a text that needs more lines is cut
    and its last kept line ends with an ellipsis.
    """
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength
    lines: list[str] = []
    for paragraph in drawable(str(text)).split("\n"):
        line = ""
        for word in paragraph.split(" "):
            candidate = f"{line} {word}" if line else word
            if measure(candidate, font=font) <= width:
                line = candidate
                continue
            if line:
                lines.append(line)
            while measure(word, font=font) > width and len(word) > 1:  # one over-long word
                cut = len(word)
                while cut > 1 and measure(word[:cut], font=font) > width:
                    cut -= 1
                lines.append(word[:cut])
                word = word[cut:]
            line = word
        lines.append(line)
    if max_lines is not None and len(lines) > max_lines:
        lines = lines[:max_lines]
        last = lines[-1]
        while last and measure(last + "…", font=font) > width:
            last = last[:-1]
        lines[-1] = last + "…"
    return lines


def cell_scale(width: int, height: int, min_cell: int = MIN_CELL) -> int:
    """The whole enlargement factor that brings the smaller side of an image to ``min_cell``."""
    return max(1, math.ceil(min_cell / max(1, min(width, height))))


#: A box drawn on a cell: ``(label, (x0, y0, x1, y1) in the image's pixels, verdict right)``.
CellBox = tuple[str, Sequence[float], bool]


def labelled_grid(rows: Sequence[Sequence[Image.Image]], row_labels: Optional[Sequence[str]] = None,
                  column_labels: Optional[Sequence[str]] = None, title: Optional[str] = None,
                  min_cell: int = MIN_CELL, label_width: int = 160, max_cell: Optional[int] = None,
                  notes: Optional[Sequence[Sequence[Sequence[str]]]] = None,
                  boxes: Optional[Sequence[Sequence[Sequence[CellBox]]]] = None) -> Image.Image:
    """Paste ``rows`` of images into one labelled grid.

    Args:
        rows: ``rows[r][c]`` is the image in row ``r``, column ``c``; rows may be shorter than
            the longest one (their missing cells stay blank). Every cell is as large as the
            largest image, enlarged with nearest-neighbour resampling to at least ``min_cell``
            pixels on its smaller side.
        row_labels: One label per row, drawn left of it and wrapped to ``label_width`` pixels
            (e.g. ``"a cat <R> a stone\\nseed 0"``). ``None``: no label column.
        column_labels: One header per column, wrapped to the cell width (e.g. ``"λ = 0.6"``).
            ``None``: no header row.
        title: One line over the whole grid (e.g. the run and the step).
        min_cell: Smallest cell side in pixels.
        label_width: Width of the row-label column in pixels.
        max_cell: Largest cell side in pixels: larger images are shrunk (bicubic) to fit it.
        notes: ``notes[r][c]``: lines written under cell ``(r, c)`` (an evaluation's verdicts).
        boxes: ``boxes[r][c]``: boxes drawn on cell ``(r, c)``, green when the verdict was
            right and red when wrong (what a detector found).

    Returns:
        An RGB image; cell ``(r, c)`` starts at ``(x0 + c * cell_w, y0 + r * cell_h)`` where
        ``x0`` is the label column's width and ``y0`` the height of the title and headers.
    """
    if not rows or not any(rows):
        raise ValueError("labelled_grid needs at least one image")
    if row_labels is not None and len(row_labels) != len(rows):
        raise ValueError(f"{len(row_labels)} row labels for {len(rows)} rows")
    cols = max(len(r) for r in rows)
    if column_labels is not None and len(column_labels) != cols:
        raise ValueError(f"{len(column_labels)} column labels for {cols} columns")
    width = max(img.size[0] for row in rows for img in row)
    height = max(img.size[1] for row in rows for img in row)
    scale: float = cell_scale(width, height, min_cell)
    if max_cell is not None and max(width, height) * scale > max_cell:
        scale = max_cell / max(width, height)
    cell_w, cell_h = max(1, round(width * scale)), max(1, round(height * scale))

    font = default_font()
    ascent, descent = font.getmetrics() if hasattr(font, "getmetrics") else (FONT_SIZE, 2)
    line_h = ascent + descent + 2
    max_row_lines = max(1, (cell_h - 2 * _PAD) // line_h)
    row_text = [wrap_text(label, font, label_width - 2 * _PAD, max_row_lines) for label in row_labels or []]
    col_text = [wrap_text(label, font, cell_w - 2 * _PAD, 3) for label in column_labels or []]
    title_text = wrap_text(title, font, label_width * bool(row_labels) + cols * cell_w - 2 * _PAD, 2) if title else []

    x0 = label_width if row_labels is not None else 0
    title_h = len(title_text) * line_h + 2 * _PAD if title_text else 0
    header_h = max(len(t) for t in col_text) * line_h + 2 * _PAD if col_text else 0
    y0 = title_h + header_h
    note_text = [[[line for note in cell for line in wrap_text(note, font, cell_w - 2 * _PAD, 1)] for cell in row]
                 for row in notes or []]
    band = max([len(cell) for row in note_text for cell in row] + [0]) * line_h + (_PAD if notes else 0)
    row_h = cell_h + band
    grid = Image.new("RGB", (x0 + cols * cell_w, y0 + len(rows) * row_h), _BACKGROUND)
    draw = ImageDraw.Draw(grid)
    for i, line in enumerate(title_text):
        draw.text((_PAD, _PAD + i * line_h), line, fill=_INK, font=font)
    for c, lines in enumerate(col_text):
        for i, line in enumerate(lines):
            w = draw.textlength(line, font=font)
            draw.text((x0 + c * cell_w + (cell_w - w) / 2, title_h + _PAD + i * line_h), line, fill=_INK, font=font)
    for r, row in enumerate(rows):
        top = y0 + r * row_h
        if row_text:
            lines = row_text[r]
            start = top + max(_PAD, (cell_h - len(lines) * line_h) // 2)
            for i, line in enumerate(lines):
                draw.text((_PAD, start + i * line_h), line, fill=_INK, font=font)
        for c, img in enumerate(row):
            img = img.convert("RGB")
            s = scale
            if s != 1:
                size = (max(1, round(img.size[0] * s)), max(1, round(img.size[1] * s)))
                img = img.resize(size, Image.Resampling.NEAREST if s > 1 else Image.Resampling.BICUBIC)
            left = x0 + c * cell_w
            grid.paste(img, (left, top))
            for label, (bx0, by0, bx1, by1), ok in (boxes[r][c] if boxes else ()):
                colour = (0, 170, 0) if ok else (220, 0, 0)
                rect = [left + bx0 * s, top + by0 * s, left + bx1 * s - 1, top + by1 * s - 1]
                rect[2], rect[3] = max(rect[0], rect[2]), max(rect[1], rect[3])  # degenerate boxes
                draw.rectangle(rect, outline=colour, width=2)
                draw.text((rect[0] + 2, rect[1] + 1), drawable(label)[:12], fill=colour, font=font)
            for i, line in enumerate(note_text[r][c] if note_text else ()):
                draw.text((left + _PAD, top + cell_h + _PAD // 2 + i * line_h), line, fill=_INK, font=font)
    return grid


#: Verdict bar colours: right, right with a caveat (e.g. a shape misread), wrong.
VERDICT_COLOURS = {"right": (40, 170, 60), "partly": (230, 150, 20), "wrong": (210, 40, 40)}


def verdict_tile(image: Image.Image, verdict: str, text: str = "", min_cell: int = 96, lines: int = 2) -> Image.Image:
    """``image`` enlarged (nearest neighbour) to at least ``min_cell`` pixels, with a bar under it
    in the colour of ``verdict`` (a key of :data:`VERDICT_COLOURS`) carrying ``text``, wrapped to
    at most ``lines`` lines: why the verdict is what it is ("square on top", "circle not found")."""
    img = image.convert("RGB")
    scale = cell_scale(*img.size, min_cell)
    img = img.resize((img.size[0] * scale, img.size[1] * scale), Image.Resampling.NEAREST)
    font = default_font()
    ascent, descent = font.getmetrics() if hasattr(font, "getmetrics") else (FONT_SIZE, 2)
    line_h = ascent + descent + 1
    bar_h = lines * line_h + 2 * _PAD
    out = Image.new("RGB", (img.size[0], img.size[1] + bar_h), VERDICT_COLOURS[verdict])
    out.paste(img, (0, 0))
    draw = ImageDraw.Draw(out)
    for i, line in enumerate(wrap_text(text, font, img.size[0] - 2 * _PAD, lines)):
        w = draw.textlength(line, font=font)
        draw.text(((img.size[0] - w) / 2, img.size[1] + _PAD + i * line_h), line, fill="white", font=font)
    return out


def strip(images: Sequence[Image.Image], caption: str = "", gap: int = 2, margin: int = 0) -> Image.Image:
    """Images side by side (``gap`` pixels apart, ``margin`` blank pixels after the last) under an
    optional one-line ``caption``: one grid cell holding several seeds."""
    font = default_font()
    ascent, descent = font.getmetrics() if hasattr(font, "getmetrics") else (FONT_SIZE, 2)
    top = ascent + descent + 2 * _PAD if caption else 0
    width = sum(im.size[0] for im in images) + gap * (len(images) - 1) + margin
    out = Image.new("RGB", (width, top + max(im.size[1] for im in images)), _BACKGROUND)
    if caption:
        ImageDraw.Draw(out).text((_PAD, _PAD), drawable(caption), fill=_INK, font=font)
    x = 0
    for im in images:
        out.paste(im.convert("RGB"), (x, top))
        x += im.size[0] + gap
    return out


def flat_images(rows: Sequence[Sequence[Image.Image]]) -> tuple[int, int]:
    """``(flat, total)``: how many of the images hold a single colour (every pixel within one
    level of every other in each channel, as a black render from NaN latents does)."""
    import numpy as np

    flat = total = 0
    for row in rows:
        for img in row:
            array = np.asarray(img.convert("RGB"), dtype=np.int16)
            total += 1
            flat += int((array.max(axis=(0, 1)) - array.min(axis=(0, 1)) <= 1).all())
    return flat, total


def seed_labels(seed: int, count: int) -> list[str]:
    """Column headers ``"seed s"`` for ``count`` images drawn with seeds ``seed, seed + 1, ...``."""
    return [f"seed {seed + i}" for i in range(count)]


__all__ = ["MIN_CELL", "VERDICT_COLOURS", "cell_scale", "default_font", "flat_images", "labelled_grid", "seed_labels",
           "strip", "verdict_tile", "wrap_text"]
