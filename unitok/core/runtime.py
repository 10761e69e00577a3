"""Where code runs: torch devices by name, and the processes of a run (one, or the ranks of
``accelerate launch``), which every stage of a recipe shares."""

from __future__ import annotations

from datetime import timedelta

import torch
from accelerate import PartialState
from accelerate.utils import parse_flag_from_env

from unitok.core.errors import UnitokError


def torch_device(name: str) -> torch.device:
    """The device `name`, refused in one line when it does not parse or is not on this machine."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UnitokError(f"unknown device {name!r} (cpu, cuda, cuda:1, …)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UnitokError(f"device {name}: this machine has no CUDA device; use cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UnitokError(f"device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


# How long a rank waits at a barrier: the other ranks wait there while the main process runs a
# main-only stage (a recipe's eval takes most of an hour on a 2-core CPU), longer than torch's
# default of 30 minutes.
BARRIER_TIMEOUT = timedelta(hours=6)


def processes() -> PartialState:
    """The processes of this run. `Accelerator()` reads ACCELERATE_USE_CPU (set by `accelerate
    launch` with use_cpu); a bare `PartialState()` would not, and every CPU rank would act as the
    only process. The first call sets the process group up (with `BARRIER_TIMEOUT`)."""
    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"), timeout=BARRIER_TIMEOUT)


def end_processes() -> None:
    """Leave the process group at the end of a program (a live gloo group can abort the exit); the
    training loops leave it up, since a recipe's stages share it."""
    processes().destroy_process_group()
