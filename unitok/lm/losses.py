"""The one next-token loss, at labelled positions only: training's (optionally weighted by the
target's kind) and the held-out cross-entropy per task and per generated block."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from unitok.core.errors import UnitokError
from unitok.lm.batch import Batch, collate
from unitok.lm.model import batch_logits
from unitok.lm.streams import IGNORE, Stream
from unitok.tokenizer.vocabulary import Vocabulary


def labelled_losses(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy (M,) at the batch's M labelled positions (targets are already aligned: no
    shift), and their (B, L) mask; only those positions are projected onto the vocabulary."""
    labelled = batch.targets != IGNORE
    logits_MV = batch_logits(model, batch, labelled).float()
    return F.cross_entropy(logits_MV, batch.targets[labelled], reduction="none"), labelled


def stream_loss(model: nn.Module, batch: Batch, target_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy over every labelled position.

    With `target_weights` (V,), the weighted mean in which a position counts by its target id's
    weight (per-modality loss weights, `loss_weight_table`).
    """
    losses_N, labelled = labelled_losses(model, batch)
    if target_weights is None:
        return losses_N.mean()
    weights_N = target_weights[batch.targets[labelled]]
    return (losses_N * weights_N).sum() / weights_N.sum().clamp_min(1e-8)


def loss_weight_table(vocab: Vocabulary, weights: dict[str, float], size: int) -> torch.Tensor | None:
    """(size,) weight of each target id for `stream_loss` from weights per target kind ("text" for
    text and special tokens, or a modality); None when every weight is 1."""
    kinds = {"text"} | {r.modality for r in vocab.media_ranges()}
    unknown = set(weights) - kinds
    if unknown:
        raise UnitokError(f"loss_weights has {sorted(unknown)}; expected some of {sorted(kinds)}")
    if all(w == 1 for w in weights.values()):
        return None
    table = torch.full((size,), weights.get("text", 1.0))
    for r in vocab.media_ranges():
        table[r.offset : r.end] = weights.get(r.modality, 1.0)
    return table


@torch.no_grad()
def heldout_loss(model: nn.Module, vocab: Vocabulary, docs_by_task: dict[str, list[Stream]], device,
                 batch_size: int = 16) -> dict:
    """Held-out cross-entropy (unweighted) overall, per task, and per target media block (noisiest first)."""
    model.eval()
    task_sum, task_count, block_sum, block_count = {}, {}, {}, {}
    for task, docs in docs_by_task.items():
        task_sum[task], task_count[task] = 0.0, 0
        for start in range(0, len(docs), batch_size):
            batch = collate([[d] for d in docs[start:start + batch_size]], vocab.special_id("<pad>")).to(device)
            losses, labelled = labelled_losses(model, batch)  # (M,): one per labelled position
            task_sum[task] += losses.sum().item()
            task_count[task] += losses.numel()
            target_block = torch.full_like(batch.targets, -1)
            for row, doc in enumerate(docs[start:start + batch_size]):
                target_block[row, : len(doc)] = torch.tensor(doc.target_block)
            target_block = target_block[labelled]
            for block in target_block.unique().tolist():
                if block >= 0:
                    mask = target_block == block
                    block_sum[block] = block_sum.get(block, 0.0) + losses[mask].sum().item()
                    block_count[block] = block_count.get(block, 0) + int(mask.sum())
    per_block = [block_sum[b] / block_count[b] for b in sorted(block_sum)]
    per_task = {t: task_sum[t] / max(task_count[t], 1) for t in task_sum}
    total = sum(task_sum.values()) / max(sum(task_count.values()), 1)
    return {"loss": total, "ce_per_block": per_block, "loss_per_task": per_task}
