"""Pieces both training loops share: optimizer schedule, precision choice, data cycling."""

from __future__ import annotations

import math
from typing import Iterator

import torch
from torch.optim.lr_scheduler import LambdaLR


class TrainingDiverged(ValueError):
    """The loss stopped being a finite number; the weights are not saved."""


def check_finite(loss: torch.Tensor, step: int, desc: str) -> None:
    """Stop at the first non-finite loss instead of training (and saving) NaN weights."""
    if not torch.isfinite(loss.detach()).all():
        raise TrainingDiverged(f"{desc}: the loss is {loss.item()} at step {step}; lower the learning rate"
                               " or set mixed_precision: \"no\"")


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int,
                  final_fraction: float = 0.1) -> LambdaLR:
    """Linear warmup to the peak, then cosine decay to `final_fraction` of it."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


def mixed_precision(setting: str) -> str:
    """"auto" -> bf16 where the hardware computes it natively (CUDA with bf16, or a CPU with
    AVX512-BF16 or AMX, where a training step of the quickstart's sizes runs about 1.5x faster),
    else full precision. Emulated bf16 would only be slower."""
    if setting != "auto":
        return setting
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "no"
    native = [getattr(torch.cpu, check, lambda: False)() for check in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return "bf16" if any(native) else "no"


def cycle(loader, set_epoch: bool = True) -> Iterator:
    """Batches forever, re-shuffling every epoch."""
    epoch = 0
    while True:
        if set_epoch and hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        yield from loader
        epoch += 1
