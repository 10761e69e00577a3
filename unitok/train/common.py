"""Pieces both training loops share: optimizer schedule, precision choice, data cycling."""

from __future__ import annotations

import json
from typing import Iterator, Literal

import torch
from accelerate import Accelerator
from torch.optim.lr_scheduler import LambdaLR
from transformers.optimization import get_cosine_with_min_lr_schedule_with_warmup_lr_rate

from unitok.core.errors import UnitokError


class TrainingDiverged(UnitokError):
    """The loss stopped being a finite number; the weights are not saved."""


def check_finite(loss: torch.Tensor, step: int, desc: str) -> None:
    """Stop at the first non-finite loss instead of training (and saving) NaN weights."""
    if not torch.isfinite(loss.detach()).all():
        raise TrainingDiverged(f"{desc}: the loss is {loss.item()} at step {step}; lower the learning rate"
                               " or set mixed_precision: \"no\"")


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int,
                  final_fraction: float = 0.1) -> LambdaLR:
    """Linear warmup to the peak, then cosine decay to `final_fraction` of it (transformers' schedule).

    Step it once per optimizer step and do not pass it to `accelerator.prepare`: a prepared
    scheduler steps once per process for every optimizer step, so on W processes the schedule
    would end after steps / W (register it with `accelerator.register_for_checkpointing`)."""
    return get_cosine_with_min_lr_schedule_with_warmup_lr_rate(optimizer, warmup_steps, total_steps,
                                                               min_lr_rate=final_fraction)


Precision = Literal["auto", "no", "bf16", "fp16"]  # accelerate's mixed_precision, or "auto"


def mixed_precision(setting: Precision) -> str:
    """"auto" -> bf16 where the hardware computes it natively (CUDA with bf16, or a CPU with
    AVX512-BF16 or AMX, where a training step of the quickstart's sizes runs about 1.5x faster),
    else full precision. Emulated bf16 would only be slower."""
    if setting != "auto":
        return setting
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "no"
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    native = [getattr(torch.cpu, check, lambda: False)() for check in checks]
    return "bf16" if any(native) else "no"


def finish_trackers(accelerator: Accelerator) -> None:
    """What `Accelerator.end_training` does but for destroying the process group: a recipe's
    stages share it, and the program that started them ends it (`core.runtime.end_processes`)."""
    for tracker in accelerator.trackers:
        tracker.finish()


def cycle(loader, set_epoch: bool = True) -> Iterator:
    """Batches forever, re-shuffling every epoch."""
    epoch = 0
    while True:
        if set_epoch and hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def flat_hyperparameters(config: dict, prefix: str = "") -> dict:
    """`config` flattened to the scalar values trackers take as hyperparameters ("lm.steps": 2000;
    lists and mappings inside as JSON text)."""
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat |= flat_hyperparameters(value, f"{name}.")
        elif value is None or isinstance(value, (bool, int, float, str)):
            flat[name] = value
        else:
            flat[name] = json.dumps(value, default=str)
    return flat
