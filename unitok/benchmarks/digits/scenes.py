"""Digits world scenes: what a scene is, how it is captioned, and the train/held-out splits.

A scene is one real handwritten digit (scikit-learn's ``load_digits``) painted in one of six
colours, at one of three horizontal positions and one of two sizes, on a black background.
Everything here is modality-free; ``images.py`` turns a scene into pixels.

Held-out evaluation tests two kinds of generalisation at once:
- held-out *digit images*: each class's scanned digits are split into a train and a held-out pool;
- held-out *combinations*: for every digit one colour never appears with it in training.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from sklearn.datasets import load_digits

from unitok.core.config import Config, bounded
from unitok.core.errors import UnitokError

# Saturated, mutually distant colours, so a pixel reader separates them even on noisy samples.
# Every colour's brightest channel is 230, so the ink (max over RGB) of a render is colour-blind.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 230, 40),
    "blue": (40, 80, 230),
    "yellow": (230, 220, 40),
    "magenta": (230, 40, 230),
    "cyan": (40, 220, 230),
}
COLOR_NAMES: tuple[str, ...] = tuple(COLORS)
POSITIONS: tuple[str, ...] = ("left", "center", "right")
SIZES: tuple[str, ...] = ("small", "large")
DIGIT_WORDS: tuple[str, ...] = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
)
JITTERS: tuple[int, ...] = (-1, 0, 1)  # vertical jitter in pixels at image_size 32

# Phrase and word variants; the first entry of each is the canonical one.
POSITION_PHRASES: dict[str, tuple[str, ...]] = {
    "left": ("on the left", "at the left", "to the left"),
    "center": ("in the center", "in the middle", "at the center"),
    "right": ("on the right", "at the right", "to the right"),
}
SIZE_WORDS: dict[str, tuple[str, ...]] = {
    "small": ("small", "tiny", "little"),
    "large": ("large", "big"),
}

# Caption templates. No article ever precedes {digit} directly ("a 8" / "an eight").
# Some templates leave out the position or the size, so prompts may be partial.
TEMPLATES: tuple[str, ...] = (
    "a {color} {digit} {position}",
    "a {size} {color} {digit} {position}",
    "a {color} {digit}",
    "a {size} {color} {digit}",
    "the digit {digit} in {color} {position}",
    "{position} there is a {size} {color} {digit}",
    "a {size} {digit} painted {color}",
    "{color} number {digit} {position}",
)


@dataclass(frozen=True)
class Scene:
    """Everything needed to re-render a scene identically."""

    digit: int
    color: str
    position: str
    size: str
    digit_index: int  # index into load_digits()
    jitter_y: int = 0  # vertical offset in pixels at image_size 32, one of JITTERS

    def __post_init__(self) -> None:
        if not 0 <= self.digit <= 9:
            raise UnitokError(f"digit must be 0..9, got {self.digit}")
        if self.color not in COLORS:
            raise UnitokError(f"color must be one of {COLOR_NAMES}, got {self.color!r}")
        if self.position not in POSITIONS:
            raise UnitokError(f"position must be one of {POSITIONS}, got {self.position!r}")
        if self.size not in SIZES:
            raise UnitokError(f"size must be one of {SIZES}, got {self.size!r}")
        if self.jitter_y not in JITTERS:
            raise UnitokError(f"jitter_y must be one of {JITTERS}, got {self.jitter_y}")


@dataclass(frozen=True)
class Item:
    """A captioned scene of one split; ``key`` is a stable id such as "train-000123"."""

    scene: Scene
    caption: str
    key: str
    unseen_combo: bool


@dataclass(frozen=True)
class DigitsWorldConfig(Config):
    """The image part of digits world (a recipe's ``data.image.digits_world``)."""

    seed: int = bounded(0, ge=0)
    image_size: int = bounded(32, ge=16)
    train_scenes: int = bounded(8000, ge=0)
    heldout_scenes: int = bounded(500, ge=0)
    # share of each class's real digit images kept out of training
    heldout_digit_fraction: float = bounded(0.2, gt=0, lt=1)


# ----------------------------------------------------------------------------- captions


def canonical_caption(digit: int, color: str, position: str | None = None, size: str | None = None) -> str:
    """The canonical wording, e.g. "a red 7 on the left", "a blue 3", "a large green 0 in the center"."""
    words = ["a"]
    if size is not None:
        words.append(SIZE_WORDS[size][0])
    words += [color, str(digit)]
    if position is not None:
        words.append(POSITION_PHRASES[position][0])
    return " ".join(words)


def caption_for(scene: Scene, rng: random.Random) -> str:
    """A caption for ``scene`` in a randomly chosen template and wording."""
    template = rng.choice(TEMPLATES)
    digit = str(scene.digit) if rng.random() < 0.5 else DIGIT_WORDS[scene.digit]
    return template.format(
        color=scene.color,
        digit=digit,
        position=rng.choice(POSITION_PHRASES[scene.position]),
        size=rng.choice(SIZE_WORDS[scene.size]),
    )


_DIGIT_TOKENS = {str(d): d for d in range(10)} | {word: d for d, word in enumerate(DIGIT_WORDS)}
_POSITION_TOKENS = {"left": "left", "right": "right", "center": "center", "centre": "center", "middle": "center"}
_SIZE_TOKENS = {word: size for size, words in SIZE_WORDS.items() for word in words}


def parse_caption(text: str) -> dict[str, int | str | None]:
    """Read digit, color, position and size from a caption; a missing attribute is None.

    The first matching word wins for each attribute, so free text such as a model's
    image-to-text output is read the same way as the templates.
    """
    tokens = re.findall(r"[a-z]+|\d+", text.lower())

    def first(lookup: dict) -> int | str | None:
        return next((lookup[t] for t in tokens if t in lookup), None)

    return {
        "digit": first(_DIGIT_TOKENS),
        "color": first({name: name for name in COLORS}),
        "position": first(_POSITION_TOKENS),
        "size": first(_SIZE_TOKENS),
    }


# ----------------------------------------------------------------------------- splits


@lru_cache(maxsize=1)
def load_digit_images() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 real digits: intensities (N, 8, 8) float32 in [0, 1] and labels (N,) int64."""
    data = load_digits()
    images = (data.images / 16.0).astype(np.float32)
    images.setflags(write=False)
    labels = data.target.astype(np.int64)
    labels.setflags(write=False)
    return images, labels


def digit_pools(cfg: DigitsWorldConfig) -> dict[str, dict[int, list[int]]]:
    """Indices of real digit images per split and class: {"train"|"heldout": {digit: [index, ...]}}."""
    _, labels = load_digit_images()
    rng = np.random.default_rng(cfg.seed)
    pools: dict[str, dict[int, list[int]]] = {"train": {}, "heldout": {}}
    for digit in range(10):
        indices = rng.permutation(np.flatnonzero(labels == digit))
        n_heldout = max(1, round(cfg.heldout_digit_fraction * len(indices)))
        pools["heldout"][digit] = sorted(indices[:n_heldout].tolist())
        pools["train"][digit] = sorted(indices[n_heldout:].tolist())
    return pools


def heldout_color(digit: int) -> str:
    """The one colour never paired with ``digit`` in training; every colour is held out for some digit."""
    return COLOR_NAMES[digit % len(COLOR_NAMES)]


def sample_scene(rng: random.Random, digit: int, color: str, pool: dict[int, list[int]]) -> Scene:
    """A scene of ``digit`` in ``color`` with a random position, size, jitter and image from ``pool``."""
    return Scene(
        digit=digit,
        color=color,
        position=rng.choice(POSITIONS),
        size=rng.choice(SIZES),
        digit_index=rng.choice(pool[digit]),
        jitter_y=rng.choice(JITTERS),
    )


def build_digits_world(cfg: DigitsWorldConfig) -> dict[str, list[Item]]:
    """The "train" and "heldout" splits; identical items for the same config.

    Training scenes use train-pool images and seen colour/digit combinations only.
    Held-out scenes use held-out-pool images; every other one (half) uses the unseen combination.
    """
    pools = digit_pools(cfg)
    splits: dict[str, list[Item]] = {}
    for split, n_scenes in (("train", cfg.train_scenes), ("heldout", cfg.heldout_scenes)):
        rng = random.Random(f"digits-world/{cfg.seed}/{split}")  # str seeds hash deterministically
        items = []
        for i in range(n_scenes):
            digit = rng.randrange(10)
            unseen = split == "heldout" and i % 2 == 0
            seen_colors = [c for c in COLOR_NAMES if c != heldout_color(digit)]
            color = heldout_color(digit) if unseen else rng.choice(seen_colors)
            scene = sample_scene(rng, digit, color, pools[split])
            items.append(Item(scene, caption_for(scene, rng), f"{split}-{i:06d}", unseen))
        splits[split] = items
    return splits
