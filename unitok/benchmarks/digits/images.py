"""Digits world images: render scenes to RGB pixels and write captioned image folders.

Geometry at image_size 32 (everything scales with the image size):
- a small digit is 12 px square, a large one 18 px;
- horizontal centres: left = 9 and right = 23 (a large digit touches the border but stays inside),
  center = 16; vertically centred with a jitter of -1, 0 or +1 px.
The digit's 8x8 intensities, resized bilinearly, are the alpha of its colour over black.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from unitok.benchmarks.digits.scenes import COLORS, Item, Scene, load_digit_images

DIGIT_PIXELS_AT_32: dict[str, int] = {"small": 12, "large": 18}


def digit_pixels(size: str, image_size: int) -> int:
    """Side of the square a digit of ``size`` is drawn in."""
    return round(DIGIT_PIXELS_AT_32[size] * image_size / 32)


def position_centers(image_size: int) -> dict[str, float]:
    """Horizontal centre (in pixels from the left edge) of each position."""
    half_large = digit_pixels("large", image_size) / 2
    return {"left": half_large, "center": image_size / 2, "right": image_size - half_large}


@lru_cache(maxsize=None)
def digit_alpha(digit_index: int, pixels: int) -> np.ndarray:
    """(pixels, pixels) float32 alpha in [0, 1]: one real digit resized bilinearly."""
    images, _ = load_digit_images()
    resized = Image.fromarray(images[digit_index]).resize((pixels, pixels), Image.BILINEAR)
    alpha = np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)
    alpha.setflags(write=False)
    return alpha


def render_array(scene: Scene, image_size: int = 32) -> np.ndarray:
    """(image_size, image_size, 3) uint8 rendering of ``scene``."""
    pixels = digit_pixels(scene.size, image_size)
    x0 = round(position_centers(image_size)[scene.position] - pixels / 2)
    y0 = round((image_size - pixels) / 2 + scene.jitter_y * image_size / 32)
    canvas = np.zeros((image_size, image_size, 3), dtype=np.float32)
    alpha = digit_alpha(scene.digit_index, pixels)[:, :, None]  # (P, P, 1)
    canvas[y0 : y0 + pixels, x0 : x0 + pixels] = alpha * np.asarray(COLORS[scene.color], dtype=np.float32)
    return np.rint(canvas).astype(np.uint8)


def render_scene(scene: Scene, image_size: int = 32) -> Image.Image:
    """RGB PIL image of ``scene``; deterministic."""
    return Image.fromarray(render_array(scene, image_size))


def real_renders(items: Sequence[Item | Scene], image_size: int = 32) -> np.ndarray:
    """(N, image_size, image_size, 3) uint8 renderings of items (or bare scenes), for evaluation."""
    scenes = [item.scene if isinstance(item, Item) else item for item in items]
    out = np.zeros((len(scenes), image_size, image_size, 3), dtype=np.uint8)
    for i, scene in enumerate(scenes):
        out[i] = render_array(scene, image_size)
    return out


def image_file(item: Item) -> str:
    """Where `write_image_folder` puts an item's image, relative to the folder (its shard key)."""
    return f"images/{item.key}.png"


def write_image_folder(items: Sequence[Item], directory: str | os.PathLike, image_size: int = 32) -> Path:
    """Write ``directory/images/<key>.png`` and ``directory/captions.jsonl``; returns ``directory``.

    Each jsonl line is {"file": "images/<key>.png", "caption", "key", "digit", "color",
    "position", "size", "unseen_combo"}; the jsonl is written last and atomically, so its
    presence means every image it lists is on disk.
    """
    directory = Path(directory)
    (directory / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for item in items:
        file = image_file(item)
        render_scene(item.scene, image_size).save(directory / file, compress_level=1)
        record = {
            "file": file,
            "caption": item.caption,
            "key": item.key,
            "digit": item.scene.digit,
            "color": item.scene.color,
            "position": item.scene.position,
            "size": item.scene.size,
            "unseen_combo": item.unseen_combo,
        }
        lines.append(json.dumps(record) + "\n")
    tmp = directory / "captions.jsonl.tmp"
    tmp.write_text("".join(lines), encoding="utf-8")
    os.replace(tmp, directory / "captions.jsonl")
    return directory
