"""Train a media tokenizer (autoencoder + RDPM quantizer) with accelerate.

Loss: MSE of D(z + sg(s_0 − z)) against the input (straight-through) + β · commitment over
every step. The codebook follows an EMA of the residuals assigned to it, dead codes restart from
current residuals, and σ_t tracks each step's residual RMS (see `tokenizer/rdpm.py`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import AutocastKwargs, set_seed
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm

from unitok.core.config import Config, bounded, to_dict
from unitok.tokenizer.media_tokenizer import MediaTokenizer, TokenizerSpec
from unitok.train.common import (
    Precision,
    check_finite,
    cycle,
    finish_trackers,
    flat_hyperparameters,
    mixed_precision,
    warmup_cosine,
)


@dataclass(frozen=True)
class TokenizerTraining(Config):
    """A recipe's ``tokenizers.<modality>.training`` section."""

    MOVED = {"l1_weight": "removed in unitok 0.3: the reconstruction loss is MSE"}

    steps: int = bounded(1500, ge=1)
    batch_size: int = bounded(64, ge=1)
    learning_rate: float = bounded(2e-3, gt=0)
    warmup_steps: int = bounded(100, ge=0)
    weight_decay: float = bounded(0.0, ge=0)
    mixed_precision: Precision = "auto"
    log_with: list[str] = field(default_factory=list)  # accelerate trackers: loss, psnr_db, lr per step


def train_media_tokenizer(spec: TokenizerSpec, inputs: torch.Tensor, cfg: TokenizerTraining, seed: int = 0,
                          desc: str = "tokenizer", tracker_dir: Path | None = None,
                          tracker_config: dict | None = None) -> MediaTokenizer:
    """Fit a tokenizer on preprocessed inputs (M, C, …) in [-1, 1]; returns it in eval mode.
    Trackers (`cfg.log_with`) write under `tracker_dir` with `tracker_config` (default: `cfg`)."""
    set_seed(seed)
    tokenizer = MediaTokenizer(spec)
    accelerator = Accelerator(mixed_precision=mixed_precision(cfg.mixed_precision),
                              kwargs_handlers=[AutocastKwargs(enabled=_autocast_safe(tokenizer))],
                              log_with=cfg.log_with or None, project_dir=tracker_dir)
    accelerator.init_trackers(desc.replace(":", "-"), config=flat_hyperparameters(tracker_config or to_dict(cfg)))
    memory_format = torch.channels_last if tokenizer.adapter.dims == 2 else torch.channels_last_3d
    tokenizer = tokenizer.to(memory_format=memory_format)  # ~2x faster convs on CPU
    optimizer = torch.optim.AdamW(tokenizer.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    scheduler = warmup_cosine(optimizer, cfg.warmup_steps, cfg.steps)
    loader = DataLoader(TensorDataset(inputs), batch_size=cfg.batch_size, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(seed))
    tokenizer, optimizer, loader = accelerator.prepare(tokenizer, optimizer, loader)
    beta = spec.quantizer.commitment_weight
    batches = cycle(loader)
    progress = tqdm(range(cfg.steps), desc=desc, disable=not accelerator.is_local_main_process)
    tokenizer.train()
    for step in progress:
        (x,) = next(batches)
        x = x.contiguous(memory_format=memory_format)
        reconstruction, out = tokenizer(x)
        mse = F.mse_loss(reconstruction.float(), x.float())
        loss = mse + beta * out.commitment_loss
        check_finite(loss, step + 1, desc)
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        optimizer.step()
        scheduler.step()
        progress.set_postfix(psnr=f"{psnr_db(mse.item()):.1f}", commit=f"{out.commitment_loss.item():.3f}")
        accelerator.log({"loss": loss.item(), "psnr_db": psnr_db(mse.item()), "commitment": out.commitment_loss.item(),
                         "lr": scheduler.get_last_lr()[0]}, step=step + 1)
    finish_trackers(accelerator)
    tokenizer = accelerator.unwrap_model(tokenizer)
    return tokenizer.eval()


def _autocast_safe(tokenizer: MediaTokenizer) -> bool:
    """False for video tokenizers on CPU: this torch's CPU bf16 Conv3d weight gradient turns NaN for
    some inputs (a (3, 4, 4) kernel over 2 frames at batch 32, for one), so they train in fp32
    inside a process whose other stages may use bf16 (the precision is per process in accelerate)."""
    return tokenizer.adapter.dims == 2 or torch.cuda.is_available()


def psnr_db(mse_in_unit_range: float) -> float:
    """PSNR for signals in [-1, 1] (peak-to-peak 2)."""
    return 10 * math.log10(4.0 / max(mse_in_unit_range, 1e-12))


@torch.no_grad()
def tokenizer_metrics(tokenizer: MediaTokenizer, inputs: torch.Tensor, seed: int = 0,
                      batch_size: int = 256) -> dict[str, float]:
    """Held-out reconstruction PSNR (through the full encode -> ids -> decode path) and codebook usage."""
    tokenizer.eval()
    squared_error, count, used = 0.0, 0, set()
    for start in range(0, len(inputs), batch_size):
        x = inputs[start:start + batch_size].to(tokenizer.device)
        ids = tokenizer.encode_tensor(x, [seed + start + i for i in range(len(x))])
        reconstruction = tokenizer.decode_tensor(ids).clamp(-1, 1)
        squared_error += F.mse_loss(reconstruction, x, reduction="sum").item()
        count += x.numel()
        used.update(torch.unique(ids).tolist())
    return {"psnr_db": psnr_db(squared_error / count), "codebook_usage": len(used) / tokenizer.codebook_size}
