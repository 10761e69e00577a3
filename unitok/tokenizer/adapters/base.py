"""What every modality adapter provides: file -> normalised tensor -> file.

An adapter knows pixels or samples; the RDPM quantizer, vocabulary, streams, model and
sampler do not. A new modality is a new adapter plus an autoencoder for its tensor shape.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import torch

from unitok.core.errors import UnitokError


class MediaError(UnitokError):
    """A media file or object that cannot be used; the message names it and says why."""


_DECORD_LOCATION = re.compile(r"^\[[\d:]+\] \S+:\d+: ")


def decord_reason(err: Exception) -> str:
    """FFmpeg's reason from a decord error: its last line without decord's clock time and source
    location, so the same bad file gives the same reason on every run."""
    return _DECORD_LOCATION.sub("", str(err).strip().splitlines()[-1])


class MediaAdapter(ABC):
    modality: ClassVar[str]
    file_extensions: ClassVar[tuple[str, ...]]  # what `load` reads
    writable_extensions: ClassVar[tuple[str, ...]]  # what the in-memory objects' `save` writes
    channels: ClassVar[int]  # leading dim of `input_shape`: what the autoencoder's in_channels must be
    dims: ClassVar[int] = 2  # axes after the channels: 2 (H, W) or 3 (frames, H, W)
    object_types: ClassVar[tuple[type, ...]]  # the in-memory objects of the modality (`load` returns one)

    @abstractmethod
    def load(self, path: str | Path) -> Any:
        """Read a file into the modality's in-memory object; raise MediaError naming the file."""

    @abstractmethod
    def preprocess(self, media: Any) -> torch.Tensor:
        """One in-memory object -> the autoencoder's input tensor (no batch dim), values in [-1, 1]."""

    @abstractmethod
    def postprocess(self, tensor: torch.Tensor) -> list[Any]:
        """A batch of autoencoder outputs -> in-memory objects that can be saved as files."""

    def picture(self, tensor: torch.Tensor) -> list[Any]:
        """A batch of autoencoder outputs as PIL images for people (trajectory grids)."""
        return self.postprocess(tensor)

    @property
    @abstractmethod
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one preprocessed item, e.g. (3, 32, 32); starts with `channels`."""

    @classmethod
    def check_writable(cls, path: str | Path) -> None:
        """Refuse, before anything is made, a file name the modality's objects cannot be saved as."""
        if Path(path).suffix.lower() not in cls.writable_extensions:
            raise MediaError(f"{path}: {cls.modality} saves as {', '.join(cls.writable_extensions)}; "
                             "give the file one of these extensions")

    def accepts(self, media: Any) -> bool:
        """Whether `media` is an in-memory object of this modality (what an interleaved prompt holds)."""
        return isinstance(media, self.object_types)

    def to_tensor(self, media: Any) -> torch.Tensor:
        """A file (path or open binary file) or an in-memory object -> the autoencoder's input."""
        if isinstance(media, (str, Path)) or hasattr(media, "read"):
            media = self.load(media)
        return self.preprocess(media)
