"""Digits world, audio: DTMF clips of 1–3 dialled digits, and their captions.

A clip is a few telephone keypad tones (each the sum of one row and one column frequency) with
pauses between them; tone lengths, pause lengths and levels vary, so the tokenizer and the
transformer cannot rely on fixed timing. Everything is deterministic by seed.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from unitok.core.config import Config, bounded
from unitok.core.errors import UnitokError

ROW_HZ: tuple[int, ...] = (697, 770, 852, 941)
COLUMN_HZ: tuple[int, ...] = (1209, 1336, 1477)
KEYPAD: dict[int, tuple[int, int]] = {  # digit -> (row, column) on a telephone keypad
    1: (0, 0), 2: (0, 1), 3: (0, 2),
    4: (1, 0), 5: (1, 1), 6: (1, 2),
    7: (2, 0), 8: (2, 1), 9: (2, 2),
    0: (3, 1),
}
TONE_SECONDS = (0.10, 0.18)  # range of one tone's length
GAP_SECONDS = (0.06, 0.12)  # range of the pause after a tone
LEAD_SECONDS = (0.02, 0.08)  # range of the silence before the first tone
LEVELS = (0.3, 0.8)  # range of a tone's peak amplitude (full scale = 1)
MAX_DIGITS = 3
CLIP_SECONDS = MAX_DIGITS * (TONE_SECONDS[1] + GAP_SECONDS[1]) + LEAD_SECONDS[1]  # every clip fits


@dataclass(frozen=True)
class ToneClip:
    """Everything needed to re-synthesise a clip identically."""

    digits: tuple[int, ...]
    tone_seconds: tuple[float, ...]
    gap_seconds: tuple[float, ...]
    levels: tuple[float, ...]
    lead_seconds: float = 0.05

    def __post_init__(self) -> None:
        if not 1 <= len(self.digits) <= MAX_DIGITS:
            raise UnitokError(f"a clip dials 1..{MAX_DIGITS} digits, got {len(self.digits)}")
        if any(d not in KEYPAD for d in self.digits):
            raise UnitokError(f"digits must be 0..9, got {self.digits}")
        if not len(self.digits) == len(self.tone_seconds) == len(self.gap_seconds) == len(self.levels):
            raise UnitokError("digits, tone_seconds, gap_seconds and levels must have one entry per digit")


def sample_tone_clip(rng: random.Random, digits: tuple[int, ...]) -> ToneClip:
    n = len(digits)
    return ToneClip(
        digits=digits,
        tone_seconds=tuple(round(rng.uniform(*TONE_SECONDS), 3) for _ in range(n)),
        gap_seconds=tuple(round(rng.uniform(*GAP_SECONDS), 3) for _ in range(n)),
        levels=tuple(round(rng.uniform(*LEVELS), 3) for _ in range(n)),
        lead_seconds=round(rng.uniform(*LEAD_SECONDS), 3),
    )


def dtmf_waveform(clip: ToneClip, sample_rate: int, seconds: float = CLIP_SECONDS) -> np.ndarray:
    """(samples,) float32 mono waveform in [-1, 1], zero-padded to `seconds`."""
    out = np.zeros(round(seconds * sample_rate), dtype=np.float32)
    start = round(clip.lead_seconds * sample_rate)
    for digit, tone, gap, level in zip(clip.digits, clip.tone_seconds, clip.gap_seconds, clip.levels):
        length = round(tone * sample_rate)
        t = np.arange(length) / sample_rate
        row, column = KEYPAD[digit]
        wave = np.sin(2 * np.pi * ROW_HZ[row] * t) + np.sin(2 * np.pi * COLUMN_HZ[column] * t)
        ramp = np.minimum(1.0, np.minimum(np.arange(length), np.arange(length)[::-1]) / (0.005 * sample_rate))
        out[start : start + length] = (0.5 * level * wave * ramp)[: len(out) - start]  # 5 ms fades: no clicks
        start += length + round(gap * sample_rate)
    return out


# ----------------------------------------------------------------------------- captions

TONE_TEMPLATES: tuple[str, ...] = (
    "dial {spaced}",
    "the tones for {joined}",
    "dtmf {spaced}",
    "someone dials {spaced}",
    "keypad tones {spaced}",
)


def tone_caption(digits: tuple[int, ...], rng: random.Random) -> str:
    """e.g. "dial 4 7", "the tones for 4 and 7"."""
    words = [str(d) for d in digits]
    joined = words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]
    return rng.choice(TONE_TEMPLATES).format(spaced=" ".join(words), joined=joined)


def parse_tone_caption(text: str) -> tuple[int, ...]:
    """The dialled digits named in a tone caption, in order."""
    return tuple(int(ch) for ch in text if ch.isdigit())


# ----------------------------------------------------------------------------- splits


@dataclass(frozen=True)
class ToneItem:
    """A captioned DTMF clip of one split; ``key`` is a stable id such as "train-000123"."""

    clip: ToneClip
    caption: str
    key: str
    unseen_combo: bool


def is_heldout_pair(first: int, second: int) -> bool:
    """Ordered digit pairs never dialled one after the other in training (10 of the 100)."""
    return (first + 3 * second) % 10 == 7


def _has_heldout_pair(digits: tuple[int, ...]) -> bool:
    return any(is_heldout_pair(a, b) for a, b in zip(digits, digits[1:]))


def _sample_digits(rng: random.Random, want_unseen: bool) -> tuple[int, ...]:
    """1–3 digits; with `want_unseen` a sequence holding a held-out pair, else one free of them."""
    while True:
        digits = tuple(rng.randrange(10) for _ in range(rng.randint(2 if want_unseen else 1, MAX_DIGITS)))
        if _has_heldout_pair(digits) == want_unseen:
            return digits


@dataclass(frozen=True)
class ToneWorldConfig(Config):
    """The audio part of digits world (a recipe's ``data.audio.digits_world``)."""

    seed: int = bounded(0, ge=0)
    train_clips: int = bounded(4000, ge=0)
    heldout_clips: int = bounded(300, ge=0)
    # of the WAV files written; the tokenizer spec resamples to its own rate. The highest tone needs it
    sample_rate: int = bounded(8000, gt=2 * max(COLUMN_HZ))


def build_tone_world(world: ToneWorldConfig) -> dict[str, list[ToneItem]]:
    """The "train" and "heldout" splits; identical items for the same config.

    Training clips never dial a held-out pair of consecutive digits; every other held-out clip
    (half) does, which tests whether digits learned apart are dialled in new orders.
    """
    splits: dict[str, list[ToneItem]] = {}
    for split, n_clips in (("train", world.train_clips), ("heldout", world.heldout_clips)):
        rng = random.Random(f"digits-world-tones/{world.seed}/{split}")
        items = []
        for i in range(n_clips):
            unseen = split == "heldout" and i % 2 == 0
            clip = sample_tone_clip(rng, _sample_digits(rng, unseen))
            items.append(ToneItem(clip, tone_caption(clip.digits, rng), f"{split}-{i:06d}", unseen))
        splits[split] = items
    return splits


def audio_file(item: ToneItem) -> str:
    """The item's path inside a folder written by `write_audio_folder`."""
    return f"audio/{item.key}.wav"


def write_audio_folder(items: list[ToneItem], directory: str | os.PathLike, sample_rate: int = 8000) -> Path:
    """Write ``directory/audio/<key>.wav`` and ``directory/captions.jsonl``; returns ``directory``.

    Each jsonl line is {"file": "audio/<key>.wav", "caption", "key", "digits", "unseen_combo"};
    the jsonl is written last and atomically, like `write_image_folder`'s.
    """
    from unitok.tokenizer.adapters.audio import Audio  # the adapter writes the WAV files its loader reads back

    directory = Path(directory)
    (directory / "audio").mkdir(parents=True, exist_ok=True)
    lines = []
    for item in items:
        Audio(dtmf_waveform(item.clip, sample_rate), sample_rate).save(directory / audio_file(item))
        record = {"file": audio_file(item), "caption": item.caption, "key": item.key,
                  "digits": list(item.clip.digits), "unseen_combo": item.unseen_combo}
        lines.append(json.dumps(record) + "\n")
    tmp = directory / "captions.jsonl.tmp"
    tmp.write_text("".join(lines), encoding="utf-8")
    os.replace(tmp, directory / "captions.jsonl")
    return directory
