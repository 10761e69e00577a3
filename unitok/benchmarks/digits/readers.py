"""Pixel readers for digits world images and clips: colour, position, size and motion direction
read straight from the pixels.

They are exact on clean renders and tolerant of the blur and speckle of generated samples:
only pixels with clear ink count, and position and size use the ink's centroid and the extent
of its central 98% instead of its raw bounding box. An image without ink reads as ``BLANK``,
which never matches a real attribute.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from unitok.benchmarks.digits.images import digit_pixels, position_centers
from unitok.benchmarks.digits.scenes import COLORS
from unitok.core.errors import UnitokError

INK_THRESHOLD = 0.25  # ink below this is background, antialiasing or noise
BLANK = "none"
EXTENT_TAIL = 0.01  # share of ink mass ignored at each end when measuring the digit's height

# Palette chroma: each colour scaled so its brightest channel is 1, as an (n_colors, 3) array.
_PALETTE = np.array([c for c in COLORS.values()], dtype=np.float32)
_PALETTE /= _PALETTE.max(axis=1, keepdims=True)


def _as_array(image: Image.Image | np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 view of a PIL image or array."""
    array = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    if array.ndim != 3 or array.shape[-1] != 3 or array.dtype != np.uint8:
        raise UnitokError(f"expected an (H, W, 3) uint8 image, got {array.dtype} {array.shape}")
    return array


def ink(images: np.ndarray) -> np.ndarray:
    """Colour-invariant digit intensity: max over RGB / 255, (..., H, W, 3) uint8 -> (..., H, W) float32."""
    return np.asarray(images).max(axis=-1).astype(np.float32) / 255.0


def _ink_weights(image: Image.Image | np.ndarray) -> np.ndarray | None:
    """(H, W) ink where it is clear, 0 elsewhere; None when the image has no clear ink."""
    weights = ink(_as_array(image))
    weights[weights <= INK_THRESHOLD] = 0.0
    return weights if weights.any() else None


def read_color(image: Image.Image | np.ndarray) -> str:
    """Nearest palette colour to the ink-weighted mean chroma of the inked pixels."""
    array = _as_array(image)
    weights = _ink_weights(array)
    if weights is None:
        return BLANK
    mean_rgb = (array.astype(np.float32) * weights[:, :, None]).sum(axis=(0, 1)) / weights.sum()
    chroma = mean_rgb / mean_rgb.max()  # undo the alpha: a dim red is still red
    return list(COLORS)[int(np.argmin(((_PALETTE - chroma) ** 2).sum(axis=1)))]


def _ink_centroid(weights: np.ndarray) -> tuple[float, float]:
    """(x, y) in pixels of the ink-weighted centre."""
    x = np.arange(weights.shape[1]) + 0.5  # pixel centres
    y = np.arange(weights.shape[0]) + 0.5
    total = weights.sum()
    return float((weights.sum(axis=0) * x).sum() / total), float((weights.sum(axis=1) * y).sum() / total)


def read_position(image: Image.Image | np.ndarray) -> str:
    """left / center / right from the ink centroid's x, split halfway between the renderer's centres."""
    weights = _ink_weights(image)
    if weights is None:
        return BLANK
    centroid_x, _ = _ink_centroid(weights)
    centers = position_centers(weights.shape[1])
    if centroid_x < (centers["left"] + centers["center"]) / 2:
        return "left"
    if centroid_x < (centers["center"] + centers["right"]) / 2:
        return "center"
    return "right"


def read_size(image: Image.Image | np.ndarray) -> str:
    """small / large from the height of the central 98% of the ink, split halfway between the two sizes.

    Every real digit spans its whole box vertically, so the height tells the size.
    """
    weights = _ink_weights(image)
    if weights is None:
        return BLANK
    cumulative = np.cumsum(weights.sum(axis=1)) / weights.sum()  # (H,) ink mass above each row's end
    top = int((cumulative < EXTENT_TAIL).sum())
    bottom = int((cumulative < 1.0 - EXTENT_TAIL).sum())
    height = bottom - top + 1
    image_size = weights.shape[0]
    threshold = (digit_pixels("small", image_size) + digit_pixels("large", image_size)) / 2
    return "large" if height > threshold else "small"


def read_attributes(image: Image.Image | np.ndarray) -> dict[str, str]:
    """{"color", "position", "size"} read from one image."""
    return {"color": read_color(image), "position": read_position(image), "size": read_size(image)}


def read_direction(frames: np.ndarray) -> str:
    """left / right / up / down: the dominant axis and sign of the ink centroid's path from the
    first to the last frame with ink, in (F, H, W, 3) uint8 frames."""
    centroids = [_ink_centroid(w) for w in map(_ink_weights, frames) if w is not None]
    if len(centroids) < 2:
        return BLANK
    dx, dy = np.subtract(centroids[-1], centroids[0])
    if abs(dx) >= abs(dy):
        return "right" if dx > 0 else "left"
    return "down" if dy > 0 else "up"
