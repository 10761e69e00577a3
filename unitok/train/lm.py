"""Train the transformer on a mixture of shard sets with accelerate.

AdamW, warmup + cosine, gradient clipping and accumulation, bf16 where the hardware has it.
Checkpoints every N steps (`checkpoints.py`); a re-run resumes from the newest one at the exact
data position. Held-out loss every `eval_every` steps picks the best weights (early stopping keeps
baselines honest). Runs unchanged under ``accelerate launch`` (DDP; FSDP on GPUs, not yet run
here): each rank streams its own disjoint rows (`data.mixture`).
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, set_seed
from tqdm.auto import tqdm

from unitok.core.config import Config, bounded, to_dict
from unitok.data.mixture import MixtureEntry, MixtureRows, ShardMix, heldout_rows, resolve_mixture
from unitok.data.tasks import TASK_FORMS, is_task
from unitok.lm.batch import Batch, collate, pack
from unitok.lm.documents import DocumentMaker, media_spans
from unitok.lm.layout import StreamLayout
from unitok.lm.losses import heldout_loss, loss_weight_table, stream_loss
from unitok.lm.model import StreamModel
from unitok.lm.streams import Stream
from unitok.tokenizer.media_tokenizer import MediaTokenizer, block_sizes
from unitok.tokenizer.vocabulary import Vocabulary
from unitok.train.checkpoints import load_weights, resume, save_best, save_checkpoint
from unitok.train.common import (
    Precision,
    check_finite,
    finish_trackers,
    flat_hyperparameters,
    mixed_precision,
    warmup_cosine,
)


@dataclass(frozen=True)
class LMTraining(Config):
    """A recipe's ``lm:`` section: how the transformer is trained (its layout is the recipe's ``layout:``)."""

    MOVED = {
        "media_order": "moved to layout.media_order (unitok 0.3)",
        "rounds": "moved to layout.decode.<range>.groups (unitok 0.3: the model's decode schedule, stated once)",
        "round_schedule": "moved to layout.decode.<range>.group_sizes (unitok 0.3)",
        "readout_patch": "moved to layout.readout_patch (unitok 0.3)",
        "readout": "removed in unitok 0.3: read-out blocks always take the clean state s_0",
        "cell_order": "removed in unitok 0.3: the cell order is always a seeded permutation",
    }

    # task -> mixture weight over the recipe's own shard sets; a recipe whose `data` is a list of
    # shard sets gives each set's task and weight there instead
    tasks: dict[str, float] = bounded(default_factory=lambda: {"text_to_image": 1.0}, ge=0)
    steps: int = bounded(2000, ge=1)
    batch_size: int = bounded(16, ge=1)  # documents per process per micro-step
    grad_accum: int = bounded(1, ge=1)
    learning_rate: float = bounded(1e-3, gt=0)
    weight_decay: float = bounded(0.1, ge=0)
    warmup_steps: int = bounded(100, ge=0)
    grad_clip: float = bounded(1.0, gt=0)
    caption_dropout: float = bounded(0.1, ge=0, lt=1)  # probability a text-to-media caption is dropped (guidance)
    # share of text-to-media documents that hold only k_{T-1} (`DocumentMaker`)
    first_step_fraction: float = bounded(0.0, ge=0, le=1)
    # Loss weight per target kind: "text" (text and special tokens) or a modality ("image", …);
    # unlisted kinds weigh 1. The loss is the weighted mean over labelled positions.
    loss_weights: dict[str, float] = bounded(default_factory=dict, ge=0)
    checkpoint_every: int = bounded(200, ge=1)
    eval_every: int = bounded(200, ge=1)
    eval_items: int = bounded(256, ge=0)  # held-out documents per evaluation; 0: none
    early_stopping_patience: int | None = bounded(None, ge=1)  # evals without improvement before stopping
    mixed_precision: Precision = "auto"
    shuffle_buffer: int = bounded(10_000, ge=1)  # rows per streamed shard set in the shuffle buffer
    # accelerate trackers (e.g. [tensorboard], [wandb]): loss, lr, grad_norm, tokens_per_s per step and
    # heldout_loss per eval, files under OUTPUT_DIR/trackers; not part of what the stage's result depends on
    log_with: list[str] = field(default_factory=list)

    def rules(self):
        yield sum(self.tasks.values()) > 0, "tasks", "must give at least one task a positive weight"
        for task in self.tasks:
            yield is_task(task), f"tasks.{task}", f"unknown task; expected {TASK_FORMS}"


class TrainingBatches:
    """Packed training batches for one rank: rows drawn from the mixture, made into documents."""

    def __init__(self, rows: MixtureRows, vocab: Vocabulary, tokenizers: dict[str, MediaTokenizer],
                 documents: DocumentMaker, batch_size: int, seed: int, rank: int = 0):
        self.rows, self.vocab, self.tokenizers, self.documents = rows, vocab, tokenizers, documents
        self.batch_size, self.seed, self.rank = batch_size, seed, rank

    def batch(self, step: int, micro: int) -> tuple[Batch, list[tuple[str, str]]]:
        """The documents of one micro-step, packed, and what each was: (task, ``key#draw``). One
        generator, seeded by (seed, step, micro-step, rank), draws the rows and then the documents'
        choices (caption dropout, first-step documents)."""
        rng = random.Random(hash((self.seed, step, micro, self.rank)))
        drawn = self.rows.draw(rng, self.batch_size)
        spans = media_spans([row for _, row in drawn], self.vocab, self.tokenizers)
        docs = [self.documents.document(entry.task, row["text_ids"], span, rng)
                for (entry, row), span in zip(drawn, spans)]
        batch = collate(pack(docs, max(len(d) for d in docs)), pad_id=self.vocab.special_id("<pad>"))
        return batch, [(entry.task, f"{row['key']}#{row['draw']}") for entry, row in drawn]


def heldout_documents(entries: Sequence[MixtureEntry], vocab: Vocabulary, tokenizers: dict[str, MediaTokenizer],
                      documents: DocumentMaker, count: int) -> dict[str, list[Stream]]:
    """Held-out documents of `heldout_rows`: every caption and generated block."""
    return {task: documents.heldout(task, rows, media_spans(rows, vocab, tokenizers))
            for task, rows in heldout_rows(entries, vocab, count).items()}


def train_lm(model: StreamModel, vocab: Vocabulary, tokenizers: dict[str, MediaTokenizer],
             layout: StreamLayout, mixture: Sequence[ShardMix], cfg: LMTraining, output_dir: str | Path,
             seed: int = 0, tracker_config: dict | None = None) -> dict:
    """Train `model` (the transformer and any readers) in place on a mixture of shard sets, laid
    out as `layout` says; checkpoints under `output_dir/checkpoints`, best weights loaded at the
    end. `tokenizers` (range name -> media tokenizer) give the running states of the streamed media
    codes. Every rank logs each step's loss and items to ``log/rank-<i>.jsonl``. Returns the
    history: held-out losses per eval, the step whose weights were kept, and the training's wall
    time in seconds (over resumed runs too). Trackers (`cfg.log_with`) get `tracker_config`
    (default: `cfg`) as hyperparameters.
    """
    output_dir = Path(output_dir)
    layout = layout.fitted(block_sizes(tokenizers))
    set_seed(seed)
    # a batch without media→text documents leaves the conv readers without gradients, which DDP must expect
    unused = DistributedDataParallelKwargs(find_unused_parameters=bool(model.readers))
    accelerator = Accelerator(mixed_precision=mixed_precision(cfg.mixed_precision),
                              gradient_accumulation_steps=cfg.grad_accum, log_with=cfg.log_with or None,
                              project_dir=output_dir / "trackers", kwargs_handlers=[unused])
    accelerator.init_trackers("lm", config=flat_hyperparameters(tracker_config or to_dict(cfg)))
    transformer = model.transformer
    optimizer = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.learning_rate, betas=(0.9, 0.95))
    scheduler = warmup_cosine(optimizer, cfg.warmup_steps, cfg.steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    for tokenizer in tokenizers.values():
        tokenizer.to(accelerator.device)
    entries = resolve_mixture(mixture, vocab, tokenizers, accelerator.num_processes)
    documents = DocumentMaker(vocab, layout, cfg.caption_dropout, cfg.first_step_fraction)
    rows = MixtureRows(entries, vocab, seed, cfg.shuffle_buffer, accelerator.process_index, accelerator.num_processes)
    data = TrainingBatches(rows, vocab, tokenizers, documents, cfg.batch_size, seed, accelerator.process_index)
    weights = loss_weight_table(vocab, cfg.loss_weights, transformer.config.vocab_size)
    checkpoints = output_dir / "checkpoints"
    state = resume(accelerator, checkpoints, rows)
    started, seconds_before = time.perf_counter(), state.get("seconds", 0.0)  # wall time over every invocation
    eval_docs = heldout_documents(entries, vocab, tokenizers, documents, cfg.eval_items)
    log = StepLog(output_dir / "log" / f"rank-{accelerator.process_index}.jsonl", state["step"])

    step = state["step"]
    progress = tqdm(range(step, cfg.steps), desc="lm", initial=step, total=cfg.steps,
                    disable=not accelerator.is_local_main_process)
    model.train()
    for step in progress:
        drawn, tokens, step_started = [], 0, time.perf_counter()
        for micro in range(cfg.grad_accum):
            batch, items = data.batch(step, micro)
            drawn += items
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
        log.write(step + 1, loss.item(), lr, grad_norm.item(), drawn)
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
                save_best(accelerator, model, output_dir / "best")
            if _patience_exhausted(state, cfg.early_stopping_patience):
                state["stopped_early_at"] = done
        if done % cfg.checkpoint_every == 0 or done == cfg.steps or "stopped_early_at" in state:
            state["step"], state["seconds"] = done, seconds_before + time.perf_counter() - started
            save_checkpoint(accelerator, checkpoints, state, rows)
        if "stopped_early_at" in state:
            break
    if state["best_step"] is None:  # no held-out evaluation: the last weights are the kept ones
        save_best(accelerator, model, output_dir / "best")
    accelerator.wait_for_everyone()
    finish_trackers(accelerator)
    progress.close()
    log.close()
    load_weights(accelerator.unwrap_model(model), output_dir / "best")
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


def _improved(state: dict) -> bool:
    losses = [e["loss"] for e in state["evals"]]
    return losses[-1] <= min(losses)


def _patience_exhausted(state: dict, patience: int | None) -> bool:
    if patience is None:
        return False
    losses = [e["loss"] for e in state["evals"]]
    best_index = losses.index(min(losses))
    return len(losses) - 1 - best_index >= patience
