"""Training documents: what a shard row becomes for its task, in the model's stream layout.

- ``text_to_<modality>``, timestep order: ``<bos> caption <bo?>`` and the generated blocks, each
  laid out in the groups of the modality's decode schedule (`StreamBuilder.generated`). The noise
  block ``k_T`` is given: it reaches them through their state inputs, so it has no position of its
  own, and the document ends with its last trained block (``<eo?>`` would only predict ``<eos>``).
  Raster order: ``<bos> caption <bo?> codes <eo?> <eos>``, next-token;
- ``<modality>_to_text``: ``<bos> <bo?> read-out <eo?> caption <eos>``: the span is its read-out
  block alone (the clean state ``s_0``, `readout_states`), as the text sees nothing else of a
  span; the caption is trained;
- ``text``: ``<bos> caption <eos>``.
"""

from __future__ import annotations

import math
import random
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange

from unitok.core.errors import UnitokError
from unitok.data.tasks import generates_media, task_modality
from unitok.lm.layout import StreamLayout, cell_groups
from unitok.lm.reader import pooled_states
from unitok.lm.streams import Stream, StreamBuilder
from unitok.tokenizer.media_tokenizer import MediaTokenizer
from unitok.tokenizer.vocabulary import Vocabulary

DOCUMENT_FORMAT = 4  # of documents and their inputs; part of the LM stage's key, so a change re-trains


class MediaSpan(NamedTuple):
    """A media item as the transformer takes it: its range, its blocks' global code ids (T+1, N),
    their state inputs as contexts and as queries (T+1, N, 2C; `RDPMQuantizer.block_inputs`), and
    its tokenizer's latent shape (which a read-out or query neighbourhood needs)."""

    name: str
    ids: torch.Tensor
    context_inputs: torch.Tensor
    query_inputs: torch.Tensor
    latent_shape: tuple[int, ...]


def media_spans(rows: Sequence[dict], vocab: Vocabulary, tokenizers: dict[str, MediaTokenizer]
                ) -> list[MediaSpan | None]:
    """The `MediaSpan` of each shard row, None for a text-only row; one quantizer call per range."""
    spans: list[MediaSpan | None] = [None] * len(rows)
    for name in {row["media"] for row in rows} - {""}:
        tokenizer = tokenizers[name]
        indices = [i for i, row in enumerate(rows) if row["media"] == name]
        ids = torch.tensor([rows[i]["media_ids"] for i in indices], dtype=torch.long)
        ids = ids.reshape(len(indices), tokenizer.num_blocks, -1)
        with torch.no_grad():
            contexts, queries = tokenizer.quantizer.block_inputs(vocab.to_local(name, ids).to(tokenizer.device))
        for i, blocks, context, query in zip(indices, ids, contexts.cpu(), queries.cpu()):
            spans[i] = MediaSpan(name, blocks, context, query, tuple(tokenizer.latent_shape))
    return spans


def readout_states(clean_inputs: torch.Tensor, layout: StreamLayout, latent_shape: Sequence[int]) -> torch.Tensor:
    """The state inputs (…, P, S) of a read-out block from the context inputs of a span's clean
    block (…, N, 2C: ``s_0`` then ε̂), as the layout's reader takes them (`reader.py`). Linear:
    one position per cell, ``s_0`` and zeros where a code position holds ε̂ (with `readout_patch` 1
    the read-out positions share a code position's state rows), then, for a `readout_patch` > 1,
    the ``s_0`` of the other cells of each cell's neighbourhood (`neighbourhood_states`). Conv: one
    position per pooled square, the ``s_0`` of its cells (`reader.pooled_states`)."""
    channels = clean_inputs.shape[-1] // 2
    if layout.reader.kind == "conv":
        return pooled_states(clean_inputs[..., :channels], latent_shape, layout.reader.pool)
    states = clean_inputs.clone()
    states[..., channels:] = 0
    if layout.readout_patch == 1:
        return states
    return torch.cat([states, neighbourhood_states(states[..., :channels], latent_shape, layout.readout_patch)],
                     dim=-1)


def query_states(query_inputs: torch.Tensor, context_inputs: torch.Tensor, groups: torch.Tensor,
                 latent_shape: Sequence[int], patch: int) -> torch.Tensor:
    """The state inputs (…, N, S) of a block's queries: their own (…, N, 2C), and with `patch` > 1
    the `decided_neighbourhood` of the block's `context_inputs` for cells in `groups` (N,)."""
    if patch == 1:
        return query_inputs
    return torch.cat([query_inputs, decided_neighbourhood(context_inputs, groups, latent_shape, patch)], dim=-1)


def decided_neighbourhood(context_inputs: torch.Tensor, groups: torch.Tensor, latent_shape: Sequence[int],
                          patch: int) -> torch.Tensor:
    """(…, N, 2C) context inputs of a block's cells (the running state with each cell's own code,
    then ε̂) and the group of each cell (N,) -> (…, N, (patch² − 1)·C): at each cell, the state of
    every other cell of the `patch` × `patch` square around it that an earlier group decided, zeros
    for the cells of its own group or later ones (not yet drawn when it is) and beyond the edge."""
    n, channels = groups.shape[0], context_inputs.shape[-1] // 2
    ids = neighbourhood_states(torch.arange(1, n + 1, dtype=torch.float)[:, None], latent_shape, patch)
    neighbours = ids.long() - 1  # (N, patch² − 1): each cell's neighbours, −1 beyond the edge
    earlier = (neighbours >= 0) & (groups[neighbours.clamp_min(0)] < groups[:, None])
    states = neighbourhood_states(context_inputs[..., :channels], latent_shape, patch)
    return states * earlier.repeat_interleave(channels, dim=-1).to(states.dtype)


def neighbourhood_states(states: torch.Tensor, latent_shape: Sequence[int], patch: int) -> torch.Tensor:
    """(…, N, C) per-cell states of a latent of `latent_shape` (cells in raster order) -> (…, N,
    (patch² − 1)·C): at each cell, the states of the other cells of the `patch` × `patch` square
    around it on the latent's last two axes (space for images and clips, time and frequency for
    spectrograms), zeros beyond the edge; row-major offsets, channels innermost."""
    *lead, n, c = states.shape
    *outer, height, width = latent_shape
    if math.prod(latent_shape) != n:
        raise UnitokError(f"a latent of shape {tuple(latent_shape)} has {math.prod(latent_shape)} cells, got {n}")
    grid = rearrange(states.reshape(-1, n, c), "b (o h w) c -> (b o) c h w", h=height, w=width)
    square = rearrange(F.unfold(grid, patch, padding=patch // 2), "bo (c k) hw -> bo hw k c", c=c)
    centre = patch * patch // 2
    others = torch.cat([square[:, :, :centre], square[:, :, centre + 1:]], dim=2)
    return rearrange(others, "(b o) (h w) k c -> b (o h w) (k c)", o=math.prod(outer), h=height).reshape(*lead, n, -1)


def task_document(vocab: Vocabulary, layout: StreamLayout, task: str, text_ids: Sequence[int],
                  span: MediaSpan | None = None, bounds: Sequence[Sequence[int]] | None = None,
                  drop_text: bool = False) -> Stream:
    """The document of `task` (see the module docstring) from a caption's global text ids and a
    media `span`. A text-to-media document in timestep order holds one generated block per entry
    of `bounds` (its groups, `DecodeSchedule.bounds`); `drop_text` removes its caption
    (classifier-free guidance)."""
    builder = StreamBuilder(vocab, layout.media_order).special("<bos>")
    if task_modality(task) is None:
        return builder.text(text_ids).eos().build()
    if not generates_media(task):
        inputs = readout_states(span.context_inputs[-1], layout, span.latent_shape)
        return builder.read_out(span.name, inputs).text(text_ids).eos().build()
    builder.text([] if drop_text else text_ids)
    if layout.media_order == "raster":
        return builder.media(span.name, span.ids, span.context_inputs).eos().build()
    generated = slice(1, 1 + len(bounds))
    contexts, queries = span.context_inputs[generated], span.query_inputs[generated]
    if layout.query_patch > 1:  # the default layout builds no cell groups per document
        queries = torch.stack([query_states(q, c, cell_groups(block_bounds), span.latent_shape, layout.query_patch)
                               for q, c, block_bounds in zip(queries, contexts, bounds)])
    return builder.generated(span.name, span.ids[generated], contexts, queries, bounds).build()


class DocumentMaker:
    """How a shard row becomes a training document: the model's layout, caption dropout, and the
    share of text-to-media documents that hold only the first generated block ``k_{T−1}`` (where
    the caption's content enters, at a fraction of a whole document's tokens; a block sees only
    the prefix and itself, so its gradients are exactly those of that block in a whole document)."""

    def __init__(self, vocab: Vocabulary, layout: StreamLayout, caption_dropout: float = 0.0,
                 first_step_fraction: float = 0.0):
        self.vocab, self.layout = vocab, layout
        self.caption_dropout, self.first_step_fraction = caption_dropout, first_step_fraction

    def document(self, task: str, text_ids: Sequence[int], span: MediaSpan | None, rng: random.Random,
                 heldout: bool = False) -> Stream:
        """A row's document; a held-out one keeps its caption and every generated block."""
        drop = not heldout and rng.random() < self.caption_dropout
        bounds = None
        if span is not None and generates_media(task) and self.layout.media_order == "timestep":
            bounds = self.layout.schedule(span.name).bounds(span.ids.shape[1])
            if not heldout and rng.random() < self.first_step_fraction:
                bounds = bounds[:1]
        return task_document(self.vocab, self.layout, task, text_ids, span, bounds, drop_text=drop)

    def heldout(self, task: str, rows: Sequence[dict], spans: Sequence[MediaSpan | None]) -> list[Stream]:
        """Held-out documents of rows: every caption and generated block; nothing is drawn."""
        no_draws = random.Random(0)
        return [self.document(task, row["text_ids"], span, no_draws, heldout=True) for row, span in zip(rows, spans)]
