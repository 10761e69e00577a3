"""Pictures for people: labelled sample grids and noise-to-image trajectories."""

from __future__ import annotations

from typing import Sequence

from PIL import Image, ImageDraw, ImageFont


def labelled_grid(images: Sequence[Image.Image], labels: Sequence[str], columns: int = 8, scale: int = 3,
                  label_height: int = 24) -> Image.Image:
    """Images upscaled `scale`× (nearest, so pixels stay honest) with a caption under each."""
    w, h = images[0].width * scale, images[0].height * scale
    cell_w = max(w, 96)
    rows = -(-len(images) // columns)
    grid = Image.new("RGB", (columns * cell_w, rows * (h + label_height)), "white")
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default()
    for i, (image, label) in enumerate(zip(images, labels)):
        x, y = (i % columns) * cell_w, (i // columns) * (h + label_height)
        grid.paste(image.resize((w, h), Image.Resampling.NEAREST), (x + (cell_w - w) // 2, y))
        for line_index, line in enumerate(_wrap(label, cell_w // 6)[:2]):
            draw.text((x + 2, y + h + 1 + 11 * line_index), line, fill="black", font=font)
    return grid


def trajectory_grid(rows: Sequence[Sequence[Image.Image]], row_labels: Sequence[str],
                    column_labels: Sequence[str], scale: int = 3) -> Image.Image:
    """One row per sample, one column per step (noisiest left)."""
    w, h = rows[0][0].width * scale, rows[0][0].height * scale
    left, top = 150, 16
    grid = Image.new("RGB", (left + len(column_labels) * (w + 2), top + len(rows) * (h + 2)), "white")
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default()
    for c, label in enumerate(column_labels):
        draw.text((left + c * (w + 2) + 2, 2), label, fill="black", font=font)
    for r, (images, label) in enumerate(zip(rows, row_labels)):
        y = top + r * (h + 2)
        for line_index, line in enumerate(_wrap(label, 24)[:3]):
            draw.text((2, y + 2 + 11 * line_index), line, fill="black", font=font)
        for c, image in enumerate(images):
            grid.paste(image.resize((w, h), Image.Resampling.NEAREST), (left + c * (w + 2), y))
    return grid


def _wrap(text: str, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return lines + ([line] if line else [])
