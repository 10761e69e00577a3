"""Pictures for people: labelled sample grids, noise-to-image trajectories and loss curves."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from matplotlib.figure import Figure
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


def plot_losses(step_log: Path, history: dict, out: Path) -> None:
    """loss.png: the training loss of every step (rank 0's step log) and the held-out loss of every eval."""
    lines = [json.loads(line) for line in step_log.read_text().splitlines()]
    figure = Figure(figsize=(7, 4), dpi=100, layout="tight")  # no pyplot: no global backend state
    axes = figure.subplots()
    axes.plot([r["step"] for r in lines], [r["loss"] for r in lines], lw=0.6, alpha=0.7, label="training (per step)")
    evals = history.get("evals", [])
    if evals:
        axes.plot([e["step"] for e in evals], [e["loss"] for e in evals], "o-", label="held-out")
    axes.set(xlabel="step", ylabel="loss (nats per target)", yscale="log")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.savefig(out)
