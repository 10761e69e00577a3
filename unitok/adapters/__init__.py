"""Modality adapters: load / preprocess / postprocess per modality."""

from .base import MediaAdapter, MediaError
from .image import ImageAdapter, ImageConfig

__all__ = ["MediaAdapter", "MediaError", "ImageAdapter", "ImageConfig"]
