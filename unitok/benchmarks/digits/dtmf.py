"""A Goertzel DTMF decoder: the digit sequence dialled in a waveform.

The waveform is cut into 25.6 ms frames (205 samples at 8 kHz, the classic DTMF frame: row
frequencies 73 Hz apart stay separate), 10 ms apart. In each frame the Goertzel recursion gives
the power at the four row and three column frequencies. A frame holds a key when its strongest
row and strongest column each beat the runner-up of their group by 6 dB and together carry most
of the frame's energy. Runs of at least 40 ms of one key are the dialled digits; a pause (or a
different key) separates them; a dropout of up to 20 ms inside a tone (vocoder artefacts) does not,
as the shortest pause between tones (60 ms in digits world) leaves at least three silent frames.
"""

from __future__ import annotations

import numpy as np

from unitok.benchmarks.digits.tones import COLUMN_HZ, KEYPAD, ROW_HZ

FRAME_SECONDS = 0.0256
HOP_SECONDS = 0.010
MIN_TONE_SECONDS = 0.040
SILENCE_RMS = 0.01  # frames quieter than this hold no key
DOMINANCE = 4.0  # strongest over runner-up, in power (6 dB)
TONE_SHARE = 0.5  # share of the frame's energy the row + column pair must carry
MAX_DROPOUT_FRAMES = 2  # key-less frames bridged inside one tone

_KEY_OF = {rc: digit for digit, rc in KEYPAD.items()}


def goertzel_power(frames_FN: np.ndarray, frequencies: np.ndarray, sample_rate: int) -> np.ndarray:
    """(F, len(frequencies)) power |X(f)|² of every frame at every frequency, by Goertzel's recursion."""
    coeff = 2 * np.cos(2 * np.pi * frequencies / sample_rate)  # (K,)
    s1 = np.zeros((frames_FN.shape[0], len(frequencies)))
    s2 = np.zeros_like(s1)
    for n in range(frames_FN.shape[1]):
        s1, s2 = frames_FN[:, n : n + 1] + coeff * s1 - s2, s1
    return s1**2 + s2**2 - coeff * s1 * s2


def frame_keys(waveform: np.ndarray, sample_rate: int) -> np.ndarray:
    """(F,) the key held in every frame, -1 where none."""
    size, hop = round(FRAME_SECONDS * sample_rate), round(HOP_SECONDS * sample_rate)
    x = np.asarray(waveform, dtype=np.float64).reshape(-1)
    if len(x) < size:
        return np.full(0, -1)
    frames = np.lib.stride_tricks.sliding_window_view(x, size)[::hop]  # (F, size)
    rows = goertzel_power(frames, np.array(ROW_HZ, dtype=np.float64), sample_rate)
    cols = goertzel_power(frames, np.array(COLUMN_HZ, dtype=np.float64), sample_rate)
    energy = (frames**2).sum(1)
    keys = np.full(len(frames), -1)
    for f in range(len(frames)):
        if np.sqrt(energy[f] / size) < SILENCE_RMS:
            continue
        r, c = _dominant(rows[f]), _dominant(cols[f])
        # A sinusoid of amplitude A carries N·A²/2 energy and |X|² = (N·A/2)²: share = 2|X|²/(N·E).
        share = 2 * (rows[f].max() + cols[f].max()) / (size * energy[f])
        if r is not None and c is not None and share >= TONE_SHARE:
            keys[f] = _KEY_OF.get((r, c), -1)
    return keys


def decode_dtmf(waveform: np.ndarray, sample_rate: int) -> tuple[int, ...]:
    """The digits dialled in `waveform`, in order."""
    keys = _bridge_dropouts(frame_keys(waveform, sample_rate))
    min_frames = max(1, round((MIN_TONE_SECONDS - FRAME_SECONDS) / HOP_SECONDS) + 1)
    digits, run_key, run_length = [], -1, 0
    for key in [*keys.tolist(), -1]:
        if key == run_key:
            run_length += 1
            continue
        if run_key >= 0 and run_length >= min_frames:
            digits.append(run_key)
        run_key, run_length = key, 1
    return tuple(digits)


def _dominant(power: np.ndarray) -> int | None:
    order = np.argsort(power)[::-1]
    return int(order[0]) if power[order[0]] >= DOMINANCE * power[order[1]] else None


def _bridge_dropouts(keys: np.ndarray) -> np.ndarray:
    """Fill runs of at most MAX_DROPOUT_FRAMES key-less frames that have the same key on both sides."""
    keys = keys.copy()
    held = np.flatnonzero(keys >= 0)
    for left, right in zip(held[:-1], held[1:]):
        if 1 < right - left <= MAX_DROPOUT_FRAMES + 1 and keys[left] == keys[right]:
            keys[left + 1 : right] = keys[left]
    return keys


def dtmf_roundtrip_accuracy(tokenizer, items, seed: int = 0, batch_size: int = 64) -> float:
    """Share of clips whose digits survive encode → ids → decode → vocoder → Goertzel exactly.

    `tokenizer` is an audio `MediaTokenizer`; `items` are digits-world `ToneItem`s.
    """
    from unitok.benchmarks.digits.tones import dtmf_waveform
    from unitok.tokenizer.adapters.audio import Audio

    rate = tokenizer.adapter.config.sample_rate
    correct = 0
    for start in range(0, len(items), batch_size):
        batch = items[start : start + batch_size]
        clips = [Audio(dtmf_waveform(it.clip, rate), rate) for it in batch]
        ids = tokenizer.encode(clips, seed=[seed + start + i for i in range(len(batch))])
        decoded = tokenizer.decode(ids)
        correct += sum(decode_dtmf(a.samples, rate) == it.clip.digits for a, it in zip(decoded, batch))
    return correct / max(len(items), 1)
