"""Modality adapters: load / preprocess / postprocess per modality."""

from .base import MediaAdapter, MediaError
from .audio import Audio, AudioAdapter, AudioConfig, GriffinLimVocoder, Vocoder
from .image import ImageAdapter, ImageConfig

__all__ = ["MediaAdapter", "MediaError", "ImageAdapter", "ImageConfig", "Audio", "AudioAdapter", "AudioConfig",
           "GriffinLimVocoder", "Vocoder"]
