"""Draw which patches a method keeps: pivotal (orange, outlined) and
complementary (blue) tinted, dropped patches dimmed (video frames: those
dropped as temporally redundant tinted purple), a caption with the counts;
panels side by side. Methods without pivots show all kept in blue."""

from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ...runtime.methods.base import Selection

PIVOTAL = (255, 80, 0)          # orange
COMPLEMENTARY = (0, 190, 255)   # light blue
REDUNDANT = (150, 60, 200)      # purple: dropped, same as the previous frame
DIM = 0.3                       # brightness left on dropped patches
TINT = 0.35                     # share of the colour on kept patches
CAPTION_HEIGHT = 40


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:           # Pillow < 10.1 has one fixed-size default font
        return ImageFont.load_default()


def cell_colors(selection: Selection, num_patches: int, redundant=None) -> np.ndarray:
    """Per patch: 0 dropped, 1 complementary, 2 pivotal, 3 dropped as redundant
    (``redundant``: (num_patches,) bool, video frames)."""
    kind = np.zeros(num_patches, dtype=np.int64)
    if redundant is not None:
        kind[redundant.cpu().numpy()] = 3
    kind[selection.indices.cpu().numpy()] = 1
    kind[selection.pivotal.cpu().numpy()] = 2
    return kind


def _merged_note(selection: Selection) -> str:
    """' + 11 merged' for a merging method (its [CLS] and merged rows are no single patch)."""
    extra = selection.num_tokens - int(selection.indices.numel())
    return f" + {extra} merged" if extra else ""


def describe(selection: Selection, num_patches: int) -> str:
    """'kept 144/576 (57 pivotal, 87 complementary)', or without pivots 'kept 144/576'."""
    text = f"kept {selection.indices.numel()}/{num_patches}" + _merged_note(selection)
    if selection.num_pivotal:
        text += f" ({selection.num_pivotal} pivotal, {selection.num_complementary} complementary)"
    return text


def draw_selection(view: Image.Image, grid: Tuple[int, int], selection: Selection, title: str, scale: int = 2,
                   redundant=None) -> Image.Image:
    """``view`` (the square picture the model saw) enlarged ``scale`` times,
    marked, with a caption strip underneath."""
    rows, cols = grid
    picture = view.convert("RGB").resize((view.width * scale, view.height * scale), Image.NEAREST)
    pixels = np.asarray(picture, dtype=np.float32).copy()
    cell_h, cell_w = picture.height // rows, picture.width // cols
    cells = cell_colors(selection, rows * cols, redundant).reshape(rows, cols)
    kind = np.zeros(pixels.shape[:2], dtype=np.int64)   # per pixel; a margin not covered by cells stays "dropped"
    kind[: rows * cell_h, : cols * cell_w] = np.repeat(np.repeat(cells, cell_h, 0), cell_w, 1)
    pixels[(kind == 0) | (kind == 3)] *= DIM
    for code, color in ((1, COMPLEMENTARY), (2, PIVOTAL), (3, REDUNDANT)):
        pixels[kind == code] = (1 - TINT) * pixels[kind == code] + TINT * np.array(color, dtype=np.float32)
    marked = Image.fromarray(pixels.round().clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(marked)
    for index in selection.pivotal.tolist():
        row, col = divmod(index, cols)
        draw.rectangle([col * cell_w, row * cell_h, (col + 1) * cell_w - 1, (row + 1) * cell_h - 1], outline=PIVOTAL)

    panel = Image.new("RGB", (marked.width, marked.height + CAPTION_HEIGHT), "white")
    panel.paste(marked, (0, 0))
    caption = f"{title}: kept {selection.indices.numel()}/{rows * cols}{_merged_note(selection)}\n" + (
        f"{selection.num_pivotal} pivotal (orange), {selection.num_complementary} complementary (blue)"
        if selection.num_pivotal else "no pivot stage: all kept in blue") + (
        f"; {int(redundant.sum())} redundant (purple)" if redundant is not None else "")
    ImageDraw.Draw(panel).multiline_text((6, marked.height + 3), caption, fill="black", font=_font(14), spacing=3)
    return panel


def side_by_side(panels: Sequence[Image.Image], gap: int = 8) -> Image.Image:
    """Panels in one row, left to right, on white."""
    width = sum(p.width for p in panels) + gap * (len(panels) - 1)
    sheet = Image.new("RGB", (width, max(p.height for p in panels)), "white")
    x = 0
    for panel in panels:
        sheet.paste(panel, (x, 0))
        x += panel.width + gap
    return sheet


def stacked(rows: Sequence[Image.Image], gap: int = 8) -> Image.Image:
    """Images one under another, top to bottom, on white."""
    sheet = Image.new("RGB", (max(r.width for r in rows), sum(r.height for r in rows) + gap * (len(rows) - 1)), "white")
    y = 0
    for row in rows:
        sheet.paste(row, (0, y))
        y += row.height + gap
    return sheet
