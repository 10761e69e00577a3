"""The stream layout: how a model lays media out in its token streams. It is part of the model and
saved with it (``model_index.json``, key ``layout``), the one place these facts live:

- the media order: ``timestep`` (RDPM: the generated blocks ``k_{T−1} … k_0`` in timestep order,
  each drawn in groups of cells) or ``raster`` (the autoregressive baseline: the codes of one
  clean block in raster order, one per pass);
- the reader: how a caption reads a media span, through its read-out block of the clean state
  ``s_0`` (`reader.py`): one position per cell, a linear map of the ``s_0`` of the
  `readout_patch` × `readout_patch` square of cells around it (``reader.kind: linear``), or a small
  CNN over the whole latent, pooled (``reader.kind: conv``);
- per media range, its `DecodeSchedule`: in how many groups the cells of each generated block
  are drawn, and how large the groups are. Training documents and the sampler both read it, so
  every cell is trained with exactly what the sampler knows when it draws it;
- the query neighbourhood: with `query_patch` k > 1 a query (a cell being drawn) also takes, as
  state inputs, the codes' states of the cells of the k × k square around it that earlier groups of
  its block decided (zeros for the others): a local view of the drawn shape in its own input
  instead of one it must find by attention (`documents.decided_neighbourhood`);
- the code geometry: with `code_geometry` a media code's logit also has a term computed from its
  codebook vector, so nearby codes share what is learned (`code_geometry.py`);
- tied codes: a range listed in `tied_codes` uses another range's code rows, in and out, where its
  tokenizer codes with that one's codebook (video frames coded as images).

Group g of a block holds the cells ``cell_order(N)[a_g : a_{g+1}]`` (`group_bounds`); a block
drawn in G groups costs G transformer passes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Literal

import torch

from unitok.core.config import Config, bounded
from unitok.core.errors import UnitokError
from unitok.lm.reader import ReaderSpec

MediaOrder = Literal["timestep", "raster"]
GroupSizes = Literal["cosine", "linear"]
# share of a block's cells still undecided after group g of G, as a function of g/G
UNDECIDED_SHARE = {
    "cosine": lambda progress: math.cos(math.pi / 2 * progress),  # few cells first: the shape nearly one at a time
    "linear": lambda progress: 1 - progress,  # equal groups
}


def undecided_after_groups(num_positions: int, groups: int, sizes: GroupSizes = "cosine") -> list[int]:
    """Cells still undecided after each of a block's `groups` groups: ⌊N·f(g/G)⌋ for the sizes' f,
    at least one fewer after every group, 0 after the last."""
    if groups > num_positions:
        raise UnitokError(f"{groups} groups cannot each hold one of {num_positions} cells")
    share = UNDECIDED_SHARE[sizes]
    left, counts = num_positions, []
    for g in range(1, groups + 1):
        left = min(math.floor(num_positions * share(g / groups)), left - 1)
        counts.append(max(left, groups - g))
    counts[-1] = 0
    return counts


def group_bounds(num_positions: int, groups: int, sizes: GroupSizes = "cosine") -> list[int]:
    """[0, a_1, …, N]: group g holds the cells ``cell_order(N)[a_g : a_{g+1}]``."""
    return [0] + [num_positions - left for left in undecided_after_groups(num_positions, groups, sizes)]


def cell_groups(bounds: list[int]) -> torch.Tensor:
    """(N,) the group of each cell of a block drawn in the groups `bounds` (`group_bounds`)."""
    order, groups = cell_order(bounds[-1]), torch.empty(bounds[-1], dtype=torch.long)
    for g, (start, end) in enumerate(zip(bounds, bounds[1:])):
        groups[order[start:end]] = g
    return groups


def cell_order(num_positions: int) -> torch.Tensor:
    """The fixed order in which a block's cells are decided, group after group: a seeded permutation,
    so that every group is spread over the whole latent."""
    return torch.randperm(num_positions, generator=torch.Generator().manual_seed(0))


@dataclass(frozen=True)
class DecodeSchedule(Config):
    """How the cells of a media range's generated blocks are drawn."""

    # groups (= passes) per generated block, noisiest first: one entry per block, T in all
    groups: tuple[int, ...] = bounded(ge=1)
    group_sizes: GroupSizes = "cosine"

    def rules(self):
        yield bool(self.groups), "groups", "must list the groups of each generated block, got none"

    @property
    def passes(self) -> int:
        """Transformer passes per item (classifier-free guidance runs its two rows in the same pass)."""
        return sum(self.groups)

    def bounds(self, num_positions: int) -> list[list[int]]:
        """`group_bounds` of every generated block."""
        return [group_bounds(num_positions, groups, self.group_sizes) for groups in self.groups]


@dataclass(frozen=True)
class StreamLayout(Config):
    """A model's stream layout (see the module docstring); a recipe's ``layout:`` section."""

    LATER = frozenset({"query_patch", "code_geometry", "tied_codes"})

    media_order: MediaOrder = "timestep"
    readout_patch: int = bounded(1, ge=1)  # odd: a linear read-out cell takes the s_0 of the k² cells around it
    query_patch: int = bounded(1, ge=1)  # odd: a query takes the decided cells of the k² cells around it
    code_geometry: bool = False  # code logits add a term of the codebook vectors (`code_geometry.py`)
    # media range -> the range whose code rows (input and output) it shares: a video range whose
    # frames the image tokenizer codes (`TokenizerSection.frames_from`) reads and draws image codes
    tied_codes: dict[str, str] = field(default_factory=dict)
    decode: dict[str, DecodeSchedule] = field(default_factory=dict)  # media range -> its schedule
    reader: ReaderSpec = field(default_factory=ReaderSpec)

    def rules(self):
        yield self.readout_patch % 2 == 1, "readout_patch", f"must be an odd number, got {self.readout_patch}"
        yield (self.reader.kind == "linear" or self.readout_patch == 1, "readout_patch",
               f"is the linear reader's neighbourhood; the conv reader sees the whole latent, got {self.readout_patch}")
        yield self.query_patch % 2 == 1, "query_patch", f"must be an odd number, got {self.query_patch}"
        yield (self.media_order == "timestep" or self.query_patch == 1, "query_patch",
               f"is a neighbourhood of decided cells of a block drawn in groups; the raster order has none, "
               f"got {self.query_patch}")
        yield (self.media_order == "timestep" or not self.decode, "decode",
               "the raster order draws one code per pass; it takes no decode schedule")

    def schedule(self, name: str) -> DecodeSchedule:
        if name not in self.decode:
            raise UnitokError(f"the layout has no decode schedule for {name!r} (it has {sorted(self.decode)})")
        return self.decode[name]

    def with_default_schedules(self, noise_steps: dict[str, int]) -> StreamLayout:
        """This layout with one group per generated block for every media range (name -> its T)
        that has no schedule, in timestep order: the one place that default is made."""
        if self.media_order == "raster":
            return self
        defaults = {name: DecodeSchedule((1,) * steps) for name, steps in noise_steps.items() if steps}
        return replace(self, decode={**defaults, **self.decode})

    def readout_width(self, latent_channels: int) -> int:
        """State inputs of a read-out position: its own 2C rows (``s_0``, zeros for ε̂) and (k² − 1)·C
        for a linear reader's k × k neighbours; the ``s_0`` of its pool² cells for the conv reader."""
        if self.reader.kind == "conv":
            return self.reader.pool ** 2 * latent_channels
        return (self.readout_patch ** 2 + 1) * latent_channels

    def query_width(self, latent_channels: int) -> int:
        """State inputs of a query: its own 2C and, with `query_patch` k > 1, (k² − 1)·C for the
        decided cells of its neighbourhood."""
        return (self.query_patch ** 2 + 1) * latent_channels if self.query_patch > 1 else 2 * latent_channels

    def problems(self, name: str, noise_steps: int, latent_shape: tuple[int, ...]) -> list[str]:
        """What does not fit a media range `name` whose tokenizer has `noise_steps` (T) and a latent
        of `latent_shape` (a range without a schedule takes the default, which fits)."""
        num_positions = math.prod(latent_shape)
        reader = self.reader.problems(latent_shape)
        if reader:
            return reader
        if self.media_order == "raster":
            return [] if noise_steps == 0 else [f"media_order: raster needs tokenizers with noise_steps = 0; "
                                                f"{name}'s has {noise_steps}"]
        if noise_steps == 0:
            return [f"media_order: timestep needs tokenizers with noise_steps >= 1 (T = 0 is the raster "
                    f"baseline's); {name}'s has 0"]
        if name not in self.decode:
            return []
        groups = self.decode[name].groups
        if len(groups) != noise_steps:
            return [f"decode.{name}.groups: expected one entry per generated block ({noise_steps} for T = "
                    f"{noise_steps}, noisiest first), got {list(groups)}"]
        if max(groups) > num_positions:
            return [f"decode.{name}.groups: {max(groups)} groups cannot each hold one of {num_positions} cells"]
        return []

    def fitted(self, tokenizers: dict[str, tuple[int, tuple[int, ...]]]) -> StreamLayout:
        """This layout checked against media ranges (name -> (T, latent shape)) and completed with
        the default schedules; refused, naming each problem, where it does not fit."""
        problems = [problem for name, (steps, shape) in tokenizers.items()
                    for problem in self.problems(name, steps, shape)]
        problems += [f"decode: {name!r} names no media range of this model ({sorted(tokenizers)})"
                     for name in self.decode if name not in tokenizers]
        problems += [f"tied_codes: {name}: {target} must tie a media range of this model ({sorted(tokenizers)}) "
                     f"to another one that is not tied itself" for name, target in self.tied_codes.items()
                     if {name, target} - set(tokenizers) or name == target or target in self.tied_codes]
        if problems:
            raise UnitokError("layout: " + "; layout: ".join(problems))
        return self.with_default_schedules({name: steps for name, (steps, _) in tokenizers.items()})
