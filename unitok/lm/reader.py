"""How a caption reads a media span: the read-out block's inputs and, for the convolutional reader,
the small CNN that reads the clean state ``s_0`` beside them.

Two readers (the layout's ``reader``):

- ``linear``: one read-out position per cell; its input is a learned linear map (state rows of the
  embedding table) of the cell's ``s_0`` and, with ``readout_patch`` > 1, of the ``s_0`` of its
  neighbours (`documents.readout_states`). Attention must learn shapes from per-cell rows.
- ``conv``: one read-out position per ``pool`` × ``pool`` square of the last two axes, carrying the
  ``s_0`` of its cells as its state inputs (`pooled_states`), so the stream, the batch and a
  sampler's cache hold the read-out block as they hold every other. Its input is the linear map of
  those states, as for the linear reader, plus what a small convolutional network over the whole
  latent's ``s_0`` (2D for images and spectrograms, 3D for clips; `ConvReader`) reads at that
  square: the reader reassembles the latent from a block's positions. Its last layer starts at
  zero, so an untrained conv reader is the linear one and the caption loss adds what the CNN reads.
  In place of the linear map (as first built), pooled 2×2, it left captions at chance on the digit
  (0.12 after 38,400 documents); beside it, 0.42 (experiments/LOG.md, #33). Pooling shortens every
  media→text document: pooled 2×2 the conv reader reads less per document than the linear reader
  with a 5×5 neighbourhood (0.535), in less time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from unitok.core.config import Config, bounded
from unitok.core.errors import UnitokError
from unitok.tokenizer.vocabulary import Vocabulary

if TYPE_CHECKING:
    from unitok.tokenizer.media_tokenizer import MediaTokenizer

ReaderKind = Literal["linear", "conv"]


@dataclass(frozen=True)
class ReaderSpec(Config):
    """A layout's ``reader:`` section (see the module docstring)."""

    kind: ReaderKind = "linear"
    channels: int = bounded(64, ge=1)  # conv: width of its two 3x3 convolutions
    pool: int = bounded(1, ge=1)  # conv: one read-out position per pool x pool cells of the last two axes

    def rules(self):
        yield (self.kind == "conv" or self.pool == 1, "pool",
               f"pools only the conv reader's features; the linear reader has one position per cell, got {self.pool}")

    def problems(self, latent_shape: Sequence[int]) -> list[str]:
        """What does not fit a latent of `latent_shape`."""
        if self.pool > 1 and any(size % self.pool for size in latent_shape[-2:]):
            return [f"reader.pool: {self.pool} must divide the last two axes of the latent {tuple(latent_shape)}"]
        return []


def pooled_states(states: torch.Tensor, latent_shape: Sequence[int], pool: int) -> torch.Tensor:
    """(…, N, C) per-cell states in raster order -> (…, N / pool², pool²·C): one row per
    `pool` × `pool` square of the last two axes, its cells row-major, channels innermost."""
    *outer, height, width = latent_shape
    return rearrange(states, "... (o h p w q) c -> ... (o h w) (p q c)", o=math.prod(outer),
                     h=height // pool, p=pool, w=width // pool, q=pool)


def latent_grid(states: torch.Tensor, latent_shape: Sequence[int], pool: int) -> torch.Tensor:
    """`pooled_states` undone for whole read-out blocks: (k·P, pool²·C) -> (k, C, O, H, W), the
    latents of k spans (O = 1 for a 2D latent)."""
    *outer, height, width = latent_shape
    return rearrange(states, "(k o h w) (p q c) -> k c o (h p) (w q)", o=math.prod(outer), h=height // pool,
                     w=width // pool, p=pool, q=pool)


class ConvReader(nn.Module):
    """The conv reader of one media range: read-out state inputs (M, pool²·C), the positions of
    M / P whole read-out blocks in order, -> what it adds to their input embeddings (M, hidden);
    zero until trained (its output layer starts at zero)."""

    def __init__(self, latent_shape: Sequence[int], latent_channels: int, spec: ReaderSpec, hidden_size: int,
                 state_row: int):
        super().__init__()
        if len(latent_shape) not in (2, 3):
            raise UnitokError(f"the conv reader reads 2D or 3D latents, got shape {tuple(latent_shape)}")
        conv = nn.Conv2d if len(latent_shape) == 2 else nn.Conv3d
        self.latent_shape, self.channels, self.pool = tuple(latent_shape), latent_channels, spec.pool
        self.state_row = state_row  # the first state row of its read-out positions: how the model finds them
        self.features = nn.Sequential(conv(latent_channels, spec.channels, 3, padding=1), nn.GELU(),
                                      conv(spec.channels, spec.channels, 3, padding=1), nn.GELU())
        self.to_hidden = nn.Linear(spec.channels, hidden_size)
        nn.init.zeros_(self.to_hidden.weight)
        nn.init.zeros_(self.to_hidden.bias)

    @property
    def positions(self) -> int:
        return math.prod(self.latent_shape) // (self.pool * self.pool)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        if states.shape[0] % self.positions:
            raise UnitokError(f"read-out positions come in whole blocks of {self.positions}, got {states.shape[0]}")
        grid = latent_grid(states[:, :self.pool * self.pool * self.channels], self.latent_shape, self.pool)
        features = self.features(grid if len(self.latent_shape) == 3 else grid.squeeze(2))
        if len(self.latent_shape) == 2:
            features = features.unsqueeze(2)
        pooled = F.avg_pool3d(features, (1, self.pool, self.pool))
        return self.to_hidden(rearrange(pooled, "k f o h w -> (k o h w) f"))


def build_readers(spec: ReaderSpec, vocab: Vocabulary, tokenizers: dict[str, "MediaTokenizer"],
                  hidden_size: int) -> dict[str, ConvReader]:
    """A conv reader per media range (name -> tokenizer) for a conv `spec`; none for the linear
    reader, whose weights are state rows of the embedding table."""
    if spec.kind != "conv":
        return {}
    return {name: ConvReader(t.latent_shape, t.spec.autoencoder.latent_channels, spec, hidden_size,
                             vocab.readout_state(name).offset) for name, t in tokenizers.items()}
