"""Sampling media spans and text with a KV cache.

One sampler object per algorithm behind one interface (`MediaSampler.sample`), as diffusers keeps
one scheduler per algorithm; the pipeline only calls it. `SamplerConfig` holds the free sampling
choices (guidance, temperatures, top-k/top-p, Gumbel noise) and their defaults: what the pipeline
and the CLI use when told nothing. Which cells each pass draws is not a free choice: it is the
model's decode schedule (`layout.DecodeSchedule`), which the model was trained with.

RDPM (`GroupSampler`): draw ε and quantize it to ``k_T`` with the tokenizer itself; then every
block ``k_{T−1} … k_0`` is drawn in ``groups[b]`` passes, one group of its cells per pass, in the
fixed cell order (`layout.group_bounds`). Pass g feeds, after the cached prompt, the codes group
g − 1 drew (context positions, which stay in the cache) and a query per cell of group g (dropped
after the pass), exactly the layout the model trained on (`StreamBuilder.generated`). A block
sees only the prompt and itself, so each block starts from the prompt's cache. One group per
block is the one-pass sampler: every cell of a block drawn independently from one pass.

Raster AR (`RasterSampler`): one clean block, N sequential one-token passes.

Cached multi-token passes always get an explicit 4D mask ``(B, 1, q, past + q)`` and explicit
position ids: with ``attention_mask=None`` the attention backend would make the block causal and
silently change the logits. Classifier-free guidance runs conditional and unconditional (caption
dropped) rows in one batch. Only the span's codebook range is ever sampled.

Media→text (`sample_text`) is next-token sampling after a whole media span, over the text range
and ``<eos>`` only.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from typing import Sequence

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from unitok.core.config import Config, bounded
from unitok.core.errors import UnitokError
from unitok.lm.batch import Batch, collate
from unitok.lm.documents import query_states
from unitok.lm.layout import DecodeSchedule, MediaOrder, StreamLayout, cell_groups, cell_order, group_bounds
from unitok.lm.model import StreamModel
from unitok.lm.streams import NO_ROWS, Stream, StreamBuilder
from unitok.tokenizer.rdpm import RDPMQuantizer
from unitok.tokenizer.vocabulary import Vocabulary


@dataclass(frozen=True)
class SamplerConfig(Config):
    """How media are drawn; the defaults are what `UniTokPipeline` and ``unitok generate`` use."""

    MOVED = {"rounds": "moved to layout.decode.<range>.groups (unitok 0.3: the model's decode schedule, stated once)",
             "round_schedule": "moved to layout.decode.<range>.group_sizes (unitok 0.3)",
             "cell_order": "removed in unitok 0.3: the cell order is always a seeded permutation"}

    # classifier-free guidance: logits = uncond + g·(cond − uncond); 1 = none
    guidance_scale: float = bounded(3.0, ge=0)
    temperature: float = bounded(1.0, gt=0)
    top_k: int | None = bounded(None, ge=1)
    top_p: float | None = bounded(None, gt=0, le=1)
    gumbel_scale: float = bounded(1.0, ge=0)  # Gumbel-max noise: 1 = exact sampling, 0 = greedy
    # RDPM: temperature of the generated blocks after the first (k_{T−2} … k_0), which refine the
    # shape k_{T−1} drew: a low one keeps cells from adding ink away from it; None = `temperature`
    refine_temperature: float | None = bounded(None, gt=0)

    @property
    def guided(self) -> bool:
        return self.guidance_scale != 1.0

    @classmethod
    def for_text(cls) -> "SamplerConfig":
        """Media→text's default: greedy, unguided."""
        return cls(guidance_scale=1.0, gumbel_scale=0.0)


def filtered_logits(logits: torch.Tensor, cfg: SamplerConfig) -> torch.Tensor:
    """Logits (..., V) after temperature, top-k and top-p (dropped ids at -inf)."""
    logits = logits.float() / cfg.temperature
    if cfg.top_k is not None and cfg.top_k < logits.shape[-1]:
        kth = logits.topk(cfg.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if cfg.top_p is not None and cfg.top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        drop_sorted = probs.cumsum(-1) - probs > cfg.top_p  # keep the first token past p
        logits = logits.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), float("-inf"))
    return logits


Generators = Sequence[torch.Generator]  # one per row of a batch (`core.seeds`): a row's draws depend on it alone


def row_uniforms(shape: torch.Size, generators: Generators) -> torch.Tensor:
    """Uniform draws of `shape` (rows first) on the CPU, row r's from `generators[r]`, so that what
    an item draws does not depend on what else is in its batch."""
    if len(generators) != shape[0]:
        raise UnitokError(f"{len(generators)} generators for {shape[0]} rows")
    return torch.stack([torch.rand(shape[1:], generator=generator) for generator in generators])


def gumbel_argmax(logits: torch.Tensor, cfg: SamplerConfig, generators: Generators) -> torch.Tensor:
    """Ids (B, ...) drawn from already filtered logits (B, ..., V): Gumbel-max, scaled by `gumbel_scale`."""
    if cfg.gumbel_scale > 0:
        uniform = row_uniforms(logits.shape, generators).to(logits.device)
        logits = logits + cfg.gumbel_scale * -torch.log(-torch.log(uniform.clamp(1e-10, 1 - 1e-10)))
    return logits.argmax(-1)


def choose(logits: torch.Tensor, cfg: SamplerConfig, generators: Generators) -> torch.Tensor:
    """Pick ids from logits (B, ..., V): temperature, top-k, top-p, then Gumbel-max."""
    return gumbel_argmax(filtered_logits(logits, cfg), cfg, generators)


class CachedDecoder:
    """Feeds token chunks to a `StreamModel` with a KV cache, tracking padding and positions per row."""

    def __init__(self, model: StreamModel, prefix: Batch):
        self.model = model
        self.cache = DynamicCache()
        self.key_valid = prefix.document_ids >= 0  # (B, L): False for left padding
        self.next_position = prefix.position_ids.max(dim=1).values + 1  # (B,)
        self.logits = model(prefix.input_ids, prefix.media_rows, prefix.media_states, prefix.attention_mask,
                            prefix.position_ids, self.cache)
        self.prefix = (self.key_valid, self.next_position)

    def feed(self, ids_BQ: torch.Tensor, media_rows_Q3: torch.Tensor, states_BQS: torch.Tensor,
             inner_QQ: torch.Tensor | None = None, cells_Q: torch.Tensor | None = None) -> torch.Tensor:
        """Append q tokens per row, whose input rows are `media_rows_Q3` (the same for every row)
        and state inputs `states_BQS` (width 0 for text). `inner_QQ` says which of the new tokens
        each sees (None: causal); all see what the cache holds. Positions: the next ones in order,
        or for the `cells_Q` of a media block, the span's first position plus the cell (every
        block takes the positions after ``<bo?>``, streams.py). Returns logits (B, q, V)."""
        B, q = ids_BQ.shape
        device = ids_BQ.device
        inner = torch.ones(q, q, dtype=torch.bool, device=device).tril() if inner_QQ is None else inner_QQ.to(device)
        past = self.key_valid[:, None, :].expand(B, q, -1)
        mask = torch.cat([past, inner.expand(B, q, q)], dim=2).unsqueeze(1)  # (B, 1, q, past + q)
        if cells_Q is None:
            positions = self.next_position[:, None] + torch.arange(q, device=device)
            self.next_position = self.next_position + q
        else:
            positions = self.prefix[1][:, None] + cells_Q.to(device)
        self.key_valid = torch.cat([self.key_valid, torch.ones(B, q, dtype=torch.bool, device=device)], 1)
        self.logits = self.model(ids_BQ, media_rows_Q3.to(device).expand(B, q, 3), states_BQS.to(device), mask,
                                 positions, self.cache)
        return self.logits

    def drop(self, count: int) -> None:
        """Forget the last `count` tokens fed (a pass's queries, which later passes must not see)."""
        self.cache.crop(-count)
        self.key_valid = self.key_valid[:, :-count]

    def rewind(self) -> None:
        """Forget everything fed after the prefix (the cache keeps the prefix's keys and values)."""
        self.cache.crop(self.prefix[0].shape[1] - self.key_valid.shape[1])  # a negative count: tokens to drop
        self.key_valid, self.next_position = self.prefix


def _guided(logits: torch.Tensor, batch: int, cfg: SamplerConfig) -> torch.Tensor:
    """Rows [cond; uncond] -> guided logits for the `batch` conditional rows."""
    if not cfg.guided:
        return logits
    cond, uncond = logits[:batch], logits[batch:]
    return uncond + cfg.guidance_scale * (cond - uncond)


def _repeat_for_guidance(x: torch.Tensor, cfg: SamplerConfig) -> torch.Tensor:
    return torch.cat([x, x]) if cfg.guided else x


class MediaSampler(ABC):
    """Draws the code ids of media spans after text prompts. One subclass per algorithm; its
    `SamplerConfig` holds the free settings, `with_options` overrides some for one call."""

    media_order: MediaOrder

    def __init__(self, config: SamplerConfig | None = None):
        self.config = config or SamplerConfig()

    def with_options(self, **options) -> "MediaSampler":
        """The same sampler with some settings replaced (None leaves a setting as it is)."""
        sampler = copy.copy(self)
        sampler.config = replace(self.config, **{k: v for k, v in options.items() if v is not None})
        return sampler

    @abstractmethod
    def passes(self, num_blocks: int, num_positions: int) -> int:
        """Transformer passes per sample (guidance runs its two rows in the same pass)."""

    @abstractmethod
    def sample(self, model: StreamModel, vocab: Vocabulary, name: str, quantizer: RDPMQuantizer,
               prompts: Sequence[Sequence[int]], first_blocks: torch.Tensor | None,
               generators: Generators) -> torch.Tensor:
        """Local code ids (B, num_blocks, N) of a media span of range `name` after each prompt
        (global text ids). `first_blocks` (B, P, N) are the given first blocks (``k_T`` from noise,
        or the start of a real item's trajectory to continue); `quantizer` turns codes into the
        transformer's state inputs; item i draws from `generators[i]`."""

    def _prompts_batch(self, vocab: Vocabulary, name: str, prompts: Sequence[Sequence[int]]) -> Batch:
        """``<bos> prompt <bo?>`` per row, then the unconditional rows when guided; left-padded."""
        rows = [media_prefix(vocab, self.media_order, name, p) for p in prompts]
        if self.config.guided:
            rows += [media_prefix(vocab, self.media_order, name, []) for _ in prompts]
        return collate([[s] for s in rows], pad_id=vocab.special_id("<pad>"), pad_side="left")


def media_prefix(vocab: Vocabulary, media_order: MediaOrder, name: str, prompt: Sequence[int]) -> Stream:
    """``<bos> prompt <bo?>``: where a sampler starts a span of media range `name`."""
    no_blocks = torch.zeros(0, 0, dtype=torch.long)
    no_inputs = torch.zeros(0, 0, vocab.range(f"{name}.state").size)
    return (StreamBuilder(vocab, media_order).special("<bos>").text(prompt)
            .media(name, no_blocks, no_inputs, complete=False).build())


class GroupSampler(MediaSampler):
    """RDPM: every generated block in the groups of its `DecodeSchedule` (see the module docstring)."""

    media_order = "timestep"

    def __init__(self, config: SamplerConfig | None, schedule: DecodeSchedule, query_patch: int = 1,
                 latent_shape: tuple[int, ...] = ()):
        super().__init__(config)
        self.schedule = schedule
        # the layout's query neighbourhood, and the latent it is taken on
        self.query_patch, self.latent_shape = query_patch, latent_shape

    def block_groups(self, num_blocks: int) -> tuple[int, ...]:
        """Groups of each generated block (T = num_blocks − 1 of them)."""
        groups = self.schedule.groups
        if len(groups) != num_blocks - 1:
            raise UnitokError(f"the decode schedule lists {len(groups)} blocks, but this tokenizer draws "
                              f"{num_blocks - 1} (T = {num_blocks - 1})")
        return groups

    def passes(self, num_blocks: int, num_positions: int) -> int:
        return sum(self.block_groups(num_blocks))

    @torch.no_grad()
    def sample(self, model, vocab, name, quantizer, prompts, first_blocks, generators):
        num_blocks, device = quantizer.num_blocks, next(model.parameters()).device
        groups = self.block_groups(num_blocks)
        rows = vocab.position_rows(name, num_blocks, vocab.range(f"{name}.cells").size).to(device)  # (blocks, N, 3)
        decoder = CachedDecoder(model, self._prompts_batch(vocab, name, prompts).to(device))
        blocks = first_blocks.to(device)  # (B, b, N): every cell decided
        for b in range(blocks.shape[1], num_blocks):
            cfg = self.config if b == 1 else self.refining_config()
            block = self._draw_block(decoder, vocab, name, quantizer, blocks, rows[b], groups[b - 1], cfg, generators)
            blocks = torch.cat([blocks, block[:, None]], dim=1)
        return blocks

    def refining_config(self) -> SamplerConfig:
        """The settings of the blocks after the first generated one."""
        if self.config.refine_temperature is None:
            return self.config
        return replace(self.config, temperature=self.config.refine_temperature)

    def _draw_block(self, decoder: CachedDecoder, vocab: Vocabulary, name: str, quantizer: RDPMQuantizer,
                    before_BbN: torch.Tensor, rows_N3: torch.Tensor, groups: int, cfg: SamplerConfig,
                    generators: Generators) -> torch.Tensor:
        """The next block's local codes (B, N) after the blocks `before_BbN`: pass g feeds the
        cells group g − 1 decided as contexts (they stay cached) and group g's queries (dropped
        after the pass), the layout of `StreamBuilder.generated`."""
        codes, mask_id = vocab.range(name), vocab.mask_id(name)
        B, N = before_BbN.shape[0], before_BbN.shape[2]
        device = before_BbN.device
        block = torch.zeros(B, N, dtype=torch.long, device=device)
        spans = torch.cat([before_BbN, block[:, None]], 1)
        order, bounds = cell_order(N).to(device), group_bounds(N, groups, self.schedule.group_sizes)
        cell_group = cell_groups(bounds).to(device)
        query_inputs = quantizer.block_inputs(spans)[1][:, -1]  # (B, N, 2C): no code of the block in them
        query_rows_N3 = rows_N3.clone()
        query_rows_N3[:, 2] = vocab.query_state(name).offset
        decoder.rewind()
        for g in range(groups):
            contexts = order[bounds[g - 1]:bounds[g]] if g else order[:0]
            queries = order[bounds[g]:bounds[g + 1]]
            spans[:, -1] = block
            context_inputs = quantizer.block_inputs(spans)[0][:, -1]
            ids = torch.cat([block[:, contexts] + codes.offset, torch.full_like(block[:, queries], mask_id)], 1)
            asked = query_states(query_inputs, context_inputs, cell_group, self.latent_shape,
                                 self.query_patch)[:, queries]  # neighbours of earlier groups only
            told = context_inputs[:, contexts]
            states = torch.cat([F.pad(told, (0, asked.shape[-1] - told.shape[-1])), asked], 1)  # zero-padded
            c, q = len(contexts), len(queries)
            inner = torch.zeros(c + q, c + q, dtype=torch.bool)
            inner[:c, :c] = torch.ones(c, c, dtype=torch.bool).tril()  # contexts: causal, in cell order
            inner[c:, :c] = True  # queries: every context, no other query (nor themselves)
            cells = torch.cat([contexts, queries])
            media_rows = torch.cat([rows_N3[contexts], query_rows_N3[queries]])
            logits = decoder.feed(_repeat_for_guidance(ids, cfg), media_rows, _repeat_for_guidance(states, cfg),
                                  inner, cells)[:, c:]
            decoder.drop(q)
            block[:, queries] = choose(_guided(logits, B, cfg)[..., codes.offset:codes.end], cfg, generators)
        return block


class RasterSampler(MediaSampler):
    """The raster-AR baseline: one clean block, one code per pass."""

    media_order = "raster"

    def passes(self, num_blocks: int, num_positions: int) -> int:
        return num_positions

    @torch.no_grad()
    def sample(self, model, vocab, name, quantizer, prompts, first_blocks, generators):
        cfg, device = self.config, next(model.parameters()).device
        B, N = len(prompts), vocab.range(f"{name}.cells").size
        codes = vocab.range(name)
        rows = vocab.position_rows(name, 1, N)[0].to(device)  # (N, 3)
        decoder = CachedDecoder(model, self._prompts_batch(vocab, name, prompts).to(device))
        logits, generated = decoder.logits[:, -1:], []  # <bo?> predicts code 0, code n predicts code n+1
        for n in range(N):
            generated.append(choose(_guided(logits, B, cfg)[..., codes.offset:codes.end], cfg, generators))
            if n < N - 1:
                inputs = quantizer.block_inputs(generated[-1][:, None])[0][:, 0]  # (B, 2C): a drawn code
                logits = decoder.feed(_repeat_for_guidance(generated[-1] + codes.offset, cfg), rows[n : n + 1],
                                      _repeat_for_guidance(inputs, cfg))
        return torch.cat(generated, dim=1).unsqueeze(1)


def media_sampler(layout: StreamLayout, name: str, config: SamplerConfig | None = None,
                  latent_shape: Sequence[int] = ()) -> MediaSampler:
    """The sampler of a model's layout for its media range `name`, whose tokenizer's latent has
    `latent_shape` (which a query neighbourhood needs)."""
    if layout.media_order == "raster":
        return RasterSampler(config)
    return GroupSampler(config, layout.schedule(name), layout.query_patch, tuple(latent_shape))


@torch.no_grad()
def sample_text(model: StreamModel, vocab: Vocabulary, prefixes: Sequence[Stream], max_new_tokens: int,
                cfg: SamplerConfig, generators: Generators) -> list[list[int]]:
    """Continue each prefix (e.g. ``<bos> <boi> k_T … k_0 <eoi>``) with text until ``<eos>``.

    Returns the local text ids of each row, ``<eos>`` excluded; ids outside the text range are
    never drawn.
    """
    if cfg.guided:
        raise UnitokError("guidance_scale applies to text→media; media→text sampling takes 1.0")
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
        ids = choose(logits + blocked, cfg, generators)  # (B,)
        for row in (~finished & (ids != eos)).nonzero().flatten().tolist():
            rows[row].append(int(ids[row]) - text.offset)
        finished |= ids == eos
        if finished.all() or step == max_new_tokens - 1:
            break
        logits = decoder.feed(ids[:, None], torch.tensor([NO_ROWS]), torch.zeros(len(ids), 1, 0))[:, -1]
    return rows
