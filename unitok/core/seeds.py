"""Seeds of tokenization and generation: one per item, each with its own generator, so that what
an item draws depends on its own seed only, never on the other items of its batch or its place
among them (diffusers gives each item a generator for the same reason)."""

from __future__ import annotations

from typing import Sequence

import torch

from unitok.core.errors import UnitokError

MAX_SEED = 2**63  # torch generators take seeds below it


def item_seeds(seed: int | Sequence[int], count: int) -> list[int]:
    """One seed per item: `seed` for every item, or the `count` seeds it lists."""
    seeds = [seed] * count if isinstance(seed, int) and not isinstance(seed, bool) else seed
    if not isinstance(seeds, (list, tuple)) or len(seeds) != count or not all(
            isinstance(s, int) and not isinstance(s, bool) and 0 <= s < MAX_SEED for s in seeds):
        raise UnitokError(f"seed: expected an integer in [0, 2**63) or a list of {count} such integers (one per "
                          f"item), got {type(seed).__name__} {seed!r}")
    return list(seeds)


def item_generators(seeds: Sequence[int | torch.Generator]) -> list[torch.Generator]:
    """A CPU generator per item: a new one for a seed, a given one as it stands (an item's noise
    and then its samples come from one generator, one stream, in that order)."""
    return [s if isinstance(s, torch.Generator) else torch.Generator().manual_seed(int(s)) for s in seeds]
