"""Training data: a weighted mixture of shard sets, streamed, one document per drawn row.

Each mixture entry is a shard set (`unitok tokenize --out`) with a task and a weight. Its rows
stream through `datasets` (parquet, ``streaming=True``): `split_dataset_by_node` gives every
rank disjoint rows, and a seeded shuffle buffer (reseeded per epoch) orders them. A batch draws
each document's entry by weight with a generator seeded by (seed, step, micro-step, rank), then
takes that entry's next row. The data position is how many rows each stream has consumed in its
epoch: saved with every checkpoint (with the world size and a hash of each set's files, the two
things it depends on), replayed on resume, so a resumed run sees exactly the rows an
uninterrupted one would.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Iterator, Sequence

import torch

from ..errors import UnitokError
from ..media_tokenizer import MediaTokenizer
from ..shards import ShardError, load_shards, read_manifest, shard_set_hash
from ..streams import Batch, CellOrder, ReadOut, Stream, collate, group_bounds, pack, task_document, task_modality
from ..vocabulary import Vocabulary

COLUMNS = ["key", "draw", "text_ids", "media", "media_ids"]


@dataclass(frozen=True)
class ShardMix:
    """One shard set in a training mixture (a recipe's ``data:`` list)."""

    shards: str  # a shard set folder, written by `unitok tokenize`
    weight: float = 1.0  # share of documents drawn from it (weights are normalised)
    task: str | None = None  # text_to_<modality>, <modality>_to_text or text; default: the set's own
    heldout: str | None = None  # a shard set of the same kind for held-out loss and early stopping

    def __post_init__(self):
        if self.weight < 0:
            raise UnitokError("weight must be non-negative")
        if self.task is not None:
            task_modality(self.task)  # raises on an unknown task name


@dataclass(frozen=True)
class MixtureEntry:
    """A `ShardMix` checked against its manifest and the model's vocabulary."""

    mix: ShardMix
    task: str
    media: str  # the vocabulary range of its media ("" for a text-only set)


def resolve_mixture(mixture: Sequence[ShardMix], vocab: Vocabulary, tokenizers: dict[str, MediaTokenizer],
                    world: int = 1) -> list[MixtureEntry]:
    """Check every entry: finished shard sets made with `vocab`, tasks that fit their media, a row
    for each of the `world` processes."""
    if not mixture or sum(m.weight for m in mixture) <= 0:
        raise UnitokError("the training mixture needs at least one shard set with a positive weight")
    entries = []
    for mix in mixture:
        for folder in filter(None, (mix.shards, mix.heldout)):
            vocab.require_holds(Vocabulary.load(folder), f"shard set {folder}")
        manifest = read_manifest(mix.shards)
        task, media = mix.task or manifest["settings"]["task"], manifest["settings"]["media"]
        needed = task_modality(task)
        if needed is not None and (media not in tokenizers or tokenizers[media].modality != needed):
            raise ShardError(f"shard set {mix.shards} holds {media or 'text-only'} rows; task {task} needs {needed}")
        if manifest["totals"]["rows"] < world:
            raise ShardError(f"shard set {mix.shards} has {manifest['totals']['rows']} rows, fewer than the {world} "
                             "processes that would split it")
        entries.append(MixtureEntry(mix, task, media))
    return entries


class ShardStream:
    """One shard set's rows on this rank, endlessly, epoch after epoch, in a seeded order."""

    def __init__(self, folder: str | Path, vocab: Vocabulary, seed: int, buffer: int, rank: int, world: int):
        from datasets.distributed import split_dataset_by_node

        dataset = load_shards(folder, vocab, streaming=True).select_columns(COLUMNS)
        dataset = split_dataset_by_node(dataset, rank=rank, world_size=world)
        self.dataset = dataset.shuffle(seed=seed, buffer_size=buffer)
        self.folder, self.set_hash, self.epoch, self.consumed = folder, shard_set_hash(folder), 0, 0
        self._rows: Iterator[dict] | None = None

    def next(self) -> dict:
        if self._rows is None:
            self.dataset.set_epoch(self.epoch)
            self._rows = islice(iter(self.dataset), self.consumed, None)  # replay up to the saved position
        row = next(self._rows, None)
        if row is None:
            if self.consumed == 0:  # resolve_mixture refuses such sets; this guards the loop below
                raise ShardError(f"shard set {self.folder}: this rank received no rows")
            self.epoch, self.consumed, self._rows = self.epoch + 1, 0, None
            return self.next()
        self.consumed += 1
        return row

    def position(self) -> dict:
        return {"shards": str(self.folder), "set_hash": self.set_hash, "epoch": self.epoch, "consumed": self.consumed}

    def restore(self, position: dict) -> None:
        if position["set_hash"] != self.set_hash:
            raise ShardError(f"the checkpoint read shard set {position['shards']} with other files than "
                             f"{self.folder} holds now; resume on the same shards or start a new run")
        self.epoch, self.consumed, self._rows = position["epoch"], position["consumed"], None


def media_inputs(rows: Sequence[dict], vocab: Vocabulary, tokenizers: dict[str, MediaTokenizer]
                 ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None]:
    """Each row's media span as (global ids (num_blocks, N), context and query state inputs
    (num_blocks, N, 2C), `RDPMQuantizer.block_inputs`), None for a text-only row; the inputs come
    from the row's tokenizer, one call per range."""
    out: list = [None] * len(rows)
    for name in {row["media"] for row in rows} - {""}:
        tokenizer = tokenizers[name]
        indices = [i for i, row in enumerate(rows) if row["media"] == name]
        ids = torch.tensor([rows[i]["media_ids"] for i in indices], dtype=torch.long)
        ids = ids.reshape(len(indices), tokenizer.num_blocks, -1)
        with torch.no_grad():
            contexts, queries = tokenizer.quantizer.block_inputs(vocab.to_local(name, ids).to(tokenizer.device))
        for i, blocks, context, query in zip(indices, ids, contexts.cpu(), queries.cpu()):
            out[i] = (blocks, context, query)
    return out


class DocumentRecipe:
    """How a shard row becomes a training document: caption dropout, which generated blocks it
    holds and in which groups their cells are drawn (`rounds` per media range, one round per
    block where not given) and what a read-out block's positions take as input ids (and, for a
    vocabulary with a read-out patch, the media ranges' `latent_shapes`)."""

    def __init__(self, vocab: Vocabulary, media_order: str, caption_dropout: float, first_step_fraction: float,
                 rounds: dict[str, Sequence[int]] | None = None, round_schedule: str = "cosine",
                 cell_order: CellOrder = "random", readout: ReadOut = "clean",
                 latent_shapes: dict[str, Sequence[int]] | None = None):
        self.vocab, self.media_order = vocab, media_order
        self.caption_dropout, self.first_step_fraction = caption_dropout, first_step_fraction
        self.rounds, self.round_schedule, self.cell_order = dict(rounds or {}), round_schedule, cell_order
        self.readout, self.latent_shapes = readout, dict(latent_shapes or {})

    def bounds(self, name: str, num_blocks: int, num_positions: int) -> list[list[int]]:
        """The groups (`streams.group_bounds`) of the generated blocks of range `name`."""
        rounds = self.rounds.get(name) or [1] * (num_blocks - 1)
        return [group_bounds(num_positions, r, self.round_schedule) for r in rounds]

    def document(self, task: str, text_ids: Sequence[int], media_name: str,
                 media: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None, rng: random.Random,
                 heldout: bool = False) -> Stream:
        """The document of a row's text and its `media_inputs`; a held-out one keeps its caption
        and every generated block."""
        drop = not heldout and rng.random() < self.caption_dropout
        if media is None:
            return task_document(self.vocab, self.media_order, task, text_ids)
        blocks, contexts, queries = media
        bounds = None
        if task.startswith("text_to_") and self.media_order == "timestep":
            bounds = self.bounds(media_name, *blocks.shape)
            if not heldout and rng.random() < self.first_step_fraction:
                bounds = bounds[:1]
        return task_document(self.vocab, self.media_order, task, text_ids, media_name, blocks, contexts, queries,
                             bounds, drop_text=drop, order=self.cell_order, readout=self.readout,
                             latent_shape=self.latent_shapes.get(media_name, ()))


class MixtureBatches:
    """Training batches for one rank: documents drawn from the mixture's entries by weight."""

    def __init__(self, entries: Sequence[MixtureEntry], vocab: Vocabulary, tokenizers: dict[str, MediaTokenizer],
                 documents: DocumentRecipe, batch_size: int, seed: int, buffer: int, rank: int = 0, world: int = 1):
        self.entries, self.vocab, self.tokenizers, self.documents = list(entries), vocab, tokenizers, documents
        self.batch_size, self.seed, self.rank, self.world = batch_size, seed, rank, world
        self.weights = [e.mix.weight for e in self.entries]
        self.streams = [ShardStream(e.mix.shards, vocab, seed + i, buffer, rank, world)
                        for i, e in enumerate(self.entries)]

    def batch(self, step: int, micro: int) -> tuple[Batch, list[tuple[str, str]]]:
        """The documents of one micro-step, packed, and what each was: (task, ``key#draw``)."""
        rng = random.Random(hash((self.seed, step, micro, self.rank)))
        picks = rng.choices(range(len(self.entries)), self.weights, k=self.batch_size)
        rows = [self.streams[p].next() for p in picks]
        docs = [self.documents.document(self.entries[p].task, row["text_ids"], row["media"], media, rng)
                for p, row, media in zip(picks, rows, media_inputs(rows, self.vocab, self.tokenizers))]
        batch = collate(pack(docs, max(len(d) for d in docs)), pad_id=self.vocab.special_id("<pad>"))
        return batch, [(self.entries[p].task, f"{row['key']}#{row['draw']}") for p, row in zip(picks, rows)]

    def state_dict(self) -> dict:
        """This rank's data position; it only holds for the same shard sets split over as many processes."""
        return {"world": self.world, "streams": [stream.position() for stream in self.streams]}

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict):
            raise UnitokError("the checkpoint's data position is of an older unitok (no world size or shard hashes); "
                             "start the run again in a new output folder")
        if state["world"] != self.world:
            raise UnitokError(f"the checkpoint was written by {state['world']} processes, this run has {self.world}: "
                             "each rank's rows depend on that number; resume with the same number of processes")
        if len(state["streams"]) != len(self.streams):
            raise UnitokError(f"the checkpoint has {len(state['streams'])} data streams, this mixture "
                             f"{len(self.streams)}")
        for stream, position in zip(self.streams, state["streams"]):
            stream.restore(position)


def heldout_rows(entries: Sequence[MixtureEntry], vocab: Vocabulary, count: int) -> dict[str, list[dict]]:
    """Rows for every task with held-out sets, `count` in all, split evenly by task and, within a
    task, evenly by set (the ``text`` task reads the captions of every modality)."""
    tasks = {}
    for entry in entries:
        if entry.mix.heldout and entry.mix.weight > 0:
            tasks.setdefault(entry.task, []).append(entry.mix.heldout)
    per_task = max(1, count // max(len(tasks), 1))
    rows = {}
    for task, folders in tasks.items():
        rows[task] = []
        for i, folder in enumerate(folders):
            dataset = load_shards(folder, vocab)
            share = -(-(per_task - len(rows[task])) // (len(folders) - i))  # a short set leaves the rest to the next
            rows[task] += dataset.select(range(min(share, len(dataset)))).to_list()
    return rows


def heldout_documents(entries: Sequence[MixtureEntry], vocab: Vocabulary, tokenizers: dict[str, MediaTokenizer],
                      documents: DocumentRecipe, count: int) -> dict[str, list[Stream]]:
    """Held-out documents of `heldout_rows`: every caption and generated block."""
    no_draws = random.Random(0)  # a held-out document draws nothing
    return {task: [documents.document(task, row["text_ids"], row["media"], media, no_draws, heldout=True)
                   for row, media in zip(rows, media_inputs(rows, vocab, tokenizers))]
            for task, rows in heldout_rows(entries, vocab, count).items()}
