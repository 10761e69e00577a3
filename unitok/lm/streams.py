"""Streams: spans of text and media laid out as one token sequence, with inputs, targets and attention.

A document is ``<bos> … <eos>`` made of text spans and media spans ``<boi> blocks [<eoi>]``
(``<boa>``/``<bov>`` for audio/video). A media span's blocks are RDPM steps ``k_T … k_0`` of N
cells each (docs/RDPM.md). Per position we record:

- its *input id*: a text or special token, a media code, or, for a *query* (a cell to be drawn),
  its modality's mask row (`Vocabulary.mask_id`);
- its *target* (-100 for none): text positions predict the next token; a query predicts its
  cell's code; contexts (drawn cells), condition spans and ``<boi>`` have none (``k_T`` is drawn
  from noise);
- what it *sees*: ``reach`` is the last key it may see, and the positions of a media block form a
  private *segment* (``segment``): only that segment's own positions see them. Text is causal. A
  generated block's cells are drawn in groups over a fixed cell order (`layout.DecodeSchedule`); a
  training block holds the *contexts* (codes) of its groups but the last, causal in cell order,
  then one query per cell that sees the prefix and the contexts of the groups before its own: what
  the sampler knows when it draws that cell (`StreamBuilder.generated`). A media position never
  sees another block of its span: what the earlier blocks decided reaches it through its state
  inputs. Text after a span reads it through the span's *read-out block* (`StreamBuilder.read_out`):
  N public positions whose inputs are the clean state ``s_0``, which see the prefix and each other;
- its *position id*: every block of a span takes the positions right after ``<bo?>``, so a block
  sits at the same positions whichever blocks come before it in a document or a sampler's cache;
- for media positions, the global ids of its *cell*, *block* and first *state* row
  (`Vocabulary.position_rows`), and its 2C state inputs: the running RDPM state at its cell (the
  blocks before its own, and for a context its own code) and the noise ε̂
  (`RDPMQuantizer.block_inputs`), which weigh the state rows.

`media_order="raster"` is the autoregressive baseline: the codes of one clean block in raster
order, causal, next-token. Batches (packing, padding, 4D masks) are `batch.py`'s.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from unitok.core.errors import UnitokError
from unitok.lm.layout import MediaOrder, cell_order
from unitok.tokenizer.vocabulary import TokenRange, Vocabulary

IGNORE = -100
NO_ROWS = (-1, -1, -1)  # media_rows of a token that is not a media position
PUBLIC = -1  # `Stream.segment` of a position that every later position of its document may see
_NEXT, _NONE = "next", "none"  # target rules; an int rule is the target id itself


@dataclass
class Stream:
    """One document: inputs, targets, attention and positions, all the same length."""

    input_ids: list[int] = field(default_factory=list)
    targets: list[int] = field(default_factory=list)
    reach: list[int] = field(default_factory=list)  # last key each position sees
    segment: list[int] = field(default_factory=list)  # private segment a position belongs to (seen only from
    # inside it: a media block), PUBLIC for text, delimiters and read-out positions
    positions: list[int] = field(default_factory=list)  # position ids (RoPE)
    target_block: list[int] = field(default_factory=list)  # generated media block of the target
    # (0 = the first generated block, k_{T-1}; raster codes all 0), -1 for text targets and no target
    media_rows: list[tuple[int, int, int]] = field(default_factory=list)  # (cell, block, state) rows, or NO_ROWS
    media_states: list[list[float]] = field(default_factory=list)  # state inputs (2C floats), [] for others

    def __len__(self) -> int:
        return len(self.input_ids)


class StreamBuilder:
    """Appends spans left to right; `build()` resolves next-token targets once the document is known."""

    def __init__(self, vocab: Vocabulary, media_order: MediaOrder = "timestep"):
        self.vocab = vocab
        self.media_order = media_order
        self._stream = Stream()
        self._rules: list[str | int] = []
        self._next_position = 0
        self._segments = 0  # private segments so far
        self._open_span: tuple[str, int] | None = None  # (name, first position) of a span not yet closed

    def _append(self, token: int, rule: str | int, position: int, reach: int | None = None,
                segment: int = PUBLIC, target_block: int = -1, media_rows: tuple[int, int, int] = NO_ROWS,
                media_state: list[float] | None = None) -> None:
        s = self._stream
        s.reach.append(len(s.input_ids) if reach is None else reach)
        s.segment.append(segment)
        s.positions.append(position)
        s.target_block.append(target_block if rule != _NONE else -1)
        s.media_rows.append(media_rows)
        s.media_states.append(media_state or [])
        s.input_ids.append(int(token))
        self._rules.append(rule)

    def _new_segment(self) -> int:
        self._segments += 1
        return self._segments - 1

    def _append_causal(self, token: int, rule: str | int = _NEXT, target_block: int = -1) -> None:
        self._append(token, rule, self._next_position, target_block=target_block)
        self._next_position += 1

    def special(self, token: str, rule: str = _NEXT) -> "StreamBuilder":
        self._append_causal(self.vocab.special_id(token), rule)
        return self

    def eos(self) -> "StreamBuilder":
        """``<eos>``: the document's last position, which predicts nothing."""
        return self.special("<eos>", rule=_NONE)

    def text(self, global_ids: Sequence[int]) -> "StreamBuilder":
        for token in global_ids:
            self._append_causal(token)
        return self

    def media(self, name: str, blocks: torch.Tensor, inputs: torch.Tensor, complete: bool = True,
              trained: bool = True) -> "StreamBuilder":
        """A media span ``<bo?> blocks [<eo?>]`` of decided blocks from global code ids `blocks`
        (b, N) and their state inputs `inputs` (b, N, 2C). Timestep order: every block sees the
        prefix and itself, no targets. Raster order: the codes of one block, causal, each
        predicting the next if `trained`. `complete=False` leaves the span open (a sampler's
        prefix; `read_out` may close it)."""
        self._check_inputs(name, blocks, inputs)
        timestep = self.media_order == "timestep"
        span_position = self._open(name, _NEXT if trained and not timestep else _NONE, target_block=0)  # raster: code 0
        num_blocks, n = blocks.shape
        codes, rows, states = blocks.tolist(), self.vocab.position_rows(name, num_blocks, n).tolist(), inputs.tolist()
        for b in range(num_blocks):
            block_end, private = len(self._stream.input_ids) + n - 1, self._new_segment() if timestep else PUBLIC
            for cell in range(n):
                j = b * n + cell
                if timestep:
                    self._append(codes[b][cell], _NONE, span_position + cell, reach=block_end, segment=private,
                                 media_rows=tuple(rows[b][cell]), media_state=states[b][cell])
                else:
                    rule = _NEXT if trained and j < num_blocks * n - 1 else _NONE
                    self._append(codes[b][cell], rule, span_position + j, target_block=0,
                                 media_rows=tuple(rows[b][cell]), media_state=states[b][cell])
        self._next_position = span_position + (n if timestep else num_blocks * n)
        if complete:
            self._close(name)
        return self

    def generated(self, name: str, blocks: torch.Tensor, context_inputs: torch.Tensor,
                  query_inputs: torch.Tensor, bounds: Sequence[Sequence[int]]) -> "StreamBuilder":
        """``<bo?>`` and the generated blocks 1 … b of a span, each drawn in groups of cells
        (`bounds[b]` from `layout.group_bounds`, over `layout.cell_order(N)`), every cell trained
        with what the sampler knows when it draws it. A block is laid out as the *context* positions
        of its groups 0 … G−2 in cell order (code and `context_inputs`: what a drawn cell tells the
        later ones; causal, no target), then one *query* per cell (mask row and `query_inputs`, its
        own code the target) that sees the prefix and the contexts of the groups before its own; its
        state rows are ``<name>.query_state``'s where the layout gives queries a neighbourhood.
        Neither sees another block of the span, and nothing after the span sees them. The span
        stays open: a document ends with it, or text reads it after `read_out`."""
        query_rows = self.vocab.query_state(name)
        self._check_inputs(name, blocks, context_inputs)
        self._check_inputs(name, blocks, query_inputs, query_rows)
        span_position = self._open(name, _NONE)
        num_blocks, n = blocks.shape
        rows = self.vocab.position_rows(name, 1 + num_blocks, n)[1:].tolist()
        codes, context_states, query_states = blocks.tolist(), context_inputs.tolist(), query_inputs.tolist()
        cells, mask_id = cell_order(n).tolist(), self.vocab.mask_id(name)
        for b, block_bounds in enumerate(bounds):
            block_start, private = len(self._stream.input_ids), self._new_segment()
            contexts = block_bounds[-2]  # the last group's codes are never read in its block
            for k, cell in enumerate(cells[:contexts]):
                self._append(codes[b][cell], _NONE, span_position + cell, reach=block_start + k, segment=private,
                             media_rows=tuple(rows[b][cell]), media_state=context_states[b][cell])
            for g in range(len(block_bounds) - 1):
                for cell in cells[block_bounds[g]:block_bounds[g + 1]]:
                    self._append(mask_id, codes[b][cell], span_position + cell,
                                 reach=block_start + block_bounds[g] - 1, segment=private,
                                 target_block=b, media_rows=(*rows[b][cell][:2], query_rows.offset),
                                 media_state=query_states[b][cell])
        self._next_position = span_position + n
        return self

    def read_out(self, name: str, readout_inputs: torch.Tensor) -> "StreamBuilder":
        """Close a span with its *read-out block*, opening it first if no span of `name` is open:
        one position per cell, or per pooled square of a conv reader (the read-out row, the cell's
        row, the clean block's row, and the state inputs `readout_inputs` (P, S) from
        `documents.readout_states`), then ``<eo?>``.
        Read-out positions see the prefix and each other, never the span's blocks, and have no
        target; the text after the span sees them (and not the blocks), so that a caption reads the
        clean latent in one block."""
        n = readout_inputs.shape[0]
        codes = torch.full((n,), self.vocab.readout_id(name))
        state_rows = self.vocab.readout_state(name)
        self._check_inputs(name, codes, readout_inputs, state_rows)
        is_open = self._open_span is not None and self._open_span[0] == name
        span_position = self._open_span[1] if is_open else self._open(name, _NONE)
        num_blocks = self.vocab.range(f"{name}.blocks").size
        rows = self.vocab.position_rows(name, num_blocks, n)[-1]
        rows[:, 2] = state_rows.offset
        rows = rows.tolist()
        block_end, ids, states = len(self._stream.input_ids) + n - 1, codes.tolist(), readout_inputs.tolist()
        for cell in range(n):
            self._append(ids[cell], _NONE, span_position + cell, reach=block_end, media_rows=tuple(rows[cell]),
                         media_state=states[cell])
        self._next_position = span_position + n
        self._close(name)
        return self

    def _open(self, name: str, rule: str, target_block: int = -1) -> int:
        """Append ``<bo?>`` (its target `rule`); returns the span's first position: every block of a
        span takes the positions after it."""
        begin, _ = self.vocab.delimiters(name)
        self._append_causal(begin, rule, target_block=target_block)
        self._open_span = (name, self._next_position)
        return self._next_position

    def _close(self, name: str) -> None:
        """``<eo?>`` after the span's blocks."""
        self._open_span = None
        self._append_causal(self.vocab.delimiters(name)[1])

    def _check_inputs(self, name: str, blocks: torch.Tensor, inputs: torch.Tensor,
                      state_rows: TokenRange | None = None) -> None:
        width = (state_rows or self.vocab.range(f"{name}.state")).size
        if inputs.shape != (*blocks.shape, width):
            raise UnitokError(f"{name} state inputs of shape {tuple(inputs.shape)} do not match blocks of shape "
                             f"{tuple(blocks.shape)} with {width} state inputs")

    def build(self) -> Stream:
        s, rules = self._stream, self._rules
        length = len(s.input_ids)
        s.targets = [
            (s.input_ids[p + 1] if p + 1 < length else IGNORE) if rule == _NEXT
            else IGNORE if rule == _NONE else rule
            for p, rule in enumerate(rules)
        ]
        return s


