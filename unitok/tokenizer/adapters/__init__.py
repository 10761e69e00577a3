"""Modality adapters: load / preprocess / postprocess per modality."""

from unitok.tokenizer.adapters.audio import Audio, AudioAdapter, AudioConfig, GriffinLimVocoder, Vocoder
from unitok.tokenizer.adapters.base import MediaAdapter, MediaError
from unitok.tokenizer.adapters.image import ImageAdapter, ImageConfig
from unitok.tokenizer.adapters.video import Video, VideoAdapter, VideoConfig

__all__ = ["MediaAdapter", "MediaError", "ImageAdapter", "ImageConfig", "Audio", "AudioAdapter", "AudioConfig",
           "GriffinLimVocoder", "Vocoder", "Video", "VideoAdapter", "VideoConfig"]
