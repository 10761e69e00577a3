"""Batches: documents packed into rows, padded, with the 4D masks and position ids the model takes.

Packed rows add document ids so that documents never see each other; padding positions form
their own document and see only themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import torch

from unitok.core.errors import UnitokError
from unitok.lm.streams import IGNORE, PUBLIC, Stream


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, L)
    targets: torch.Tensor  # (B, L), IGNORE where no target
    position_ids: torch.Tensor  # (B, L)
    attention_mask: torch.Tensor  # (B, 1, L, L) bool, True = may attend
    document_ids: torch.Tensor  # (B, L), index of the document in its row, -1 for padding
    media_rows: torch.Tensor  # (B, L, 3) ids of each media position's cell, block and first state row, -1 elsewhere
    media_states: torch.Tensor  # (B, L, S) each media position's state inputs, zero-padded to the widest; 0 elsewhere

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(**{name: t.to(device) for name, t in vars(self).items()})


def attention_mask_4d(reach_BL: torch.Tensor, segment_BL: torch.Tensor, doc_BL: torch.Tensor) -> torch.Tensor:
    """(B, 1, L, L): query q sees key k iff k <= reach[q], k is public or in q's own segment, and
    both are in the same document."""
    key = torch.arange(reach_BL.shape[1], device=reach_BL.device)[None, None, :]
    visible = key <= reach_BL[:, :, None]
    private_to_other = (segment_BL[:, None, :] != PUBLIC) & (segment_BL[:, None, :] != segment_BL[:, :, None])
    same_doc = doc_BL[:, :, None] == doc_BL[:, None, :]
    return (visible & ~private_to_other & same_doc).unsqueeze(1)


def collate(rows: Sequence[Sequence[Stream]], pad_id: int, length: int | None = None,
            pad_side: Literal["left", "right"] = "right") -> Batch:
    """Rows of documents -> a padded batch. Each row packs its documents back to back.

    Padding positions form their own document (-1) and attend only to themselves, so no
    query row of the mask is empty (sdpa would return NaN for it).
    """
    row_lengths = [sum(len(s) for s in row) for row in rows]
    length = length or max(row_lengths)
    if max(row_lengths) > length:
        raise UnitokError(f"a row of {max(row_lengths)} tokens does not fit length {length}")
    B = len(rows)
    input_ids = torch.full((B, length), pad_id, dtype=torch.long)
    targets = torch.full((B, length), IGNORE, dtype=torch.long)
    position_ids = torch.zeros((B, length), dtype=torch.long)
    reach = torch.arange(length).repeat(B, 1)
    segment = torch.full((B, length), PUBLIC, dtype=torch.long)
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
            position_ids[r, span] = torch.tensor(stream.positions)
            reach[r, span] = torch.tensor(stream.reach) + start
            segment[r, span] = torch.tensor(stream.segment)  # documents never see each other: ids may repeat
            doc[r, span] = d
            media_rows[r, span] = torch.tensor(stream.media_rows).view(-1, 3)
            for w in {len(state) for state in stream.media_states} - {0}:  # one copy per width: no padded lists
                coded = [p for p, state in enumerate(stream.media_states) if len(state) == w]
                media_states[r, torch.tensor(coded) + start, :w] = torch.tensor([stream.media_states[p] for p in coded])
            start += len(stream)
    mask = attention_mask_4d(reach, segment, doc)
    return Batch(input_ids, targets, position_ids, mask, doc, media_rows, media_states)


def pack(streams: Sequence[Stream], max_length: int) -> list[list[Stream]]:
    """Rows of at most `max_length` tokens, first-fit decreasing: the longest document first, each
    into the first row with room. Documents of mixed lengths (a whole one and a few first-block
    ones) then leave little padding, which costs as much compute as tokens."""
    rows: list[list[Stream]] = []
    free: list[int] = []
    for stream in sorted(streams, key=len, reverse=True):
        if len(stream) > max_length:
            raise UnitokError(f"a document of {len(stream)} tokens is longer than max_length {max_length}")
        row = next((r for r, room in enumerate(free) if room >= len(stream)), None)
        if row is None:
            rows.append([])
            free.append(max_length)
            row = len(rows) - 1
        rows[row].append(stream)
        free[row] -= len(stream)
    return rows
