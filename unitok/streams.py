"""Streams: spans of text and media laid out as one token sequence, with targets and attention.

A document is ``<bos> … <eos>`` made of text spans and media spans
``<boi> k_T … k_0 <eoi>`` (``<boa>``/``<bov>`` for audio/video). Per position we record:

- the global token id;
- its *target* (-100 for none): text positions predict the next token; a media code at
  (block t, position n) predicts the code at (block t−1, position n), i.e. N positions ahead.
  ``<boi>`` and the codes of ``k_0`` have no target (``k_T`` is drawn from noise and the span
  length is fixed, so ``<eoi>`` is appended by the sampler);
- its *reach*: the last position it may attend to. Text is causal (reach = itself); a media
  code sees its whole block (reach = end of its block), so attention is block-causal;
- for media codes, the global ids of its *cell*, *block* and *state* rows
  (`Vocabulary.position_rows`), whose embeddings the model adds to the code's: RoPE alone only
  tells tokens how far apart they are, not which latent cell or noise step a code holds;
- for media codes, the RDPM running state ``s_t`` at its cell after its block (C floats, from
  the tokenizer's `RDPMQuantizer.running_states`), which weighs the state rows. A single code
  is mostly quantized noise; the state is what the tokenizer's decoder sees, so the model
  need not learn to add up codes across blocks to know what a span holds.

Packed rows add document ids so that documents never see each other. `media_order="raster"`
is the autoregressive baseline: codes of one clean block in raster order, causal, next-token.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Sequence

import torch

from .vocabulary import Vocabulary

IGNORE = -100
NO_ROWS = (-1, -1, -1)  # media_rows of a token that is not a media code
MediaOrder = Literal["timestep", "raster"]
_NEXT, _NONE = "next", "none"  # target rules besides "ahead by N"


@dataclass
class Stream:
    """One document: ids, targets and attention reach, all the same length."""

    input_ids: list[int] = field(default_factory=list)
    targets: list[int] = field(default_factory=list)
    reach: list[int] = field(default_factory=list)
    target_block: list[int] = field(default_factory=list)  # predicted media block of the target
    # (0 = noisiest predicted block; raster codes all 0), -1 for text targets and no target
    media_rows: list[tuple[int, int, int]] = field(default_factory=list)  # (cell, block, state) rows, NO_ROWS for others
    media_states: list[list[float]] = field(default_factory=list)  # the running state (C floats), [] for others

    def __len__(self) -> int:
        return len(self.input_ids)

    def head(self, length: int) -> "Stream":
        """The first `length` positions; their targets are kept even where they lie beyond."""
        return Stream(self.input_ids[:length], self.targets[:length], self.reach[:length],
                      self.target_block[:length], self.media_rows[:length], self.media_states[:length])


class StreamBuilder:
    """Appends spans left to right; `build()` resolves targets once the whole document is known."""

    def __init__(self, vocab: Vocabulary, media_order: MediaOrder = "timestep"):
        self.vocab = vocab
        self.media_order = media_order
        self._ids: list[int] = []
        self._rules: list[str | int] = []  # _NEXT, _NONE, or an int offset to the target position
        self._reach: list[int] = []
        self._target_block: list[int] = []
        self._media_rows: list[tuple[int, int, int]] = []
        self._media_states: list[list[float]] = []

    def _append(self, token: int, rule: str | int, reach: int | None = None, target_block: int = -1,
                media_rows: tuple[int, int, int] = NO_ROWS, media_state: list[float] | None = None) -> None:
        self._reach.append(len(self._ids) if reach is None else reach)
        self._target_block.append(target_block if rule != _NONE else -1)
        self._media_rows.append(media_rows)
        self._media_states.append(media_state or [])
        self._ids.append(int(token))
        self._rules.append(rule)

    def special(self, token: str, rule: str = _NEXT) -> "StreamBuilder":
        self._append(self.vocab.special_id(token), rule)
        return self

    def text(self, global_ids: Sequence[int]) -> "StreamBuilder":
        for token in global_ids:
            self._append(token, _NEXT)
        return self

    def media(self, name: str, blocks: torch.Tensor, states: torch.Tensor, complete: bool = True,
              trained: bool = True) -> "StreamBuilder":
        """A media span from global ids `blocks` (num_blocks, N) and their running states
        (num_blocks, N, C): ``<bo?> k_T … [k_0 <eo?>]``.

        `complete=False` leaves the span open (a sampling prefix holding only the blocks so far).
        `trained=False` gives its codes no targets (the media of a media→text document is the
        condition, not the task); ``<eo?>`` still predicts what follows.
        """
        begin, end = self.vocab.delimiters(name)
        num_blocks, n = blocks.shape
        width = self.vocab.range(f"{name}.state").size
        if states.shape != (num_blocks, n, width):
            raise ValueError(f"{name} states of shape {tuple(states.shape)} do not match blocks of shape "
                             f"{tuple(blocks.shape)} with {width} latent channels")
        timestep = self.media_order == "timestep"
        self._append(begin, _NONE if timestep or not trained else _NEXT)
        flat = blocks.reshape(-1).tolist()
        rows = [tuple(r) for r in self.vocab.position_rows(name, num_blocks, n).reshape(-1, 3).tolist()]
        flat_states = states.flatten(0, 1).tolist()
        for b in range(num_blocks):
            block_end = len(self._ids) + n - 1
            last_block = complete and b == num_blocks - 1
            for i in range(n):
                j = b * n + i
                if timestep:
                    rule = _NONE if last_block or not trained else n
                    self._append(flat[j], rule, reach=block_end, target_block=b, media_rows=rows[j],
                                 media_state=flat_states[j])
                else:
                    last_code = last_block and i == n - 1
                    self._append(flat[j], _NONE if last_code or not trained else _NEXT, target_block=0, media_rows=rows[j],
                                 media_state=flat_states[j])
            if b == 0 and not timestep and trained:  # <bo?> predicts the first code
                self._target_block[-n - 1] = 0
        if complete:
            self._append(end, _NEXT)
        return self

    def build(self) -> Stream:
        ids, length = self._ids, len(self._ids)
        targets = []
        for p, rule in enumerate(self._rules):
            if rule == _NONE:
                targets.append(IGNORE)
            elif rule == _NEXT:
                targets.append(ids[p + 1] if p + 1 < length else IGNORE)
            else:  # ahead by `rule` positions
                targets.append(ids[p + rule] if p + rule < length else IGNORE)
        return Stream(list(ids), targets, list(self._reach), list(self._target_block), list(self._media_rows),
                      list(self._media_states))


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, L)
    targets: torch.Tensor  # (B, L), IGNORE where no target
    position_ids: torch.Tensor  # (B, L), restart at 0 in every document
    attention_mask: torch.Tensor  # (B, 1, L, L) bool, True = may attend
    document_ids: torch.Tensor  # (B, L), index of the document in its row, -1 for padding
    media_rows: torch.Tensor  # (B, L, 3) global ids of each media code's cell, block and first state row, -1 elsewhere
    media_states: torch.Tensor  # (B, L, S) each media code's running state, zero-padded to the widest; 0 elsewhere

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(**{name: t.to(device) for name, t in vars(self).items()})


def attention_mask_4d(reach_BL: torch.Tensor, doc_BL: torch.Tensor) -> torch.Tensor:
    """(B, 1, L, L): query q sees key k iff k <= reach[q] and both are in the same document."""
    key_index = torch.arange(reach_BL.shape[1], device=reach_BL.device)
    visible = key_index[None, None, :] <= reach_BL[:, :, None]
    same_doc = doc_BL[:, :, None] == doc_BL[:, None, :]
    return (visible & same_doc).unsqueeze(1)


def collate(rows: Sequence[Sequence[Stream]], pad_id: int, length: int | None = None,
            pad_side: Literal["left", "right"] = "right") -> Batch:
    """Rows of documents -> a padded batch. Each row packs its documents back to back.

    Padding positions form their own document (-1) and attend only to themselves, so no
    query row of the mask is empty (sdpa would return NaN for it).
    """
    row_lengths = [sum(len(s) for s in row) for row in rows]
    length = length or max(row_lengths)
    if max(row_lengths) > length:
        raise ValueError(f"a row of {max(row_lengths)} tokens does not fit length {length}")
    B = len(rows)
    input_ids = torch.full((B, length), pad_id, dtype=torch.long)
    targets = torch.full((B, length), IGNORE, dtype=torch.long)
    position_ids = torch.zeros((B, length), dtype=torch.long)
    reach = torch.arange(length).repeat(B, 1)
    doc = torch.full((B, length), -1, dtype=torch.long)
    media_rows = torch.full((B, length, 3), -1, dtype=torch.long)
    width = max((len(state) for row in rows for stream in row for state in stream.media_states), default=0)
    media_states = torch.zeros((B, length, width))
    for r, row in enumerate(rows):
        start = length - row_lengths[r] if pad_side == "left" else 0
        for d, stream in enumerate(row):
            span = slice(start, start + len(stream))
            input_ids[r, span] = torch.tensor(stream.input_ids)
            targets[r, span] = torch.tensor(stream.targets)
            position_ids[r, span] = torch.arange(len(stream))
            reach[r, span] = torch.tensor(stream.reach) + start
            doc[r, span] = d
            media_rows[r, span] = torch.tensor(stream.media_rows).view(-1, 3)
            coded = [p for p, state in enumerate(stream.media_states) if state]
            if coded:
                padded = [stream.media_states[p] + [0.0] * (width - len(stream.media_states[p])) for p in coded]
                media_states[r, torch.tensor(coded) + start] = torch.tensor(padded)
            start += len(stream)
    return Batch(input_ids, targets, position_ids, attention_mask_4d(reach, doc), doc, media_rows, media_states)


def pack(streams: Sequence[Stream], max_length: int) -> list[list[Stream]]:
    """Greedy packing in order: start a new row when the next document does not fit."""
    rows: list[list[Stream]] = []
    used = max_length
    for stream in streams:
        if len(stream) > max_length:
            raise ValueError(f"a document of {len(stream)} tokens is longer than max_length {max_length}")
        if used + len(stream) > max_length:
            rows.append([])
            used = 0
        rows[-1].append(stream)
        used += len(stream)
    return rows


def task_modality(task: str) -> str | None:
    """The media modality a task involves: ``text_to_audio`` and ``audio_to_text`` -> "audio";
    ``text`` (caption-only documents) -> None."""
    if task == "text":
        return None
    if task.startswith("text_to_"):
        return task.removeprefix("text_to_")
    if task.endswith("_to_text"):
        return task.removesuffix("_to_text")
    raise ValueError(f"unknown task {task!r}; expected text_to_<modality>, <modality>_to_text or text")


def task_document(vocab: Vocabulary, media_order: MediaOrder, task: str, text_ids: Sequence[int],
                  media_name: str | None = None, media_blocks: torch.Tensor | None = None,
                  media_states: torch.Tensor | None = None, drop_text: bool = False) -> Stream:
    """One training document for `task`: ``text_to_<modality>``, ``<modality>_to_text`` or ``text``.

    `drop_text` removes the caption of a text-to-media document (classifier-free guidance).
    In a media-to-text document only the text is trained; it sees the whole media span.
    """
    builder = StreamBuilder(vocab, media_order).special("<bos>")
    if task_modality(task) is None:
        builder.text(text_ids)
    elif task.startswith("text_to_"):
        builder.text([] if drop_text else text_ids).media(media_name, media_blocks, media_states)
    else:
        builder.media(media_name, media_blocks, media_states, trained=False).text(text_ids)
    return builder.special("<eos>", rule=_NONE).build()
