"""Digits world, video: short clips of a coloured digit moving in one of four directions.

A clip is one real handwritten digit (the same pools as the images) in one of the six colours,
drawn small and moved a fixed number of pixels per frame left, right, up or down from a random
start that keeps it inside the frame. Clips are written as MP4 and read back through decord, so
recipes go through the real video loader.

Held-out evaluation mirrors the images: held-out digit images, and for every digit one direction
that training never moves it in (half of the held-out clips use it).
"""

from __future__ import annotations

import json
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from unitok.benchmarks.digits.images import digit_alpha, digit_pixels
from unitok.benchmarks.digits.scenes import COLOR_NAMES, COLORS, DigitsWorldConfig, digit_pools, parse_caption
from unitok.core.config import Config, bounded

DIRECTIONS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
SPEED_AT_32 = 2  # pixels per frame at image_size 32
TEMPLATES: tuple[str, ...] = (
    "a {color} {digit} moving {direction}",
    "the digit {digit} in {color} moves {direction}",
    "a {color} {digit} sliding {direction}",
    "{color} number {digit} going {direction}",
)
_DIRECTION_WORDS = {name: name for name in DIRECTIONS}


@dataclass(frozen=True)
class ClipWorldConfig(Config):
    """The video part of digits world (a recipe's ``data.video.digits_world``)."""

    seed: int = bounded(0, ge=0)
    train_clips: int = bounded(2000, ge=0)
    heldout_clips: int = bounded(200, ge=0)
    frames: int = bounded(8, ge=2)  # a motion needs two frames to be seen
    image_size: int = bounded(32, ge=16)
    fps: float = bounded(8.0, gt=0)
    heldout_digit_fraction: float = bounded(0.2, gt=0, lt=1)  # as for images: the same split of real digit images

    def rules(self):
        travel = (max(self.frames, 2) - 1) * self.speed
        yield (digit_pixels("small", max(self.image_size, 16)) + travel <= self.image_size, "frames",
               f"{self.frames} frames at {self.speed} px per frame leave the {self.image_size} px frame")

    @property
    def speed(self) -> int:
        return max(1, round(SPEED_AT_32 * self.image_size / 32))

    def image_world(self) -> DigitsWorldConfig:
        """The image-world config with the same digit-image split (for the shared digit classifier)."""
        return DigitsWorldConfig(seed=self.seed, image_size=self.image_size,
                                 heldout_digit_fraction=self.heldout_digit_fraction)


@dataclass(frozen=True)
class Clip:
    """Everything needed to re-render a clip identically."""

    digit: int
    color: str
    direction: str
    digit_index: int  # index into load_digits()
    start: tuple[int, int]  # (x, y) of the digit's top-left corner in the first frame


@dataclass(frozen=True)
class ClipItem:
    clip: Clip
    caption: str
    key: str
    unseen_combo: bool


def heldout_direction(digit: int) -> str:
    """The one direction never paired with ``digit`` in training."""
    return list(DIRECTIONS)[digit % len(DIRECTIONS)]


def render_clip(clip: Clip, cfg: ClipWorldConfig) -> np.ndarray:
    """(frames, size, size, 3) uint8."""
    pixels = digit_pixels("small", cfg.image_size)
    alpha = digit_alpha(clip.digit_index, pixels)[:, :, None]
    dx, dy = DIRECTIONS[clip.direction]
    out = np.zeros((cfg.frames, cfg.image_size, cfg.image_size, 3), dtype=np.float32)
    for f in range(cfg.frames):
        x, y = clip.start[0] + dx * cfg.speed * f, clip.start[1] + dy * cfg.speed * f
        out[f, y : y + pixels, x : x + pixels] = alpha * np.asarray(COLORS[clip.color], dtype=np.float32)
    return np.rint(out).astype(np.uint8)


def clip_caption(clip: Clip, rng: random.Random) -> str:
    return rng.choice(TEMPLATES).format(color=clip.color, digit=clip.digit, direction=clip.direction)


def parse_clip_caption(text: str) -> dict[str, int | str | None]:
    """Digit, colour and direction named in a caption; a missing one is None."""
    read = parse_caption(text)
    words = re.findall(r"[a-z]+", text.lower())
    direction = next((_DIRECTION_WORDS[w] for w in words if w in _DIRECTION_WORDS), None)
    return {"digit": read["digit"], "color": read["color"], "direction": direction}


def _sample_clip(rng: random.Random, cfg: ClipWorldConfig, digit: int, direction: str, pool: list[int]) -> Clip:
    pixels, travel = digit_pixels("small", cfg.image_size), (cfg.frames - 1) * cfg.speed
    dx, dy = DIRECTIONS[direction]
    free = cfg.image_size - pixels  # start range on an axis without motion
    x = rng.randint(travel, free) if dx < 0 else rng.randint(0, free - travel) if dx > 0 else rng.randint(0, free)
    y = rng.randint(travel, free) if dy < 0 else rng.randint(0, free - travel) if dy > 0 else rng.randint(0, free)
    return Clip(digit, rng.choice(COLOR_NAMES), direction, rng.choice(pool), (x, y))


def build_clip_world(cfg: ClipWorldConfig) -> dict[str, list[ClipItem]]:
    """The "train" and "heldout" splits; identical items for the same config."""
    pools = digit_pools(cfg.image_world())
    splits: dict[str, list[ClipItem]] = {}
    for split, count in (("train", cfg.train_clips), ("heldout", cfg.heldout_clips)):
        rng = random.Random(f"digits-world-clips/{cfg.seed}/{split}")
        items = []
        for i in range(count):
            digit = rng.randrange(10)
            unseen = split == "heldout" and i % 2 == 0
            seen = [d for d in DIRECTIONS if d != heldout_direction(digit)]
            direction = heldout_direction(digit) if unseen else rng.choice(seen)
            clip = _sample_clip(rng, cfg, digit, direction, pools[split][digit])
            items.append(ClipItem(clip, clip_caption(clip, rng), f"{split}-{i:06d}", unseen))
        splits[split] = items
    return splits


def video_file(item: ClipItem) -> str:
    """The item's path inside a folder written by `write_video_folder`."""
    return f"videos/{item.key}.mp4"


def write_video_folder(items: list[ClipItem], directory: str | os.PathLike, cfg: ClipWorldConfig) -> Path:
    """Write ``directory/videos/<key>.mp4`` (PyAV) and ``directory/captions.jsonl``; returns ``directory``."""
    from unitok.tokenizer.adapters.video import Video  # the adapter writes the files its loader reads back

    directory = Path(directory)
    (directory / "videos").mkdir(parents=True, exist_ok=True)
    lines = []
    for item in items:
        Video(render_clip(item.clip, cfg), cfg.fps).save(directory / video_file(item))
        record = {"file": video_file(item), "caption": item.caption, "key": item.key, "digit": item.clip.digit,
                  "color": item.clip.color, "direction": item.clip.direction, "unseen_combo": item.unseen_combo}
        lines.append(json.dumps(record) + "\n")
    tmp = directory / "captions.jsonl.tmp"
    tmp.write_text("".join(lines), encoding="utf-8")
    os.replace(tmp, directory / "captions.jsonl")
    return directory
