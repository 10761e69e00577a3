"""Train the transformer on mixed streams with accelerate.

AdamW, warmup + cosine, gradient clipping and accumulation, bf16 where the hardware has it.
Checkpoints (``accelerator.save_state``: safetensors weights + optimizer/scheduler/RNG state)
every N steps; a re-run resumes from the newest one at the exact data position. Held-out loss
every `eval_every` steps picks the best weights (early stopping keeps baselines honest).
Runs unchanged under ``accelerate launch`` (DDP, FSDP): the loader is sharded by accelerate.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Literal, Sequence

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed
from safetensors.torch import load_file
from torch.utils.data import DataLoader, Sampler
from transformers import LlamaForCausalLM
from tqdm.auto import tqdm

from ..model import StreamModel, batch_logits, stream_loss
from ..streams import IGNORE, Batch, Stream, collate, pack, task_document, task_modality
from ..vocabulary import Vocabulary
from .common import mixed_precision, warmup_cosine

PROGRESS_NAME = "progress.json"


@dataclass(frozen=True)
class LMTraining:
    tasks: dict[str, float] = field(default_factory=lambda: {"text_to_image": 1.0})  # task -> mixture weight
    media_order: Literal["timestep", "raster"] = "timestep"
    steps: int = 2000
    batch_size: int = 16  # documents per process per micro-step
    grad_accum: int = 1
    learning_rate: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = 100
    grad_clip: float = 1.0
    caption_dropout: float = 0.1  # probability a text-to-media caption is dropped (for guidance)
    # Share of text-to-media documents that end right after k_T, so they train only the first
    # predicted step (k_T -> k_{T-1}, where the caption's content enters) at about a quarter of
    # a full document's tokens. Block-causal attention makes their gradients exactly those of
    # that step in a full document.
    first_step_fraction: float = 0.0
    # Loss weight per target kind: "text" (text and special tokens) or a modality ("image", …);
    # unlisted kinds weigh 1. The loss is the weighted mean over labelled positions.
    loss_weights: dict[str, float] = field(default_factory=dict)
    checkpoint_every: int = 200
    eval_every: int = 200
    eval_items: int = 256
    early_stopping_patience: int | None = None  # evals without improvement before stopping
    mixed_precision: str = "auto"

    def __post_init__(self):
        if not self.tasks or any(w < 0 for w in self.tasks.values()) or sum(self.tasks.values()) <= 0:
            raise ValueError("tasks must map task names to non-negative weights with a positive sum")
        if not 0 <= self.caption_dropout < 1:
            raise ValueError("caption_dropout must be in [0, 1)")
        if not 0 <= self.first_step_fraction <= 1:
            raise ValueError("first_step_fraction must be in [0, 1]")
        for task in self.tasks:
            task_modality(task)  # raises on an unknown task name
        if any(w < 0 for w in self.loss_weights.values()):
            raise ValueError("loss_weights must be non-negative")

    def modalities(self) -> set[str]:
        """The media modalities the tasks with a positive weight need items of."""
        return {task_modality(t) for t, w in self.tasks.items() if w > 0} - {None}


@dataclass
class TokenItems:
    """Shard rows held as tensors: one caption and one media span per item, with its running states."""

    text_ids: list[list[int]]
    media_ids: torch.Tensor  # (M, num_blocks, N) global ids
    media_states: torch.Tensor  # (M, num_blocks, N, C) the tokenizer's running states of those codes
    media_name: str

    @classmethod
    def from_dataset(cls, dataset, tokenizer, vocab: Vocabulary) -> "TokenItems":
        """Rows of one shard set, made by `tokenizer` (a `MediaTokenizer`) in `vocab`."""
        names = set(dataset.unique("media"))
        if len(names) != 1:
            raise ValueError(f"expected one media range per shard set, found {sorted(names)}")
        name = names.pop()
        media = torch.tensor(dataset["media_ids"], dtype=torch.long)
        media = media.reshape(len(media), tokenizer.num_blocks, -1)
        with torch.no_grad():
            states = tokenizer.quantizer.running_states(vocab.to_local(name, media).to(tokenizer.device)).cpu()
        return cls(list(dataset["text_ids"]), media, states, name)

    def __len__(self) -> int:
        return len(self.text_ids)


class MixtureSampler(Sampler[int]):
    """Indices into pools laid end to end. An epoch has as many draws as there are items; each
    draw picks a pool by its weight, then that pool's next item in a seeded shuffle (cycled).
    Seeded by seed + epoch, so a resumed run draws what an uninterrupted one would; with a single
    pool an epoch is exactly the seeded permutation of a seedable `RandomSampler`."""

    def __init__(self, pool_sizes: Sequence[int], pool_weights: Sequence[float], seed: int):
        self.sizes, self.weights, self.seed, self.epoch = list(pool_sizes), list(pool_weights), seed, 0
        self.offsets = [sum(self.sizes[:p]) for p in range(len(self.sizes))]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return sum(self.sizes)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        if len(self.sizes) == 1:
            yield from torch.randperm(self.sizes[0], generator=generator).tolist()
            return
        pools = torch.multinomial(torch.tensor(self.weights, dtype=torch.float64), len(self), replacement=True,
                                  generator=generator).tolist()
        orders = [torch.randperm(size, generator=generator).tolist() for size in self.sizes]
        drawn = [0] * len(self.sizes)
        for p in pools:
            yield self.offsets[p] + orders[p][drawn[p] % self.sizes[p]]
            drawn[p] += 1


class DocumentMaker:
    """Indices into the pools (one `TokenItems` per modality, laid end to end) -> documents.

    Each pool serves the tasks of its modality; caption-only ``text`` documents come from every
    pool in proportion to its size. A pool is drawn with the summed weight of what it serves and
    the task by its weight within the pool, so task shares follow `cfg.tasks`. Caption dropout
    and task draws are seeded by the step, so a resumed run builds exactly the same batches.
    """

    def __init__(self, pools: dict[str, TokenItems], vocab: Vocabulary, cfg: LMTraining, seed: int):
        missing = cfg.modalities() - set(pools)
        if missing:
            raise ValueError(f"tasks {sorted(cfg.tasks)} need {sorted(missing)} items, which the shards do not hold")
        self.pools, self.vocab, self.cfg, self.seed = pools, vocab, cfg, seed
        self.modalities = list(pools)
        total = sum(len(items) for items in pools.values())
        self.pool_tasks = {m: {t: w * (len(pools[m]) / total if task_modality(t) is None else 1)
                               for t, w in cfg.tasks.items() if task_modality(t) in (m, None)}
                           for m in self.modalities}

    def sampler(self) -> MixtureSampler:
        return MixtureSampler([len(self.pools[m]) for m in self.modalities],
                              [sum(self.pool_tasks[m].values()) for m in self.modalities], self.seed)

    def locate(self, index: int) -> tuple[str, int]:
        """A sampler index -> (modality, index in that pool)."""
        for modality in self.modalities:
            if index < len(self.pools[modality]):
                return modality, index
            index -= len(self.pools[modality])
        raise IndexError(f"index beyond the {sum(map(len, self.pools.values()))} items of the pools")

    def document(self, task: str, modality: str, i: int, rng: random.Random | None) -> Stream:
        items = self.pools[modality]
        drop = rng is not None and rng.random() < self.cfg.caption_dropout
        doc = task_document(self.vocab, self.cfg.media_order, task, items.text_ids[i], items.media_name,
                            items.media_ids[i], items.media_states[i], drop_text=drop)
        return self._trained_part(doc, task, items, rng)

    def _trained_part(self, doc: Stream, task: str, items: TokenItems, rng: random.Random | None) -> Stream:
        """A text-to-media document ends ``k_1 k_0 <eo?> <eos>``: k_0 has no target and nothing
        attends to it, and <eo?>'s only target is the certain <eos>. Stopping after k_1 (whose
        targets, the k_0 codes, stay) spends 1/(T+1) fewer media tokens for the same loss.
        A share `first_step_fraction` of training documents stops after k_T instead."""
        num_blocks, n = items.media_ids.shape[1:]
        if not task.startswith("text_to_") or self.cfg.media_order != "timestep" or num_blocks < 2:
            return doc
        fraction = self.cfg.first_step_fraction
        first_step_only = rng is not None and fraction > 0 and rng.random() < fraction
        dropped_blocks = num_blocks - 1 if first_step_only else 1
        return doc.head(len(doc) - dropped_blocks * n - 2)

    def batch(self, indices: Sequence[int], step: int, micro: int, rank: int) -> Batch:
        rng = random.Random(hash((self.seed, step, micro, rank)))
        docs = []
        for index in indices:
            modality, i = self.locate(index)
            tasks = self.pool_tasks[modality]
            docs.append(self.document(rng.choices(list(tasks), list(tasks.values()))[0], modality, i, rng))
        return collate(pack(docs, max(len(d) for d in docs)), pad_id=self.vocab.special_id("<pad>"))

    def heldout_documents(self, count: int) -> dict[str, list[Stream]]:
        """Whole documents for every task with a positive weight, `count` in all, split evenly."""
        tasks = [t for t, w in self.cfg.tasks.items() if w > 0]
        per_task = max(1, count // len(tasks))
        docs = {}
        for task in tasks:
            modality = task_modality(task) or self.modalities[0]
            docs[task] = [self.document(task, modality, i, None) for i in range(min(per_task, len(self.pools[modality])))]
        return docs


def loss_weight_table(vocab: Vocabulary, weights: dict[str, float], size: int) -> torch.Tensor | None:
    """(size,) weight of each target id for `stream_loss`; None when every weight is 1."""
    kinds = {"text"} | {r.modality for r in vocab.media_ranges()}
    unknown = set(weights) - kinds
    if unknown:
        raise ValueError(f"loss_weights has {sorted(unknown)}; expected some of {sorted(kinds)}")
    if all(w == 1 for w in weights.values()):
        return None
    table = torch.full((size,), weights.get("text", 1.0))
    for r in vocab.media_ranges():
        table[r.offset : r.end] = weights.get(r.modality, 1.0)
    return table


def train_lm(transformer: LlamaForCausalLM, vocab: Vocabulary, train: dict[str, TokenItems],
             heldout: dict[str, TokenItems], cfg: LMTraining, output_dir: str | Path, seed: int = 0,
             stop_after_step: int | None = None) -> dict:
    """Train `transformer` in place on items by modality; checkpoints under `output_dir/checkpoints`,
    best weights loaded at the end.

    `stop_after_step` ends the run early, as an interruption would, right after the checkpoint of
    that step (run training in time slices; a later call resumes). Returns the history: held-out
    losses per eval and the step whose weights were kept.
    """
    output_dir = Path(output_dir)
    set_seed(seed)
    accelerator = Accelerator(
        mixed_precision=mixed_precision(cfg.mixed_precision),
        gradient_accumulation_steps=cfg.grad_accum,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    model = StreamModel(transformer)
    optimizer = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.learning_rate, betas=(0.9, 0.95))
    scheduler = warmup_cosine(optimizer, cfg.warmup_steps, cfg.steps)
    maker = DocumentMaker(train, vocab, cfg, seed)
    loader = DataLoader(range(sum(map(len, train.values()))), batch_size=cfg.batch_size, sampler=maker.sampler(),
                        drop_last=True, collate_fn=list)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    weights = loss_weight_table(vocab, cfg.loss_weights, transformer.config.vocab_size)
    checkpoints = output_dir / "checkpoints"
    state = _resume(accelerator, checkpoints)
    eval_docs = DocumentMaker(heldout, vocab, cfg, seed).heldout_documents(cfg.eval_items)

    step = state["step"]
    batches = _batches_from(loader, accelerator, start_micro_step=step * cfg.grad_accum)
    progress = tqdm(range(step, cfg.steps), desc="lm", initial=step, total=cfg.steps,
                    disable=not accelerator.is_local_main_process)
    model.train()
    for step in progress:
        for micro in range(cfg.grad_accum):
            batch = maker.batch(next(batches), step, micro, accelerator.process_index).to(accelerator.device)
            with accelerator.accumulate(model):
                loss = stream_loss(model, batch, None if weights is None else weights.to(accelerator.device))
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
        progress.set_postfix(loss=f"{loss.item():.3f}", lr=f"{scheduler.get_last_lr()[0]:.1e}")
        done = step + 1
        if done % cfg.eval_every == 0 or done == cfg.steps:
            state["evals"].append({"step": done, **heldout_loss(model, vocab, eval_docs, accelerator.device)})
            model.train()
            if _improved(state):
                state["best_step"] = done
                if accelerator.is_main_process:
                    accelerator.unwrap_model(model).transformer.save_pretrained(output_dir / "best")
            if _patience_exhausted(state, cfg.early_stopping_patience):
                state["stopped_early_at"] = done
        if done % cfg.checkpoint_every == 0 or done in (cfg.steps, stop_after_step) or "stopped_early_at" in state:
            state["step"] = done
            _checkpoint(accelerator, checkpoints, state)
        if "stopped_early_at" in state or done == stop_after_step:
            break
    accelerator.wait_for_everyone()
    progress.close()
    _load_best(transformer, output_dir / "best")
    return state


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on norms and biases (1-D tensors), as usual for transformers."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _batches_from(loader, accelerator: Accelerator, start_micro_step: int):
    """Index batches forever from micro-step `start_micro_step` on, one seeded shuffle per epoch."""
    per_epoch = len(loader)
    epoch, skip = divmod(start_micro_step, per_epoch)
    while True:
        loader.set_epoch(epoch)
        yield from (accelerator.skip_first_batches(loader, skip) if skip else loader)
        epoch, skip = epoch + 1, 0


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
            logits = batch_logits(model, batch)
            losses = F.cross_entropy(logits.transpose(1, 2).float(), batch.targets, ignore_index=IGNORE,
                                     reduction="none")
            labelled = batch.targets != IGNORE
            task_sum[task] += losses[labelled].sum().item()
            task_count[task] += int(labelled.sum())
            target_block = torch.full_like(batch.targets, -1)
            for row, doc in enumerate(docs[start:start + batch_size]):
                target_block[row, : len(doc)] = torch.tensor(doc.target_block)
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


def _checkpoint(accelerator: Accelerator, root: Path, state: dict) -> None:
    """Save to a temporary folder, rename it into place, then drop older checkpoints."""
    final = root / f"step-{state['step']:07d}"
    tmp = root / f".tmp-step-{state['step']:07d}"
    accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()  # every rank has written its RNG state into tmp before it is renamed
    if accelerator.is_main_process:
        (tmp / PROGRESS_NAME).write_text(json.dumps(state, indent=2))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in root.glob("step-*"):
            if old != final:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()


def _resume(accelerator: Accelerator, root: Path) -> dict:
    done = sorted(root.glob("step-*")) if root.is_dir() else []
    if not done:
        return {"step": 0, "evals": [], "best_step": None}
    latest = done[-1]
    accelerator.load_state(str(latest))
    state = json.loads((latest / PROGRESS_NAME).read_text())
    accelerator.print(f"resuming from {latest} (step {state['step']})")
    return state


def _load_best(model: torch.nn.Module, best_dir: Path) -> None:
    weights = best_dir / "model.safetensors"
    if weights.is_file():
        missing, unexpected = model.load_state_dict(load_file(str(weights)), strict=False)
        if unexpected or any("lm_head" not in k for k in missing):  # lm_head is tied to the embeddings
            raise RuntimeError(f"{weights}: does not match the model (missing {missing}, unexpected {unexpected})")
