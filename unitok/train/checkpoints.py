"""What a transformer training checkpoint holds, and how the kept weights are saved.

A checkpoint (``checkpoints/step-N/``) is ``accelerator.save_state`` (safetensors weights,
optimizer, scheduler and RNG states), every rank's data position (``data-rank-<i>.json``,
`MixtureRows.state_dict`) and the run's progress (``progress.json``: step, held-out evals, the best
step, wall time). It is written under a temporary name and renamed into place, so a kill leaves
the previous one whole.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from accelerate import Accelerator
from safetensors.torch import load_file

from unitok.core.errors import UnitokError
from unitok.data.mixture import MixtureRows
from unitok.lm.model import StreamModel

PROGRESS_NAME = "progress.json"
DATA_POSITION = "data-rank-{rank}.json"  # rows each stream of the mixture consumed, per rank


def save_checkpoint(accelerator: Accelerator, root: Path, state: dict, data: MixtureRows) -> None:
    """Save to a temporary folder, rename it into place, then drop older checkpoints."""
    final = root / f"step-{state['step']:07d}"
    tmp = root / f".tmp-step-{state['step']:07d}"
    accelerator.save_state(str(tmp), safe_serialization=True)
    (tmp / DATA_POSITION.format(rank=accelerator.process_index)).write_text(json.dumps(data.state_dict()))
    accelerator.wait_for_everyone()  # every rank has written its RNG state and data position into tmp
    if accelerator.is_main_process:
        (tmp / PROGRESS_NAME).write_text(json.dumps(state, indent=2))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in root.glob("step-*"):
            if old != final:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()


def resume(accelerator: Accelerator, root: Path, data: MixtureRows) -> dict:
    done = sorted(root.glob("step-*")) if root.is_dir() else []
    if not done:
        return {"step": 0, "evals": [], "best_step": None}
    latest = done[-1]
    accelerator.load_state(str(latest))
    position = latest / DATA_POSITION.format(rank=accelerator.process_index)
    if not position.is_file():
        raise UnitokError(f"{latest}: no data position for rank {accelerator.process_index}; "
                         "resume with the number of processes that wrote it")
    data.load_state_dict(json.loads(position.read_text()))
    state = json.loads((latest / PROGRESS_NAME).read_text())
    accelerator.print(f"resuming from {latest} (step {state['step']})")
    return state


def save_best(accelerator: Accelerator, model: torch.nn.Module, directory: Path) -> None:
    """`StreamModel.save_pretrained` of the whole model. Every rank takes part: under FSDP
    `get_state_dict` gathers the shards, which the unwrapped module alone does not hold."""
    weights = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        accelerator.unwrap_model(model).save_pretrained(directory, state_dict=weights)


def load_weights(model: StreamModel, best_dir: Path) -> None:
    """The kept weights (`save_best`) into `model`, in place; nothing when none were saved."""
    weights = best_dir / "model.safetensors"
    if weights.is_file():
        missing, unexpected = model.transformer.load_state_dict(load_file(str(weights)), strict=False)
        if unexpected or any("lm_head" not in k for k in missing):  # lm_head is tied to the embeddings
            raise RuntimeError(f"{weights}: does not match the model (missing {missing}, unexpected {unexpected})")
        model.load_media_modules(best_dir)
