"""Audio: any file decord reads <-> (1, n_mels, frames) log-mel tensors in [-1, 1].

Loading goes through ``decord.AudioReader`` (mono, resampled to the spec's rate); the spectrogram
is ``torchaudio.transforms.MelSpectrogram``; its power in dB is clamped to [floor_db, ceil_db]
(stored in the tokenizer config) and mapped linearly to [-1, 1]. Back to a waveform through a
`Vocoder`: `GriffinLimVocoder` (``InverseMelScale`` + ``GriffinLim``) is the one shipped, and a
neural vocoder only has to take the same mel power. WAV files are written with the standard
library's ``wave`` (torchaudio 2.9+ needs torchcodec for ``save``).
"""

from __future__ import annotations

import shutil
import tempfile
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image
from torchaudio.transforms import GriffinLim, InverseMelScale, MelSpectrogram

from unitok.core.config import Config, bounded
from unitok.tokenizer.adapters.base import MediaAdapter, MediaError, decord_reason


@dataclass(frozen=True)
class AudioConfig(Config):
    sample_rate: int = bounded(16000, ge=1)
    frames: int = bounded(64, ge=2)  # spectrogram frames per clip; a clip is (frames − 1)·hop_length samples
    n_fft: int = bounded(512, ge=2)
    hop_length: int = bounded(256, ge=1)
    n_mels: int = bounded(64, ge=1)
    f_min: float = bounded(0.0, ge=0)
    f_max: float | None = bounded(None, gt=0)  # None: sample_rate / 2
    floor_db: float = -60.0  # mel power in dB is clamped to [floor_db, ceil_db] and mapped to [-1, 1]
    ceil_db: float = 30.0
    griffin_lim_iters: int = bounded(32, ge=1)

    def rules(self):
        top = self.sample_rate / 2 if self.f_max is None else self.f_max
        yield self.n_fft >= self.hop_length, "n_fft", f"must be >= hop_length ({self.hop_length}), got {self.n_fft}"
        yield self.floor_db < self.ceil_db, "floor_db", f"must be below ceil_db ({self.ceil_db}), got {self.floor_db}"
        yield (self.f_min < top <= self.sample_rate / 2, "f_max",
               f"need f_min < f_max <= sample_rate / 2, got {self.f_min}, {top}")

    @property
    def samples(self) -> int:
        """Samples per clip: a centred STFT of this many samples has exactly `frames` frames."""
        return (self.frames - 1) * self.hop_length


@dataclass
class Audio:
    """A mono clip: float32 samples in [-1, 1] at `sample_rate`."""

    samples: np.ndarray
    sample_rate: int

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.sample_rate

    def save(self, path: str | Path) -> None:
        """Write a 16-bit PCM mono WAV file."""
        pcm = np.rint(np.clip(self.samples, -1.0, 1.0) * 32767).astype("<i2")
        with wave.open(str(path), "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(self.sample_rate)
            out.writeframes(pcm.tobytes())


class Vocoder(Protocol):
    def __call__(self, mel_power_BMF: torch.Tensor) -> torch.Tensor:
        """Mel power spectrograms (B, n_mels, frames) -> waveforms (B, samples)."""


class GriffinLimVocoder(torch.nn.Module):
    """Least-squares inverse of the mel filterbank, then Griffin-Lim phase recovery."""

    def __init__(self, config: AudioConfig):
        super().__init__()
        self.inverse_mel = InverseMelScale(config.n_fft // 2 + 1, n_mels=config.n_mels, sample_rate=config.sample_rate,
                                           f_min=config.f_min, f_max=config.f_max)
        self.griffin_lim = GriffinLim(n_fft=config.n_fft, hop_length=config.hop_length, power=2.0,
                                      n_iter=config.griffin_lim_iters, length=config.samples,
                                      rand_init=False)  # deterministic: the same ids decode to the same samples

    def forward(self, mel_power_BMF: torch.Tensor) -> torch.Tensor:
        return self.griffin_lim(self.inverse_mel(mel_power_BMF))


class AudioAdapter(MediaAdapter):
    modality = "audio"
    object_types = (Audio,)
    file_extensions = (".wav", ".flac", ".mp3", ".ogg", ".m4a", ".aac", ".opus", ".wma")
    writable_extensions = (".wav",)  # `Audio.save` writes 16-bit PCM WAV
    channels = 1  # one log-mel spectrogram

    def __init__(self, config: AudioConfig, vocoder: Vocoder | None = None):
        self.config = config
        self.mel = MelSpectrogram(config.sample_rate, n_fft=config.n_fft, hop_length=config.hop_length,
                                  n_mels=config.n_mels, f_min=config.f_min, f_max=config.f_max, power=2.0)
        self.vocoder = vocoder if vocoder is not None else GriffinLimVocoder(config)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.channels, self.config.n_mels, self.config.frames)

    def load(self, path: str | Path | Any) -> Audio:
        """Decode with decord (any container/codec its FFmpeg knows), mono, at the spec's rate."""
        if hasattr(path, "read"):  # decord opens paths only: spool an open file to disk first
            with tempfile.NamedTemporaryFile(suffix=Path(getattr(path, "name", "")).suffix) as spool:
                shutil.copyfileobj(path, spool)
                spool.flush()
                try:
                    return self.load(spool.name)
                except MediaError as err:  # name the file object, not the spool's random name
                    raise MediaError(str(err).replace(spool.name, str(path))) from None
        from decord import AudioReader

        try:
            samples = AudioReader(str(path), sample_rate=self.config.sample_rate, mono=True)[:].asnumpy()
        except Exception as err:  # decord raises DECORDError (a RuntimeError) with FFmpeg's reason
            raise MediaError(f"{path}: not readable audio ({decord_reason(err)})") from None
        if samples.size == 0:
            raise MediaError(f"{path}: audio has no samples")
        return Audio(samples.reshape(-1).astype(np.float32), self.config.sample_rate)

    def preprocess(self, media: Any) -> torch.Tensor:
        samples = torch.from_numpy(self._fit_length(_as_samples(media, self.config.sample_rate)))
        db = 10 * torch.log10(self.mel(samples).clamp_min(1e-10))  # (n_mels, frames)
        return self.db_to_unit(db).unsqueeze(0)

    def postprocess(self, tensor: torch.Tensor) -> list[Audio]:
        mel_power = 10 ** (self.unit_to_db(tensor.detach().float().cpu()[:, 0]) / 10)  # (B, n_mels, frames)
        waves = self.vocoder(mel_power).clamp(-1, 1)
        return [Audio(w.numpy().astype(np.float32), self.config.sample_rate) for w in waves]

    def picture(self, tensor: torch.Tensor) -> list[Image.Image]:
        """Spectrograms as grey images: low frequencies at the bottom, time left to right."""
        levels = ((tensor.detach().float().cpu().clamp(-1, 1)[:, 0] + 1) * 127.5).round().to(torch.uint8)
        return [Image.fromarray(level.flip(0).numpy()).convert("RGB") for level in levels]

    def db_to_unit(self, db: torch.Tensor) -> torch.Tensor:
        lo, hi = self.config.floor_db, self.config.ceil_db
        return (db.clamp(lo, hi) - lo) / (hi - lo) * 2 - 1

    def unit_to_db(self, unit: torch.Tensor) -> torch.Tensor:
        lo, hi = self.config.floor_db, self.config.ceil_db
        return (unit.clamp(-1, 1) + 1) / 2 * (hi - lo) + lo

    def _fit_length(self, samples: np.ndarray) -> np.ndarray:
        """Crop or zero-pad to the clip length the spectrogram's frame count implies."""
        n = self.config.samples
        return samples[:n] if len(samples) >= n else np.pad(samples, (0, n - len(samples)))


def _as_samples(media: Any, sample_rate: int) -> np.ndarray:
    if isinstance(media, Audio):
        if media.sample_rate != sample_rate:
            raise MediaError(f"audio at {media.sample_rate} Hz; this tokenizer reads {sample_rate} Hz "
                             "(load the file through the adapter to resample it)")
        media = media.samples
    if isinstance(media, np.ndarray) and media.ndim == 1 and media.size:
        return media.astype(np.float32)
    raise MediaError(f"expected an Audio clip or a non-empty 1-D float array, got {type(media).__name__}")
