"""Convolutional autoencoders that map media to a latent grid and back.

One architecture for 2D inputs (images, spectrograms: ``(B, C, H, W)``) and 3D inputs (video:
``(B, C, F, H, W)``); only the convolution type changes. Every level halves the spatial size; in
3D the first `temporal_levels` levels also halve the frame count (spatio-temporal downsampling).
A `per_frame` video autoencoder is the 2D one applied to every frame: an image tokenizer's weights
code a clip's frames as images (`recipe.schema.TokenizerSection.frames_from`).

The encoder ends in a non-affine BatchNorm so the latent has unit scale per channel: the RDPM
trajectory mixes it with unit Gaussian noise, and without a fixed scale the encoder could make
the noise negligible by growing the latent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from einops import rearrange
from einops.layers.torch import Rearrange
from torch import nn

from unitok.core.config import Config, bounded
from unitok.core.errors import UnitokError

CONVS = {2: nn.Conv2d, 3: nn.Conv3d}
BATCH_NORMS = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
# Space-to-depth stems: p×p spatial patches (and, for video, pf frames) become channels.
PATCH_IN = {2: "b c (h ph) (w pw) -> b (c ph pw) h w", 3: "b c (f pf) (h ph) (w pw) -> b (c pf ph pw) f h w"}
PATCH_OUT = {2: "b (c ph pw) h w -> b c (h ph) (w pw)", 3: "b (c pf ph pw) f h w -> b c (f pf) (h ph) (w pw)"}


@dataclass(frozen=True)
class AutoencoderConfig(Config):
    MOVED = {"blocks_per_level": "renamed residual_units (unitok 0.3)"}
    LATER = frozenset({"per_frame"})

    in_channels: int = bounded(3, ge=1)
    patch_size: int = bounded(1, ge=1)  # space-to-depth stem: p×p patches become channels (cheap first downsampling)
    channels: tuple[int, ...] = bounded((32, 64), ge=8)  # width per resolution level (GroupNorm of 8 groups);
    # each level halves the size
    latent_channels: int = bounded(8, ge=1)
    residual_units: int = bounded(1, ge=0)  # after each level's downsampling (and before each upsampling)
    temporal_levels: int = bounded(0, ge=0)  # video only: how many of the first levels also halve the frame count
    temporal_patch_size: int = bounded(1, ge=1)  # video only: frames per stem patch (cheap first halving of time)
    per_frame: bool = False  # video only: the 2D autoencoder on every frame (latent frames = input frames)

    def rules(self):
        yield bool(self.channels), "channels", "must list at least one level"
        yield (not self.per_frame or (self.temporal_levels == 0 and self.temporal_patch_size == 1), "per_frame",
               "codes every frame apart; it takes no temporal_levels or temporal_patch_size")
        yield (all(c % 8 == 0 for c in self.channels), "channels",
               f"every width must be a multiple of 8 (GroupNorm of 8 groups), got {list(self.channels)}")
        yield (self.temporal_levels <= len(self.channels), "temporal_levels",
               f"must be at most the number of levels ({len(self.channels)}), got {self.temporal_levels}")

    @property
    def downsample_factor(self) -> int:
        """Spatial: input height (and width) over latent height."""
        return self.patch_size * 2 ** len(self.channels)

    def downsample_factors(self, dims: int) -> tuple[int, ...]:
        """Per axis of a `dims`-D input (frames first for video)."""
        if dims == 2:
            return (self.downsample_factor,) * 2
        return (self.temporal_patch_size * 2 ** self.temporal_levels, self.downsample_factor, self.downsample_factor)

    def conv_dims(self, dims: int) -> int:
        """The dimensions of its convolutions for `dims`-D inputs: 2 for every frame of a per-frame one."""
        return 2 if self.per_frame else dims


class ResidualUnit(nn.Module):
    """Two 3x3 convolutions with a skip connection."""

    def __init__(self, channels: int, dims: int):
        super().__init__()
        conv = CONVS[dims]
        self.body = nn.Sequential(
            nn.GroupNorm(8, channels),
            nn.SiLU(),
            conv(channels, channels, 3, padding=1),
            nn.GroupNorm(8, channels),
            nn.SiLU(),
            conv(channels, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def _halves_time(cfg: AutoencoderConfig, dims: int, level: int) -> bool:
    return dims == 3 and level < cfg.temporal_levels


def _patch(cfg: AutoencoderConfig, dims: int) -> dict[str, int]:
    """The stem's patch sizes by axis name (PATCH_IN / PATCH_OUT)."""
    spatial = {"ph": cfg.patch_size, "pw": cfg.patch_size}
    return spatial if dims == 2 else {"pf": cfg.temporal_patch_size, **spatial}


def _patch_volume(cfg: AutoencoderConfig, dims: int) -> int:
    return math.prod(_patch(cfg, dims).values())


class Encoder(nn.Module):
    """(B, in, [F,] H, W) -> (B, latent, [F/2^t,] H/f, W/f)."""

    def __init__(self, cfg: AutoencoderConfig, dims: int):
        super().__init__()
        conv = CONVS[dims]
        layers: list[nn.Module] = [Rearrange(PATCH_IN[dims], **_patch(cfg, dims)),
                                   conv(cfg.in_channels * _patch_volume(cfg, dims), cfg.channels[0], 3, padding=1)]
        width = cfg.channels[0]
        for level, level_width in enumerate(cfg.channels):
            if dims == 2 or _halves_time(cfg, dims, level):  # downsample x2 on every axis
                layers.append(conv(width, level_width, 4, stride=2, padding=1))
            else:  # video level that keeps the frame count
                layers.append(conv(width, level_width, (3, 4, 4), stride=(1, 2, 2), padding=1))
            width = level_width
            layers += [ResidualUnit(width, dims) for _ in range(cfg.residual_units)]
        layers += [nn.GroupNorm(8, width), nn.SiLU(), conv(width, cfg.latent_channels, 1)]
        layers.append(BATCH_NORMS[dims](cfg.latent_channels, affine=False))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Decoder(nn.Module):
    """(B, latent, [f,] h, w) -> (B, in, [F,] H, W), mirroring `Encoder`."""

    def __init__(self, cfg: AutoencoderConfig, dims: int):
        super().__init__()
        conv = CONVS[dims]
        widths = list(reversed(cfg.channels))
        layers: list[nn.Module] = [conv(cfg.latent_channels, widths[0], 3, padding=1)]
        width = widths[0]
        for index, level_width in enumerate(widths):
            level = len(widths) - 1 - index  # the encoder level this one undoes
            scale = 2 if dims == 2 or _halves_time(cfg, dims, level) else (1, 2, 2)
            layers += [ResidualUnit(width, dims) for _ in range(cfg.residual_units)]
            layers += [nn.Upsample(scale_factor=scale, mode="nearest"), conv(width, level_width, 3, padding=1)]
            width = level_width
        out_channels = cfg.in_channels * _patch_volume(cfg, dims)
        layers += [nn.GroupNorm(8, width), nn.SiLU(), conv(width, out_channels, 3, padding=1)]
        layers.append(Rearrange(PATCH_OUT[dims], **_patch(cfg, dims)))
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class Autoencoder(nn.Module):
    def __init__(self, cfg: AutoencoderConfig, dims: int = 2):
        super().__init__()
        if dims not in CONVS:
            raise UnitokError(f"autoencoders take 2D or 3D inputs, not {dims}D")
        self.config, self.dims = cfg, dims
        self.encoder = Encoder(cfg, cfg.conv_dims(dims))
        self.decoder = Decoder(cfg, cfg.conv_dims(dims))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self._per_frame(self.encoder, x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self._per_frame(self.decoder, z)

    def _per_frame(self, net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """`net` on x, or on each frame of a clip (B, C, F, H, W) for a per-frame autoencoder."""
        if self.config.conv_dims(self.dims) == self.dims:
            return net(x)
        frames = x.shape[2]
        return rearrange(net(rearrange(x, "b c f h w -> (b f) c h w")), "(b f) c h w -> b c f h w", f=frames)
