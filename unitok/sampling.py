"""Sampling media spans with a KV cache.

RDPM (`media_order="timestep"`): draw ε, quantize it to k_T with the tokenizer itself, then the
transformer predicts all N codes of k_{t-1} **in parallel** from the prompt and the blocks so far:
T forward passes per sample. Raster baseline: N sequential one-token passes over a clean block.

Cached multi-token steps always get an explicit 4D mask ``(B, 1, q, past + q)`` and explicit
position ids: with ``attention_mask=None`` a multi-token step would be made causal inside the
block by the attention backend, silently giving wrong logits.

Every fed block carries its running states (`code_states`, the tokenizer's
`RDPMQuantizer.running_states`), as in training.

Classifier-free guidance runs conditional and unconditional (caption dropped) rows in one batch.
Logits outside the span's codebook range are never sampled: we sample from that slice only.

Media→text (`sample_text`) is ordinary next-token sampling after a whole media span, over the
text range and ``<eos>`` only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from transformers import DynamicCache

from .model import StreamModel
from .streams import NO_ROWS, Batch, MediaOrder, Stream, StreamBuilder, collate
from .vocabulary import Vocabulary

CodeStates = Callable[[torch.Tensor], torch.Tensor]  # local ids (B, b, N) -> running states (B, b, N, C)


@dataclass(frozen=True)
class SamplerConfig:
    guidance_scale: float = 1.0  # 1 = no guidance; logits = uncond + g·(cond − uncond)
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    gumbel_scale: float = 1.0  # Gumbel-max noise: 1 = exact sampling, 0 = greedy

    def __post_init__(self):
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.gumbel_scale < 0:
            raise ValueError(f"gumbel_scale must be >= 0, got {self.gumbel_scale}")

    @property
    def guided(self) -> bool:
        return self.guidance_scale != 1.0


def choose(logits: torch.Tensor, cfg: SamplerConfig, generator: torch.Generator | None) -> torch.Tensor:
    """Pick ids from logits (..., V): temperature, top-k, top-p, then Gumbel-max."""
    logits = logits.float() / cfg.temperature
    if cfg.top_k is not None and cfg.top_k < logits.shape[-1]:
        kth = logits.topk(cfg.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if cfg.top_p is not None and cfg.top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop_sorted = cumulative - sorted_logits.softmax(-1) > cfg.top_p  # keep the first token past p
        logits = logits.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), float("-inf"))
    if cfg.gumbel_scale > 0:
        uniform = torch.rand(logits.shape, generator=generator, device="cpu").to(logits.device)
        gumbel = -torch.log(-torch.log(uniform.clamp(1e-10, 1 - 1e-10)))
        logits = logits + cfg.gumbel_scale * gumbel
    return logits.argmax(-1)


class CachedDecoder:
    """Feeds token chunks to a `StreamModel` with a KV cache, tracking padding and positions per row."""

    def __init__(self, model: StreamModel, prefix: Batch):
        self.model = model
        self.cache = DynamicCache()
        self.key_valid = prefix.document_ids >= 0  # (B, L): False for left padding
        self.next_position = prefix.position_ids.max(dim=1).values + 1  # (B,)
        self.logits = model(prefix.input_ids, prefix.media_rows, prefix.media_states, prefix.attention_mask,
                            prefix.position_ids, self.cache)

    def feed(self, ids_BQ: torch.Tensor, media_rows_Q3: torch.Tensor, states_BQS: torch.Tensor,
             block: bool) -> torch.Tensor:
        """Append q tokens per row, whose input rows are `media_rows_Q3` (the same for every row)
        and running states `states_BQS` (width 0 for text); `block=True` lets them all see each
        other (a media block), otherwise they are causal. Returns logits (B, q, V)."""
        B, q = ids_BQ.shape
        device = ids_BQ.device
        inner = torch.ones(q, q, dtype=torch.bool, device=device)
        if not block:
            inner = inner.tril()
        past = self.key_valid[:, None, :].expand(B, q, -1)
        mask = torch.cat([past, inner.expand(B, q, q)], dim=2).unsqueeze(1)  # (B, 1, q, past + q)
        positions = self.next_position[:, None] + torch.arange(q, device=device)
        self.key_valid = torch.cat([self.key_valid, torch.ones(B, q, dtype=torch.bool, device=device)], 1)
        self.next_position = self.next_position + q
        self.logits = self.model(ids_BQ, media_rows_Q3.to(device).expand(B, q, 3), states_BQS.to(device), mask,
                                 positions, self.cache)
        return self.logits


def _guided(logits: torch.Tensor, batch: int, cfg: SamplerConfig) -> torch.Tensor:
    """Rows [cond; uncond] -> guided logits for the `batch` conditional rows."""
    if not cfg.guided:
        return logits
    cond, uncond = logits[:batch], logits[batch:]
    return uncond + cfg.guidance_scale * (cond - uncond)


def _repeat_for_guidance(x: torch.Tensor, cfg: SamplerConfig) -> torch.Tensor:
    return torch.cat([x, x]) if cfg.guided else x


@torch.no_grad()
def sample_media(
    model: StreamModel,
    vocab: Vocabulary,
    media_name: str,
    prompts: Sequence[Sequence[int]],
    first_blocks: torch.Tensor | None,
    num_blocks: int,
    num_positions: int,
    media_order: MediaOrder,
    cfg: SamplerConfig,
    code_states: CodeStates,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Generate media spans after text prompts (global text ids). Returns local ids (B, blocks, N).

    Timestep order: `first_blocks` (B, P, N) local ids are the given start of the trajectory:
    k_T (quantized noise) alone for generation (P = 1), or k_T … k_{T−P+1} of a real item to
    continue it from noise level T−P+1; the model predicts the other `num_blocks − P` blocks,
    one parallel pass each. Raster order: one block of N codes, one pass per code.
    `code_states` gives the running states of the codes fed back (the tokenizer's quantizer).
    """
    device = next(model.parameters()).device
    B, N = len(prompts), num_positions
    codes = vocab.range(media_name)
    media_rows = vocab.position_rows(media_name, num_blocks, N)  # (blocks, N, 3)
    first_states = code_states(first_blocks) if media_order == "timestep" else None
    rows = [_prefix(vocab, media_order, media_name, p, first_blocks, first_states, i) for i, p in enumerate(prompts)]
    if cfg.guided:
        rows += [_prefix(vocab, media_order, media_name, [], first_blocks, first_states, i) for i in range(B)]
    batch = collate([[s] for s in rows], pad_id=vocab.special_id("<pad>"), pad_side="left").to(device)
    decoder = CachedDecoder(model, batch)

    def pick(logits_BQV: torch.Tensor) -> torch.Tensor:
        return choose(_guided(logits_BQV, B, cfg)[..., codes.offset:codes.end], cfg, generator)

    if media_order == "timestep":
        blocks = list(first_blocks.to(device).unbind(1))
        logits = decoder.logits[:, -N:]  # the last given block's positions predict the next block
        for b in range(len(blocks), num_blocks):
            blocks.append(pick(logits))
            if b < num_blocks - 1:
                states = code_states(torch.stack(blocks, dim=1))[:, -1]  # (B, N, C)
                logits = decoder.feed(_repeat_for_guidance(blocks[-1] + codes.offset, cfg), media_rows[b],
                                      _repeat_for_guidance(states, cfg), block=True)
        return torch.stack(blocks, dim=1)

    generated = []  # raster: <bo?> predicts code 0, code n predicts code n+1
    logits = decoder.logits[:, -1:]
    for n in range(N):
        generated.append(pick(logits))
        if n < N - 1:
            states = code_states(generated[-1][:, None])[:, 0]  # (B, 1, C): a one-block trajectory's state is its code
            logits = decoder.feed(_repeat_for_guidance(generated[-1] + codes.offset, cfg), media_rows[0, n : n + 1],
                                  _repeat_for_guidance(states, cfg), block=False)
    return torch.cat(generated, dim=1).unsqueeze(1)


def _prefix(vocab, media_order, media_name, prompt, first_blocks, first_states, row):
    builder = StreamBuilder(vocab, media_order).special("<bos>").text(prompt)
    if media_order == "timestep":
        return builder.media(media_name, vocab.to_global(media_name, first_blocks[row].cpu()), first_states[row].cpu(),
                             complete=False).build()
    no_states = torch.zeros(0, 0, vocab.range(f"{media_name}.state").size)
    return builder.media(media_name, torch.zeros(0, 0, dtype=torch.long), no_states, complete=False).build()


@torch.no_grad()
def sample_text(model: StreamModel, vocab: Vocabulary, prefixes: Sequence[Stream], max_new_tokens: int,
                cfg: SamplerConfig, generator: torch.Generator | None = None) -> list[list[int]]:
    """Continue each prefix (e.g. ``<bos> <boi> k_T … k_0 <eoi>``) with text until ``<eos>``.

    Returns the local text ids of each row, ``<eos>`` excluded; ids outside the text range are
    never drawn.
    """
    if cfg.guided:
        raise ValueError("guidance_scale applies to text→media; media→text sampling takes 1.0")
    device = next(model.parameters()).device
    batch = collate([[s] for s in prefixes], pad_id=vocab.special_id("<pad>"), pad_side="left").to(device)
    decoder = CachedDecoder(model, batch)
    text, eos = vocab.range("text"), vocab.special_id("<eos>")
    blocked = torch.full((decoder.logits.shape[-1],), float("-inf"), device=device)
    blocked[text.offset : text.end] = 0.0
    blocked[eos] = 0.0
    rows: list[list[int]] = [[] for _ in prefixes]
    finished = torch.zeros(len(prefixes), dtype=torch.bool, device=device)
    logits = decoder.logits[:, -1]
    for step in range(max_new_tokens):
        ids = choose(logits + blocked, cfg, generator)  # (B,)
        for row in (~finished & (ids != eos)).nonzero().flatten().tolist():
            rows[row].append(int(ids[row]) - text.offset)
        finished |= ids == eos
        if finished.all() or step == max_new_tokens - 1:
            break
        logits = decoder.feed(ids[:, None], torch.tensor([NO_ROWS]), torch.zeros(len(ids), 1, 0), block=False)[:, -1]
    return rows
