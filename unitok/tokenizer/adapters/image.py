"""Images: RGB PIL images <-> (3, H, W) tensors in [-1, 1]."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from unitok.core.config import Config, bounded
from unitok.tokenizer.adapters.base import MediaAdapter, MediaError


@dataclass(frozen=True)
class ImageConfig(Config):
    size: int = bounded(32, ge=8)  # images are resized (shorter side) and centre-cropped to size x size
    min_input_size: int = bounded(8, ge=1)  # smaller source images are refused as unusable


class ImageAdapter(MediaAdapter):
    modality = "image"
    object_types = (Image.Image,)
    file_extensions = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
    writable_extensions = file_extensions  # Pillow writes every one it reads here
    channels = 3

    def __init__(self, config: ImageConfig):
        self.config = config

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.channels, self.config.size, self.config.size)

    def load(self, path: str | Path) -> Image.Image:
        try:
            with Image.open(path) as image:
                image.load()  # decode now so truncated files fail here, with the file named
                return image.convert("RGB")
        except (OSError, UnidentifiedImageError, ValueError) as err:
            raise MediaError(f"{path}: not a readable image ({err})") from None

    def preprocess(self, media: Any) -> torch.Tensor:
        image = _as_rgb(media)
        if min(image.size) < self.config.min_input_size:
            raise MediaError(f"image of size {image.size} is smaller than {self.config.min_input_size} px")
        image = _center_square(image).resize((self.config.size, self.config.size), Image.Resampling.BICUBIC)
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1)
        return pixels / 127.5 - 1.0

    def postprocess(self, tensor: torch.Tensor) -> list[Image.Image]:
        pixels = ((tensor.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return [Image.fromarray(p.permute(1, 2, 0).cpu().numpy()) for p in pixels]


def _as_rgb(media: Any) -> Image.Image:
    if isinstance(media, Image.Image):
        return media.convert("RGB")
    if isinstance(media, np.ndarray) and media.ndim == 3 and media.shape[-1] == 3:
        return Image.fromarray(media.astype(np.uint8))
    raise MediaError(f"expected a PIL image or an HxWx3 uint8 array, got {type(media).__name__}")


def _center_square(image: Image.Image) -> Image.Image:
    w, h = image.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return image if w == h else image.crop((left, top, left + side, top + side))
