"""Modality adapters: load / preprocess / postprocess per modality."""

from .base import MediaAdapter, MediaError
from .audio import Audio, AudioAdapter, AudioConfig, GriffinLimVocoder, Vocoder
from .image import ImageAdapter, ImageConfig
from .video import Video, VideoAdapter, VideoConfig

__all__ = ["MediaAdapter", "MediaError", "ImageAdapter", "ImageConfig", "Audio", "AudioAdapter", "AudioConfig",
           "GriffinLimVocoder", "Vocoder", "Video", "VideoAdapter", "VideoConfig"]
