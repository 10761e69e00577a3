"""Train the transformer on a mixture of shard sets with accelerate.

AdamW, warmup + cosine, gradient clipping and accumulation, bf16 where the hardware has it.
Checkpoints (``accelerator.save_state``: safetensors weights + optimizer/scheduler/RNG state,
plus every rank's data position) every N steps; a re-run resumes from the newest one at the
exact data position. Held-out loss every `eval_every` steps picks the best weights (early
stopping keeps baselines honest). Runs unchanged under ``accelerate launch`` (DDP; FSDP on GPUs,
not yet run here): each rank streams its own disjoint rows (see `training.data`).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from safetensors.torch import load_file
from transformers import LlamaForCausalLM
from tqdm.auto import tqdm

from ..config import to_dict
from ..errors import UnitokError
from ..media_tokenizer import MediaTokenizer
from ..model import StreamModel, labelled_losses, stream_loss
from ..streams import CellOrder, ReadOut, Stream, collate, task_modality
from ..vocabulary import Vocabulary
from .common import check_finite, flat_hyperparameters, mixed_precision, warmup_cosine
from .data import DocumentRecipe, MixtureBatches, ShardMix, heldout_documents, resolve_mixture

PROGRESS_NAME = "progress.json"
DATA_POSITION = "data-rank-{rank}.json"  # rows each stream of the mixture consumed, per rank


@dataclass(frozen=True)
class LMTraining:
    # task -> mixture weight over the recipe's own shard sets; a recipe whose `data` is a list of
    # shard sets gives each set's task and weight there instead
    tasks: dict[str, float] = field(default_factory=lambda: {"text_to_image": 1.0})
    media_order: Literal["timestep", "raster"] = "timestep"
    steps: int = 2000
    batch_size: int = 16  # documents per process per micro-step
    grad_accum: int = 1
    learning_rate: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = 100
    grad_clip: float = 1.0
    caption_dropout: float = 0.1  # probability a text-to-media caption is dropped (for guidance)
    # Share of text-to-media documents that hold only the first generated block k_{T-1}, where the
    # caption's content enters, at about a quarter of a whole document's tokens. A block sees only
    # the prefix and itself, so its gradients are exactly those of that block in a whole document.
    first_step_fraction: float = 0.0
    # In how many groups the cells of each generated block are drawn, per media range (e.g.
    # {image: [8, 2, 1, 1]} for T = 4), and the groups' sizes (`streams.undecided_after_rounds`):
    # every cell is trained with what the sampler knows when it draws it; one round per block
    # where not given. The sampler's `rounds` must be these (the pipeline stage checks).
    rounds: dict[str, list[int]] = field(default_factory=dict)
    round_schedule: Literal["cosine", "linear", "quadratic"] = "cosine"
    cell_order: CellOrder = "random"  # the order the groups take cells in (`streams.cell_order`)
    readout: ReadOut = "clean"  # what a read-out block takes besides s_0 (`streams.ReadOut`), saved with the pipeline
    readout_patch: int = 1  # a read-out cell also takes the s_0 of its readout_patch² − 1 neighbours (odd; rows of its
    # own in the vocabulary, `Vocabulary.with_readout_patch`)
    # Loss weight per target kind: "text" (text and special tokens) or a modality ("image", …);
    # unlisted kinds weigh 1. The loss is the weighted mean over labelled positions.
    loss_weights: dict[str, float] = field(default_factory=dict)
    checkpoint_every: int = 200
    eval_every: int = 200
    eval_items: int = 256
    early_stopping_patience: int | None = None  # evals without improvement before stopping
    mixed_precision: str = "auto"
    shuffle_buffer: int = 10_000  # rows per streamed shard set in the shuffle buffer
    # accelerate trackers (e.g. [tensorboard], [wandb]): loss, lr, grad_norm, tokens_per_s per step and
    # heldout_loss per eval, files under OUTPUT_DIR/trackers; not part of what the stage's result depends on
    log_with: list[str] = field(default_factory=list)

    def __post_init__(self):
        if not self.tasks or any(w < 0 for w in self.tasks.values()) or sum(self.tasks.values()) <= 0:
            raise UnitokError("tasks must map task names to non-negative weights with a positive sum")
        if not 0 <= self.caption_dropout < 1:
            raise UnitokError("caption_dropout must be in [0, 1)")
        if not 0 <= self.first_step_fraction <= 1:
            raise UnitokError("first_step_fraction must be in [0, 1]")
        for task in self.tasks:
            task_modality(task)  # raises on an unknown task name
        if any(w < 0 for w in self.loss_weights.values()):
            raise UnitokError("loss_weights must be non-negative")
        if self.shuffle_buffer < 1:
            raise UnitokError("shuffle_buffer must be >= 1")
        if self.readout_patch < 1 or self.readout_patch % 2 == 0:
            raise UnitokError(f"readout_patch must be an odd number >= 1, got {self.readout_patch}")


def loss_weight_table(vocab: Vocabulary, weights: dict[str, float], size: int) -> torch.Tensor | None:
    """(size,) weight of each target id for `stream_loss`; None when every weight is 1."""
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


def train_lm(transformer: LlamaForCausalLM, vocab: Vocabulary, tokenizers: dict[str, MediaTokenizer],
             mixture: Sequence[ShardMix], cfg: LMTraining, output_dir: str | Path, seed: int = 0,
             tracker_config: dict | None = None) -> dict:
    """Train `transformer` in place on a mixture of shard sets; checkpoints under
    `output_dir/checkpoints`, best weights loaded at the end. `tokenizers` (range name -> media
    tokenizer) give the running states of the streamed media codes. Every rank logs each step's
    loss and items to ``log/rank-<i>.jsonl``. Returns the history: held-out losses per eval, the
    step whose weights were kept, and the training's wall time in seconds (over resumed runs too).
    Trackers (`cfg.log_with`) get `tracker_config` (default: `cfg`) as hyperparameters.
    """
    output_dir = Path(output_dir)
    set_seed(seed)
    accelerator = Accelerator(mixed_precision=mixed_precision(cfg.mixed_precision),
                              gradient_accumulation_steps=cfg.grad_accum, log_with=cfg.log_with or None,
                              project_dir=output_dir / "trackers")
    accelerator.init_trackers("lm", config=flat_hyperparameters(tracker_config or to_dict(cfg)))
    model = StreamModel(transformer)
    optimizer = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.learning_rate, betas=(0.9, 0.95))
    scheduler = warmup_cosine(optimizer, cfg.warmup_steps, cfg.steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    for tokenizer in tokenizers.values():
        tokenizer.to(accelerator.device)
    entries = resolve_mixture(mixture, vocab, tokenizers, accelerator.num_processes)
    documents = DocumentRecipe(vocab, cfg.media_order, cfg.caption_dropout, cfg.first_step_fraction, cfg.rounds,
                               cfg.round_schedule, cfg.cell_order, cfg.readout,
                               {name: tokenizer.latent_shape for name, tokenizer in tokenizers.items()})
    data = MixtureBatches(entries, vocab, tokenizers, documents, cfg.batch_size, seed, cfg.shuffle_buffer,
                          accelerator.process_index, accelerator.num_processes)
    weights = loss_weight_table(vocab, cfg.loss_weights, transformer.config.vocab_size)
    checkpoints = output_dir / "checkpoints"
    state = _resume(accelerator, checkpoints, data)
    started, seconds_before = time.perf_counter(), state.get("seconds", 0.0)  # wall time over every invocation
    eval_docs = heldout_documents(entries, vocab, tokenizers, documents, cfg.eval_items)
    log = StepLog(output_dir / "log" / f"rank-{accelerator.process_index}.jsonl", state["step"])

    step = state["step"]
    progress = tqdm(range(step, cfg.steps), desc="lm", initial=step, total=cfg.steps,
                    disable=not accelerator.is_local_main_process)
    model.train()
    for step in progress:
        documents, tokens, step_started = [], 0, time.perf_counter()
        for micro in range(cfg.grad_accum):
            batch, drawn = data.batch(step, micro)
            documents += drawn
            tokens += int((batch.document_ids >= 0).sum()) * accelerator.num_processes
            with accelerator.accumulate(model):
                loss = stream_loss(model, batch.to(accelerator.device),
                                   None if weights is None else weights.to(accelerator.device))
                check_finite(loss, step + 1, "lm")
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        lr = scheduler.get_last_lr()[0]  # the rate this step trained with
        scheduler.step()
        log.write(step + 1, loss.item(), lr, grad_norm.item(), documents)
        progress.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.1e}")
        done = step + 1
        accelerator.log({"loss": loss.item(), "lr": lr, "grad_norm": grad_norm.item(),
                         "tokens_per_s": tokens / (time.perf_counter() - step_started)}, step=done)
        if eval_docs and (done % cfg.eval_every == 0 or done == cfg.steps):
            state["evals"].append({"step": done, **heldout_loss(model, vocab, eval_docs, accelerator.device)})
            accelerator.log({"heldout_loss": state["evals"][-1]["loss"]}, step=done)
            model.train()
            if _improved(state):
                state["best_step"] = done
                _save_transformer(accelerator, model, output_dir / "best")
            if _patience_exhausted(state, cfg.early_stopping_patience):
                state["stopped_early_at"] = done
        if done % cfg.checkpoint_every == 0 or done == cfg.steps or "stopped_early_at" in state:
            state["step"], state["seconds"] = done, seconds_before + time.perf_counter() - started
            _checkpoint(accelerator, checkpoints, state, data)
        if "stopped_early_at" in state:
            break
    if state["best_step"] is None:  # no held-out evaluation: the last weights are the kept ones
        _save_transformer(accelerator, model, output_dir / "best")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    progress.close()
    log.close()
    _load_best(transformer, output_dir / "best")
    return state


class StepLog:
    """One JSON line per optimizer step: its loss, learning rate and gradient norm (before clipping),
    the items (``key#draw``) it trained on and their tasks.
    Opening it at a resumed step drops the lines of steps after that checkpoint, which are re-done,
    and a line a kill cut short."""

    def __init__(self, path: Path, resumed_step: int):
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = path.read_text().splitlines() if path.is_file() else []
        kept = [line for line in lines if line.endswith("}") and json.loads(line)["step"] <= resumed_step]
        path.write_text("".join(line + "\n" for line in kept))
        self.file = path.open("a")

    def write(self, step: int, loss: float, lr: float, grad_norm: float, documents: list[tuple[str, str]]) -> None:
        tasks, items = zip(*documents)
        line = {"step": step, "loss": loss, "lr": lr, "grad_norm": grad_norm, "items": items, "tasks": tasks}
        self.file.write(json.dumps(line) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on norms and biases (1-D tensors), as usual for transformers."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@torch.no_grad()
def heldout_loss(model: torch.nn.Module, vocab: Vocabulary, docs_by_task: dict[str, list[Stream]], device,
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


def _improved(state: dict) -> bool:
    losses = [e["loss"] for e in state["evals"]]
    return losses[-1] <= min(losses)


def _patience_exhausted(state: dict, patience: int | None) -> bool:
    if patience is None:
        return False
    losses = [e["loss"] for e in state["evals"]]
    best_index = losses.index(min(losses))
    return len(losses) - 1 - best_index >= patience


def _checkpoint(accelerator: Accelerator, root: Path, state: dict, data: MixtureBatches) -> None:
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


def _resume(accelerator: Accelerator, root: Path, data: MixtureBatches) -> dict:
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


def _save_transformer(accelerator: Accelerator, model: torch.nn.Module, directory: Path) -> None:
    """`save_pretrained` of the whole transformer. Every rank takes part: under FSDP
    `get_state_dict` gathers the shards, which the unwrapped module alone does not hold."""
    weights = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        weights = {name.removeprefix("transformer."): tensor for name, tensor in weights.items()}
        accelerator.unwrap_model(model).transformer.save_pretrained(directory, state_dict=weights)


def _load_best(model: torch.nn.Module, best_dir: Path) -> None:
    weights = best_dir / "model.safetensors"
    if weights.is_file():
        missing, unexpected = model.load_state_dict(load_file(str(weights)), strict=False)
        if unexpected or any("lm_head" not in k for k in missing):  # lm_head is tied to the embeddings
            raise RuntimeError(f"{weights}: does not match the model (missing {missing}, unexpected {unexpected})")
