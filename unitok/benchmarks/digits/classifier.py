"""A small CNN that reads the digit in a digits world image, trained on renders of real digits.

It sees only the ink map (max over RGB), so it is colour-blind by construction; a global max
pool makes it indifferent to where the digit sits. Its penultimate 64-d features are the space
for the Fréchet distance between generated and real images.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from unitok.benchmarks.digits.images import real_renders
from unitok.benchmarks.digits.readers import ink
from unitok.benchmarks.digits.scenes import (
    COLOR_NAMES,
    POSITIONS,
    SIZES,
    DigitsWorldConfig,
    Scene,
    digit_pools,
    load_digit_images,
    sample_scene,
)
from unitok.core.errors import UnitokError

# Training augmentation ranges: rotation (radians), relative scale, shift (fraction of half the image).
AUG_ROTATE = 0.2
AUG_SCALE = 0.1
AUG_SHIFT = 0.1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


@dataclass
class DigitClassifierConfig:
    image_size: int = 32
    data_seed: int = 0  # DigitsWorldConfig.seed whose train pool of digit images it was trained on
    heldout_digit_fraction: float = 0.2
    train_steps: int = 0
    train_seed: int = 0
    heldout_accuracy: float | None = None  # on renders of the held-out pool, filled in by training

    def matches(self, cfg: DigitsWorldConfig) -> bool:
        """Whether this classifier was trained for ``cfg``'s image size and digit split."""
        return (self.image_size, self.data_seed, self.heldout_digit_fraction) == (
            cfg.image_size, cfg.seed, cfg.heldout_digit_fraction,
        )


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    # Without BatchNorm, twice the steps still fall short of 97% held-out accuracy.
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU())


class DigitClassifier(nn.Module):
    def __init__(self, config: DigitClassifierConfig) -> None:
        super().__init__()
        self.config = config
        self.conv = nn.Sequential(
            _conv_block(1, 16), nn.MaxPool2d(2),  # (B, 16, H/2, W/2)
            _conv_block(16, 32), nn.MaxPool2d(2),  # (B, 32, H/4, W/4)
            _conv_block(32, 64), nn.AdaptiveMaxPool2d(1),  # (B, 64, 1, 1): wherever the digit is
        )
        self.head = nn.Linear(64, 10)

    def features(self, ink_B1HW: torch.Tensor) -> torch.Tensor:
        """Penultimate features (B, 64) of ink maps (B, 1, H, W) in [0, 1]."""
        return self.conv(ink_B1HW).flatten(1)

    def forward(self, ink_B1HW: torch.Tensor) -> torch.Tensor:
        """Digit logits (B, 10)."""
        return self.head(self.features(ink_B1HW))

    def _ink_batches(self, images: np.ndarray, batch_size: int) -> Iterator[torch.Tensor]:
        """Yield (b, 1, H, W) ink tensors from (N, H, W, 3) uint8 images; switches to eval mode."""
        shape = (self.config.image_size, self.config.image_size, 3)
        if images.ndim != 4 or images.shape[1:] != shape or images.dtype != np.uint8:
            raise UnitokError(f"images must be (N, {shape[0]}, {shape[1]}, 3) uint8, got {images.dtype} {images.shape}")
        self.eval()  # BatchNorm running statistics, never batch statistics, when reading images
        for start in range(0, len(images), batch_size):
            yield torch.from_numpy(ink(images[start : start + batch_size]))[:, None]

    @torch.inference_mode()
    def predict(self, images: np.ndarray, batch_size: int = 512) -> np.ndarray:
        """Predicted digits (N,) int64 of (N, H, W, 3) uint8 images."""
        preds = [self(x).argmax(dim=1) for x in self._ink_batches(images, batch_size)]
        return torch.cat(preds).numpy() if preds else np.zeros(0, dtype=np.int64)

    @torch.inference_mode()
    def image_features(self, images: np.ndarray, batch_size: int = 512) -> np.ndarray:
        """Features (N, 64) float64 of (N, H, W, 3) uint8 images, for the Fréchet distance."""
        feats = [self.features(x) for x in self._ink_batches(images, batch_size)]
        return torch.cat(feats).double().numpy() if feats else np.zeros((0, 64))

    def save(self, directory: str | Path) -> Path:
        """Write ``model.safetensors`` then ``config.json`` into ``directory``, each atomically."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file(self.state_dict(), str(directory / f"{WEIGHTS_FILE}.tmp"))
        os.replace(directory / f"{WEIGHTS_FILE}.tmp", directory / WEIGHTS_FILE)
        (directory / f"{CONFIG_FILE}.tmp").write_text(json.dumps(asdict(self.config), indent=2) + "\n")
        os.replace(directory / f"{CONFIG_FILE}.tmp", directory / CONFIG_FILE)
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> DigitClassifier:
        """A classifier saved by ``save``, in eval mode."""
        directory = Path(directory)
        fields = json.loads((directory / CONFIG_FILE).read_text())
        try:
            config = DigitClassifierConfig(**fields)
        except TypeError as err:
            raise UnitokError(f"{directory / CONFIG_FILE}: not a digit classifier config ({err})") from err
        model = cls(config)
        model.load_state_dict(load_file(str(directory / WEIGHTS_FILE)))
        return model.eval()


def heldout_accuracy(model: DigitClassifier, cfg: DigitsWorldConfig) -> float:
    """Accuracy on every held-out-pool digit image rendered at every position and size (colours cycle)."""
    _, labels = load_digit_images()
    indices = [i for pool in digit_pools(cfg)["heldout"].values() for i in pool]
    placements = [(i, position, size) for i in indices for position in POSITIONS for size in SIZES]
    scenes = [
        Scene(int(labels[i]), COLOR_NAMES[n % len(COLOR_NAMES)], position, size, i)
        for n, (i, position, size) in enumerate(placements)
    ]
    preds = model.predict(real_renders(scenes, cfg.image_size))
    return float((preds == np.array([s.digit for s in scenes])).mean())


def _augment(x: torch.Tensor, gen: torch.Generator, noise_std: float) -> torch.Tensor:
    """Random small rotation, scaling and shift of each ink map (B, 1, H, W), plus Gaussian noise."""
    B = x.shape[0]
    angle = (torch.rand(B, generator=gen) - 0.5) * 2 * AUG_ROTATE
    scale = 1 + (torch.rand(B, generator=gen) - 0.5) * 2 * AUG_SCALE
    shift = (torch.rand(B, 2, generator=gen) - 0.5) * 2 * AUG_SHIFT
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    x = F.grid_sample(x, F.affine_grid(theta, list(x.shape), align_corners=False), align_corners=False)
    return (x + noise_std * torch.randn(x.shape, generator=gen)).clamp(0.0, 1.0)


@contextmanager
def _one_torch_thread() -> Iterator[None]:
    """Run torch on one thread: as fast for this tiny CNN, and no slowdown when cores are shared."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@_one_torch_thread()
def train_digit_classifier(
    cfg: DigitsWorldConfig,
    steps: int = 500,
    seed: int = 0,
    batch_size: int = 64,
    lr: float = 3e-3,
    noise_std: float = 0.05,
) -> DigitClassifier:
    """Train on fresh renders of train-pool digits with random colour, position, size and jitter.

    Every colour/digit combination is allowed: this is an evaluator, not the generator. Small
    random affine warps and light Gaussian noise on the ink map keep it reading the imperfect
    pixels of generated samples. Deterministic for a given ``seed``.
    """
    torch.manual_seed(seed)
    rng = random.Random(seed)
    augment_gen = torch.Generator().manual_seed(seed)
    pool = digit_pools(cfg)["train"]
    model = DigitClassifier(DigitClassifierConfig(cfg.image_size, cfg.seed, cfg.heldout_digit_fraction, steps, seed))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    model.train()
    for _ in range(steps):
        scenes = [sample_scene(rng, rng.randrange(10), rng.choice(COLOR_NAMES), pool) for _ in range(batch_size)]
        ink_B1HW = torch.from_numpy(ink(real_renders(scenes, cfg.image_size)))[:, None]
        x = _augment(ink_B1HW, augment_gen, noise_std)
        y = torch.tensor([s.digit for s in scenes])
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    model.eval()
    model.config.heldout_accuracy = heldout_accuracy(model, cfg)
    return model


def load_or_train_digit_classifier(directory: str | Path, cfg: DigitsWorldConfig, steps: int = 500) -> DigitClassifier:
    """Load the classifier cached in ``directory`` if it was trained for ``cfg``, else train and save it."""
    directory = Path(directory)
    if (directory / WEIGHTS_FILE).exists() and (directory / CONFIG_FILE).exists():
        model = DigitClassifier.load(directory)
        if model.config.matches(cfg):
            return model
    model = train_digit_classifier(cfg, steps=steps)
    model.save(directory)
    return model
