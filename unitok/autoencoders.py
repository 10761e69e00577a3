"""Convolutional autoencoders that map media to a latent grid and back.

The encoder ends in a non-affine BatchNorm so the latent has unit scale per channel: the RDPM
trajectory mixes it with unit Gaussian noise, and without a fixed scale the encoder could make
the noise negligible by growing the latent.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class AutoencoderConfig:
    in_channels: int = 3
    patch_size: int = 1  # space-to-depth stem: p×p patches become channels (cheap first downsampling)
    channels: tuple[int, ...] = (32, 64)  # width per resolution level; each level halves the size
    latent_channels: int = 8
    blocks_per_level: int = 1

    def __post_init__(self):
        if not self.channels:
            raise ValueError("channels must list at least one level")

    @property
    def downsample_factor(self) -> int:
        return self.patch_size * 2 ** len(self.channels)


class ResBlock2d(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.GroupNorm(8, channels),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.GroupNorm(8, channels),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class Encoder2d(nn.Module):
    """(B, in, H, W) -> (B, latent, H/2^L, W/2^L)."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        p = cfg.patch_size
        layers: list[nn.Module] = [nn.PixelUnshuffle(p), nn.Conv2d(cfg.in_channels * p * p, cfg.channels[0], 3, padding=1)]
        width = cfg.channels[0]
        for level_width in cfg.channels:
            layers.append(nn.Conv2d(width, level_width, 4, stride=2, padding=1))  # downsample x2
            width = level_width
            layers += [ResBlock2d(width) for _ in range(cfg.blocks_per_level)]
        layers += [nn.GroupNorm(8, width), nn.SiLU(), nn.Conv2d(width, cfg.latent_channels, 1)]
        layers.append(nn.BatchNorm2d(cfg.latent_channels, affine=False))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Decoder2d(nn.Module):
    """(B, latent, h, w) -> (B, in, h·2^L, w·2^L)."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        widths = list(reversed(cfg.channels))
        layers: list[nn.Module] = [nn.Conv2d(cfg.latent_channels, widths[0], 3, padding=1)]
        width = widths[0]
        for level_width in widths:
            layers += [ResBlock2d(width) for _ in range(cfg.blocks_per_level)]
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(width, level_width, 3, padding=1)]
            width = level_width
        p = cfg.patch_size
        layers += [nn.GroupNorm(8, width), nn.SiLU(), nn.Conv2d(width, cfg.in_channels * p * p, 3, padding=1)]
        layers.append(nn.PixelShuffle(p))
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class Autoencoder2d(nn.Module):
    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        self.config = cfg
        self.encoder = Encoder2d(cfg)
        self.decoder = Decoder2d(cfg)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)
