"""Digits world, audio: DTMF clips of 1–3 dialled digits, and their captions.

A clip is a few telephone keypad tones (each the sum of one row and one column frequency) with
pauses between them; tone lengths, pause lengths and levels vary, so the tokenizer and the
transformer cannot rely on fixed timing. Everything is deterministic by seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

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
            raise ValueError(f"a clip dials 1..{MAX_DIGITS} digits, got {len(self.digits)}")
        if any(d not in KEYPAD for d in self.digits):
            raise ValueError(f"digits must be 0..9, got {self.digits}")
        if not len(self.digits) == len(self.tone_seconds) == len(self.gap_seconds) == len(self.levels):
            raise ValueError("digits, tone_seconds, gap_seconds and levels must have one entry per digit")


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
