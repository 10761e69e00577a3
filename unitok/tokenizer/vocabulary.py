"""The shared vocabulary: disjoint id ranges for special tokens, text pieces and media codes.

Global id = range offset + local id. Every media range comes with four ranges of *input rows*,
embedding rows that never stand for a code but enter a media position's input (see
`lm.model.StreamModel`): ``<name>.cells`` (N rows) and ``<name>.blocks`` (T+1 rows) say which latent
cell and which noise step it holds (learned absolute positions); ``<name>.state`` (2C rows) is a
learned projection of what the RDPM trajectory holds at its cell: the running state (its own code
included once decided) and the noise ε̂ (C latent channels each); ``<name>.mask`` (1 row) is the input of a cell
whose code is not decided yet; ``<name>.readout`` (1 row) is the input of a read-out position,
which holds the clean state ``s_0`` for the text after a span to read (`lm.streams.StreamBuilder.read_out`).
A model whose read-out positions take other state inputs than a code position's 2C (the ``s_0`` of
a k×k neighbourhood of their cell, or the ``s_0`` of a conv reader's pooled square) has, after
every other range, a ``<name>.readout_state`` range of that many rows per media range, and one whose
queries take their decided neighbours a ``<name>.query_state`` range (`Vocabulary.with_state_widths`):
input rows only, so its shard sets, which never hold them, stay valid (`Vocabulary.require_holds`).
The manifest (``vocabulary.json``) is saved with every model and shard set and records a content
hash of every tokenizer, so that shards or checkpoints made with other tokenizers are refused.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Literal, NamedTuple, Sequence

import torch

from unitok.core.errors import UnitokError

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<boi>", "<eoi>", "<boa>", "<eoa>", "<bov>", "<eov>")
MEDIA_DELIMITERS = {"image": ("<boi>", "<eoi>"), "audio": ("<boa>", "<eoa>"), "video": ("<bov>", "<eov>")}
MANIFEST_NAME = "vocabulary.json"
INPUT_ONLY_STATES = (".readout_state", ".query_state")  # state rows a model adds to its shards' vocabulary


class VocabularyError(UnitokError):
    """Ids outside their range, or a manifest that does not match."""


class MediaLayout(NamedTuple):
    """What the vocabulary records of one media tokenizer."""

    name: str  # its range name, e.g. "image"
    modality: str  # which delimiters wrap its spans
    codebook_size: int
    tokenizer_hash: str
    num_blocks: int  # T + 1
    num_positions: int  # N
    latent_channels: int  # C: a position's input carries 2C floats, its running state and the noise


@dataclass(frozen=True)
class TokenRange:
    name: str  # "special", "text", a media tokenizer's name (e.g. "image"), or "<name>.cells" / ".blocks" /
    # ".state" / ".mask" / ".readout" / ".readout_state" / ".query_state"
    kind: Literal["special", "text", "media", "position", "state", "mask", "readout"]
    offset: int
    size: int
    tokenizer_hash: str | None = None
    modality: str | None = None  # media ranges only: which delimiters wrap their spans

    @property
    def end(self) -> int:
        return self.offset + self.size


class Vocabulary:
    def __init__(self, ranges: Sequence[TokenRange]):
        self.ranges = list(ranges)
        self._by_name = {r.name: r for r in self.ranges}
        if len(self._by_name) != len(self.ranges):
            raise VocabularyError("vocabulary ranges must have distinct names")
        for a, b in zip(self.ranges, self.ranges[1:]):
            if b.offset != a.end:
                raise VocabularyError(f"range {b.name!r} starts at {b.offset}, expected {a.end} (ranges must tile)")

    @classmethod
    def build(cls, text_size: int, text_hash: str, media: Sequence[MediaLayout]) -> "Vocabulary":
        """Lay out special tokens, text pieces, then per media tokenizer its codes, cells, blocks, state, mask and
        read-out rows."""
        ranges = [TokenRange("special", "special", 0, len(SPECIAL_TOKENS))]
        ranges.append(TokenRange("text", "text", ranges[-1].end, text_size, text_hash))
        for m in media:
            if m.modality not in MEDIA_DELIMITERS:
                raise VocabularyError(f"unknown modality {m.modality!r}; expected one of {list(MEDIA_DELIMITERS)}")
            for name, kind, size in ((m.name, "media", m.codebook_size),
                                     (f"{m.name}.cells", "position", m.num_positions),
                                     (f"{m.name}.blocks", "position", m.num_blocks),
                                     (f"{m.name}.state", "state", 2 * m.latent_channels),
                                     (f"{m.name}.mask", "mask", 1), (f"{m.name}.readout", "readout", 1)):
                ranges.append(TokenRange(name, kind, ranges[-1].end, size, m.tokenizer_hash, m.modality))
        return cls(ranges)

    def with_state_widths(self, readout: Callable[[int], int] | None,
                          query: Callable[[int], int] | None = None) -> "Vocabulary":
        """This vocabulary with ``<name>.readout_state`` and ``<name>.query_state`` rows after every
        other range (in place of any it had): `readout` (`StreamLayout.readout_width`) and `query`
        (`StreamLayout.query_width`) of each media range's C latent channels, none where that is 2C
        (those positions then share the ``<name>.state`` rows) or the width is None."""
        ranges = [r for r in self.ranges if not r.name.endswith(INPUT_ONLY_STATES)]
        for suffix, width in zip(INPUT_ONLY_STATES, (readout, query)):
            for media in (r for r in self.ranges if r.kind == "media" and width is not None):
                channels = self.range(f"{media.name}.state").size // 2
                if width(channels) != 2 * channels:
                    ranges.append(TokenRange(f"{media.name}{suffix}", "state", ranges[-1].end,
                                             width(channels), media.tokenizer_hash, media.modality))
        return Vocabulary(ranges)

    # --- lookups -------------------------------------------------------------------------------
    @property
    def size(self) -> int:
        return self.ranges[-1].end

    def range(self, name: str) -> TokenRange:
        if name not in self._by_name:
            raise VocabularyError(f"vocabulary has no range {name!r}; it has {list(self._by_name)}")
        return self._by_name[name]

    def media_ranges(self) -> list[TokenRange]:
        return [r for r in self.ranges if r.kind == "media"]

    def position_rows(self, name: str, num_blocks: int, num_positions: int) -> torch.Tensor:
        """(num_blocks, num_positions, 3) global ids of the input rows of the positions of a span:
        their cell row, their block row and the first of their 2C state rows."""
        cells, blocks, state = self.range(f"{name}.cells"), self.range(f"{name}.blocks"), self.range(f"{name}.state")
        if num_blocks > blocks.size or num_positions > cells.size:
            raise VocabularyError(f"a {name} span has at most {blocks.size} blocks of {cells.size} codes, "
                                  f"got {num_blocks} of {num_positions}")
        cell_ids = torch.arange(cells.offset, cells.offset + num_positions).expand(num_blocks, -1)
        block_ids = torch.arange(blocks.offset, blocks.offset + num_blocks)[:, None].expand(-1, num_positions)
        return torch.stack([cell_ids, block_ids, torch.full_like(cell_ids, state.offset)], dim=-1)

    def mask_id(self, name: str) -> int:
        """Global id of the input row of an undecided cell of media range `name`."""
        return self.range(f"{name}.mask").offset

    def readout_id(self, name: str) -> int:
        """Global id of the input row of a read-out position of media range `name`."""
        return self.range(f"{name}.readout").offset

    def readout_state(self, name: str) -> TokenRange:
        """The state rows of the read-out positions of media range `name`: ``<name>.readout_state``
        where they take other inputs (`with_state_widths`), else the ``<name>.state`` rows."""
        return self._by_name.get(f"{name}.readout_state") or self.range(f"{name}.state")

    def query_state(self, name: str) -> TokenRange:
        """The state rows of the queries of media range `name`: ``<name>.query_state`` where they
        take a neighbourhood (`with_state_widths`), else the ``<name>.state`` rows."""
        return self._by_name.get(f"{name}.query_state") or self.range(f"{name}.state")

    def special_id(self, token: str) -> int:
        if token not in SPECIAL_TOKENS:
            raise VocabularyError(f"unknown special token {token!r}")
        return SPECIAL_TOKENS.index(token)

    def delimiters(self, name: str) -> tuple[int, int]:
        """Global ids of the begin/end tokens that wrap a span of media range `name`."""
        begin, end = MEDIA_DELIMITERS[self.range(name).modality]
        return self.special_id(begin), self.special_id(end)

    # --- local <-> global ----------------------------------------------------------------------
    def to_global(self, name: str, local_ids: torch.Tensor) -> torch.Tensor:
        r = self.range(name)
        _check_bounds(local_ids, 0, r.size, f"local {name} ids")
        return local_ids + r.offset

    def to_local(self, name: str, global_ids: torch.Tensor) -> torch.Tensor:
        r = self.range(name)
        _check_bounds(global_ids, r.offset, r.end, f"global {name} ids")
        return global_ids - r.offset

    # --- manifest ------------------------------------------------------------------------------
    def to_json(self) -> dict:
        return {"special_tokens": list(SPECIAL_TOKENS), "size": self.size, "ranges": [asdict(r) for r in self.ranges]}

    @property
    def hash(self) -> str:
        return hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()[:16]

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / MANIFEST_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({**self.to_json(), "hash": self.hash}, indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Vocabulary":
        path = Path(path)
        if path.is_dir():
            path = path / MANIFEST_NAME
        try:
            data = json.loads(path.read_text())
            vocab = cls([TokenRange(**r) for r in data["ranges"]])
        except (OSError, KeyError, TypeError, json.JSONDecodeError) as err:
            raise VocabularyError(f"{path}: not a readable vocabulary manifest ({err})") from None
        if tuple(data["special_tokens"]) != SPECIAL_TOKENS:
            raise VocabularyError(f"{path}: special tokens {data['special_tokens']} differ from this unitok's")
        if data.get("hash") not in (None, vocab.hash):
            raise VocabularyError(f"{path}: manifest hash {data['hash']} does not match its content ({vocab.hash})")
        return vocab

    def require_holds(self, other: "Vocabulary", what: str) -> None:
        """Refuse `other` (a shard set's vocabulary) unless every id of it means the same here: this
        vocabulary is `other`, or `other` followed by input-only state rows (`with_state_widths`)."""
        extra = self.ranges[len(other.ranges):]
        if self.ranges[:len(other.ranges)] == other.ranges and all(r.kind == "state" for r in extra):
            return
        mine = {r.name: r for r in self.ranges}
        diffs = []
        for r in other.ranges:
            m = mine.get(r.name)
            if m is None:
                diffs.append(f"range {r.name!r} is not in the model's vocabulary")
            elif m != r:
                field = "tokenizer hash" if m.tokenizer_hash != r.tokenizer_hash else "layout"
                diffs.append(f"range {r.name!r} differs in {field} ({r.tokenizer_hash} vs {m.tokenizer_hash})")
        diffs += [f"range {n!r} is missing" for n in mine if n not in {r.name for r in other.ranges}]
        raise VocabularyError(
            f"{what} was made with another vocabulary (hash {other.hash}, expected {self.hash}): "
            + "; ".join(diffs or ["ranges differ"])
            + ". Re-tokenize with this model's tokenizers."
        )


def _check_bounds(ids: torch.Tensor, low: int, high: int, what: str) -> None:
    if ids.numel() and (int(ids.min()) < low or int(ids.max()) >= high):
        bad = ids[(ids < low) | (ids >= high)]
        raise VocabularyError(f"{what} out of range [{low}, {high}): found {bad[:5].tolist()}")
