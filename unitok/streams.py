"""Streams: spans of text and media laid out as one token sequence, with inputs, targets and attention.

A document is ``<bos> … <eos>`` made of text spans and media spans ``<boi> blocks [<eoi>]``
(``<boa>``/``<bov>`` for audio/video). A media span's blocks are RDPM steps ``k_T … k_0`` of N
cells each (docs/RDPM.md). Per position we record:

- its *input id*: a text or special token, a media code, or, for a *query* (a cell to be drawn),
  its modality's mask row (`Vocabulary.mask_id`);
- its *target* (-100 for none): text positions predict the next token; a query predicts its
  cell's code; contexts (drawn cells), condition spans and ``<boi>`` have none (``k_T`` is drawn
  from noise);
- what it *sees*: ``reach`` is the last key it may see, and the positions of a media block are
  *private* to it (``block``): only that block's own positions see them. Text is causal. A generated
  block's cells are drawn in groups over a fixed cell order (`group_bounds`, `cell_order`); a
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

Packed rows add document ids so that documents never see each other. `media_order="raster"` is the
autoregressive baseline: the codes of one clean block in raster order, causal, next-token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange

from .errors import UnitokError
from .vocabulary import TokenRange, Vocabulary

LAYOUT = 4  # of documents and their inputs; part of the LM stage's key, so a change re-trains
IGNORE = -100
NO_ROWS = (-1, -1, -1)  # media_rows of a token that is not a media position
PUBLIC = -1  # `Stream.block` of a position that every later position of its document may see
MediaOrder = Literal["timestep", "raster"]
# What a read-out position takes (`read_out_inputs`): the read-out row with the clean state s_0
# through the state rows ("clean", DESIGN.md §3), the same with the noise ε̂ in the other half of
# the state rows ("state"), or that with the cell's clean code k_0 in place of the read-out row
# ("code": the embedding a decided k_0 cell has)
ReadOut = Literal["state", "clean", "code"]
_NEXT, _NONE = "next", "none"  # target rules; an int rule is the target id itself


ROUND_SCHEDULES = {
    "cosine": lambda progress: math.cos(math.pi / 2 * progress),
    "linear": lambda progress: 1 - progress,
    "quadratic": lambda progress: (1 - progress) ** 2,
}


def undecided_after_rounds(num_positions: int, rounds: int, schedule: str = "cosine") -> list[int]:
    """Cells still undecided after each of `rounds` rounds: ⌊N·f(r/R)⌋ for the schedule's f,
    at least one fewer every round, 0 after the last."""
    if rounds > num_positions:
        raise UnitokError(f"{rounds} rounds cannot each decide one of {num_positions} cells")
    share = ROUND_SCHEDULES[schedule]
    left, counts = num_positions, []
    for r in range(1, rounds + 1):
        left = min(math.floor(num_positions * share(r / rounds)), left - 1)
        counts.append(max(left, rounds - r))
    counts[-1] = 0
    return counts


CellOrder = Literal["random", "lattice"]


def cell_order(num_positions: int, kind: CellOrder = "random") -> torch.Tensor:
    """The fixed order in which a block's cells are decided, group after group.

    "random": a seeded permutation, so that every group is spread over the whole latent.
    "lattice" (a square 2-D latent of side s, cells in raster order; image tokenizers): coarse to
    fine over sub-grids, as in multiscale parallel decoding. Cell (r, c) is ranked by the bits of
    c and r from the lowest up, interleaved, so that for a power-of-two side the first N/4 cells
    are the even rows and columns, the first N/16 every fourth, and so on: groups whose sizes
    follow these levels hold evenly spaced cells, each with its decided neighbours at the same
    offsets.
    """
    if kind == "random":
        return torch.randperm(num_positions, generator=torch.Generator().manual_seed(0))
    side = math.isqrt(num_positions)
    if side * side != num_positions:
        raise UnitokError(f"cell order 'lattice' needs a square latent, got {num_positions} cells")
    bits = side.bit_length()

    def coarse_first(cell: int) -> list[int]:
        row, col = divmod(cell, side)
        return [(x >> k) & 1 for k in range(bits) for x in (col, row)]

    return torch.tensor(sorted(range(num_positions), key=coarse_first))


def group_bounds(num_positions: int, rounds: int, schedule: str = "cosine") -> list[int]:
    """[0, a_1, …, N]: group g holds the cells `cell_order(N)[a_g : a_{g+1}]`."""
    return [0] + [num_positions - left for left in undecided_after_rounds(num_positions, rounds, schedule)]


@dataclass
class Stream:
    """One document: inputs, targets, attention and positions, all the same length."""

    input_ids: list[int] = field(default_factory=list)
    targets: list[int] = field(default_factory=list)
    reach: list[int] = field(default_factory=list)  # last key each position sees
    block: list[int] = field(default_factory=list)  # media block a position is private to (seen only from
    # inside it), PUBLIC for text, delimiters and read-out positions
    positions: list[int] = field(default_factory=list)  # position ids (RoPE)
    target_block: list[int] = field(default_factory=list)  # generated media block of the target
    # (0 = the first generated block, k_{T-1}; raster codes all 0), -1 for text targets and no target
    media_rows: list[tuple[int, int, int]] = field(default_factory=list)  # (cell, block, state) rows, NO_ROWS for others
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
        self._blocks = 0  # private blocks so far
        self._open_span: tuple[str, int] | None = None  # (name, first position) of a span not yet closed

    def _append(self, token: int, rule: str | int, position: int, reach: int | None = None,
                block: int = PUBLIC, target_block: int = -1, media_rows: tuple[int, int, int] = NO_ROWS,
                media_state: list[float] | None = None) -> None:
        s = self._stream
        s.reach.append(len(s.input_ids) if reach is None else reach)
        s.block.append(block)
        s.positions.append(position)
        s.target_block.append(target_block if rule != _NONE else -1)
        s.media_rows.append(media_rows)
        s.media_states.append(media_state or [])
        s.input_ids.append(int(token))
        self._rules.append(rule)

    def _new_block(self) -> int:
        self._blocks += 1
        return self._blocks - 1

    def _append_causal(self, token: int, rule: str | int = _NEXT, target_block: int = -1) -> None:
        self._append(token, rule, self._next_position, target_block=target_block)
        self._next_position += 1

    def special(self, token: str, rule: str = _NEXT) -> "StreamBuilder":
        self._append_causal(self.vocab.special_id(token), rule)
        return self

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
            block_end, private = len(self._stream.input_ids) + n - 1, self._new_block() if timestep else PUBLIC
            for cell in range(n):
                j = b * n + cell
                if timestep:
                    self._append(codes[b][cell], _NONE, span_position + cell, reach=block_end, block=private,
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
                  query_inputs: torch.Tensor, bounds: Sequence[Sequence[int]],
                  order: CellOrder = "random") -> "StreamBuilder":
        """``<bo?>`` and the generated blocks 1 … b of a span, each drawn in groups of cells
        (`bounds[b]` from `group_bounds`, over `cell_order(N, order)`), every cell trained with what the
        sampler knows when it draws it. A block is laid out as the *context* positions of its groups
        0 … G−2 in cell order (code and `context_inputs`: what a drawn cell tells the later ones;
        causal, no target), then one *query* per cell (mask row and `query_inputs`, its own
        code the target) that sees the prefix and the contexts of the groups before its own. Neither
        sees another block of the span, and nothing after the span sees them. The span stays open:
        a document ends with it, or text reads it after `read_out`."""
        self._check_inputs(name, blocks, context_inputs)
        self._check_inputs(name, blocks, query_inputs)
        span_position = self._open(name, _NONE)
        num_blocks, n = blocks.shape
        rows = self.vocab.position_rows(name, 1 + num_blocks, n)[1:].tolist()
        codes, context_states, query_states = blocks.tolist(), context_inputs.tolist(), query_inputs.tolist()
        cells, mask_id = cell_order(n, order).tolist(), self.vocab.mask_id(name)
        for b, block_bounds in enumerate(bounds):
            block_start, private = len(self._stream.input_ids), self._new_block()
            contexts = block_bounds[-2]  # the last group's codes are never read in its block
            for k, cell in enumerate(cells[:contexts]):
                self._append(codes[b][cell], _NONE, span_position + cell, reach=block_start + k, block=private,
                             media_rows=tuple(rows[b][cell]), media_state=context_states[b][cell])
            for g in range(len(block_bounds) - 1):
                for cell in cells[block_bounds[g]:block_bounds[g + 1]]:
                    self._append(mask_id, codes[b][cell], span_position + cell,
                                 reach=block_start + block_bounds[g] - 1, block=private,
                                 target_block=b, media_rows=tuple(rows[b][cell]), media_state=query_states[b][cell])
        self._next_position = span_position + n
        return self

    def read_out(self, name: str, clean_inputs: torch.Tensor, clean_codes: torch.Tensor | None = None) -> "StreamBuilder":
        """Close a span with its *read-out block*, opening it first if no span of `name` is open:
        one position per cell (the cell's row, the clean block's row, and the state inputs
        `clean_inputs` (N, 2C): ``s_0``, then ε̂ or zeros, then for a vocabulary with a read-out
        patch the neighbours' ``s_0``, `read_out_inputs`), then ``<eo?>``. Its
        input id is the modality's read-out row, or with `clean_codes` (N global ids of the clean
        block ``k_0``) the cell's clean code (`ReadOut`). Read-out positions see the prefix and each
        other, never the span's blocks, and have no target; the text after the span sees them (and
        not the blocks), so that a caption reads the clean latent in one block."""
        n = clean_inputs.shape[0]
        codes = torch.full((n,), self.vocab.readout_id(name)) if clean_codes is None else clean_codes
        state_rows = self.vocab.readout_state(name)
        self._check_inputs(name, codes, clean_inputs, state_rows)
        span_position = self._open_span[1] if self._open_span and self._open_span[0] == name else self._open(name, _NONE)
        num_blocks = self.vocab.range(f"{name}.blocks").size
        rows = self.vocab.position_rows(name, num_blocks, n)[-1]
        rows[:, 2] = state_rows.offset
        rows = rows.tolist()
        block_end, ids, states = len(self._stream.input_ids) + n - 1, codes.tolist(), clean_inputs.tolist()
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


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, L)
    targets: torch.Tensor  # (B, L), IGNORE where no target
    position_ids: torch.Tensor  # (B, L)
    attention_mask: torch.Tensor  # (B, 1, L, L) bool, True = may attend
    document_ids: torch.Tensor  # (B, L), index of the document in its row, -1 for padding
    media_rows: torch.Tensor  # (B, L, 3) global ids of each media position's cell, block and first state row, -1 elsewhere
    media_states: torch.Tensor  # (B, L, S) each media position's state inputs, zero-padded to the widest; 0 elsewhere

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(**{name: t.to(device) for name, t in vars(self).items()})


def attention_mask_4d(reach_BL: torch.Tensor, block_BL: torch.Tensor, doc_BL: torch.Tensor) -> torch.Tensor:
    """(B, 1, L, L): query q sees key k iff k <= reach[q], k is public or in q's own block, and
    both are in the same document."""
    key = torch.arange(reach_BL.shape[1], device=reach_BL.device)[None, None, :]
    visible = key <= reach_BL[:, :, None]
    private_to_other = (block_BL[:, None, :] != PUBLIC) & (block_BL[:, None, :] != block_BL[:, :, None])
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
    block = torch.full((B, length), PUBLIC, dtype=torch.long)
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
            block[r, span] = torch.tensor(stream.block)  # documents never see each other: ids may repeat
            doc[r, span] = d
            media_rows[r, span] = torch.tensor(stream.media_rows).view(-1, 3)
            for w in {len(state) for state in stream.media_states} - {0}:  # one copy per width: no padded lists
                coded = [p for p, state in enumerate(stream.media_states) if len(state) == w]
                media_states[r, torch.tensor(coded) + start, :w] = torch.tensor([stream.media_states[p] for p in coded])
            start += len(stream)
    return Batch(input_ids, targets, position_ids, attention_mask_4d(reach, block, doc), doc, media_rows, media_states)


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


def task_modality(task: str) -> str | None:
    """The media modality a task involves: ``text_to_audio`` and ``audio_to_text`` -> "audio";
    ``text`` (caption-only documents) -> None."""
    if task == "text":
        return None
    if task.startswith("text_to_"):
        return task.removeprefix("text_to_")
    if task.endswith("_to_text"):
        return task.removesuffix("_to_text")
    raise UnitokError(f"unknown task {task!r}; expected text_to_<modality>, <modality>_to_text or text")


def read_out_inputs(readout: ReadOut, clean_codes: torch.Tensor, clean_inputs: torch.Tensor, patch: int = 1,
                    latent_shape: Sequence[int] = ()) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The state inputs and code ids (or None: the read-out row) that `StreamBuilder.read_out`
    takes for clean blocks (global ids (…, N), state inputs (…, N, 2C): ``s_0`` then ε̂). With a
    `patch` > 1 (`Vocabulary.readout_patch`), each cell's inputs go on with the ``s_0`` of the other
    cells of its neighbourhood on a latent of `latent_shape` (`neighbourhood_states`)."""
    channels = clean_inputs.shape[-1] // 2
    if readout == "clean":
        clean_inputs = clean_inputs.clone()
        clean_inputs[..., channels:] = 0
    if patch > 1:
        clean_inputs = torch.cat([clean_inputs, neighbourhood_states(clean_inputs[..., :channels], latent_shape, patch)],
                                 dim=-1)
    return clean_inputs, clean_codes if readout == "code" else None


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


def task_document(vocab: Vocabulary, media_order: MediaOrder, task: str, text_ids: Sequence[int],
                  media_name: str | None = None, media_blocks: torch.Tensor | None = None,
                  context_inputs: torch.Tensor | None = None, query_inputs: torch.Tensor | None = None,
                  bounds: Sequence[Sequence[int]] | None = None, drop_text: bool = False,
                  order: CellOrder = "random", readout: ReadOut = "clean", latent_shape: Sequence[int] = ()) -> Stream:
    """One training document for `task` from a span's global code ids `media_blocks` (T+1, N) and
    state inputs `context_inputs` (T+1, N, 2C: every code given, `RDPMQuantizer.block_inputs`):

    - ``text_to_<modality>``, timestep order: ``<bos> caption <bo?>`` and the generated blocks
      1 … b, one per entry of `bounds` (their groups, `StreamBuilder.generated`), whose queries
      take `query_inputs` (T+1, N, 2C). The noise block k_T is given: it reaches them through
      their state inputs, so it has no position of its own, and the document ends with its last
      trained block (``<eo?>`` would only predict ``<eos>``).
      Raster order: ``<bos> caption <bo?> codes <eo?> <eos>``, next-token;
    - ``<modality>_to_text``: ``<bos> <bo?> read-out <eo?> text <eos>``: the span is its read-out
      block alone (``s_0`` from the last block of `context_inputs`, `StreamBuilder.read_out`), as
      the text sees nothing else of a span; the text is trained;
    - ``text``: ``<bos> text <eos>``.

    `drop_text` removes the caption of a text-to-media document (classifier-free guidance);
    `order` is the generated blocks' `cell_order`; `readout` the read-out block's input ids;
    `latent_shape` the tokenizer's, which a read-out block needs if its cells take a neighbourhood
    (`Vocabulary.readout_patch`).
    """
    builder = StreamBuilder(vocab, media_order).special("<bos>")
    if task_modality(task) is None:
        return builder.text(text_ids).special("<eos>", rule=_NONE).build()
    if task.endswith("_to_text"):
        patch = vocab.readout_patch(media_name)
        builder.read_out(media_name, *read_out_inputs(readout, media_blocks[-1], context_inputs[-1], patch, latent_shape))
        builder.text(text_ids)
        return builder.special("<eos>", rule=_NONE).build()
    builder.text([] if drop_text else text_ids)
    if media_order == "raster":
        return builder.media(media_name, media_blocks, context_inputs).special("<eos>", rule=_NONE).build()
    generated = slice(1, 1 + len(bounds))
    return builder.generated(media_name, media_blocks[generated], context_inputs[generated],
                             query_inputs[generated], bounds, order).build()
