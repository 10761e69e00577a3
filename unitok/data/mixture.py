"""The training mixture: rows streamed from a weighted list of shard sets, each rank its own.

Each mixture entry is a shard set (`unitok tokenize --out`) with a task and a weight. Its rows
stream through `datasets` (parquet, ``streaming=True``): `split_dataset_by_node` gives every
rank disjoint rows, and a seeded shuffle buffer (reseeded per epoch) orders them. `MixtureRows`
draws each row's entry by weight with the generator of its batch, then takes that entry's next
row. The data position is how many rows each stream has consumed in its epoch: saved with every
checkpoint (with the world size and a hash of each set's files, the two things it depends on),
replayed on resume, so a resumed run sees exactly the rows an uninterrupted one would.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Iterator, Sequence

from unitok.core.config import Config, bounded
from unitok.core.errors import UnitokError
from unitok.data.shards import ShardError, load_shards, read_manifest, shard_set_hash
from unitok.data.tasks import TASK_FORMS, is_task, task_modality
from unitok.tokenizer.media_tokenizer import MediaTokenizer
from unitok.tokenizer.vocabulary import Vocabulary

COLUMNS = ["key", "draw", "text_ids", "media", "media_ids"]


@dataclass(frozen=True)
class ShardMix(Config):
    """One shard set in a training mixture (a recipe's ``data:`` list)."""

    shards: str  # a shard set folder, written by `unitok tokenize`
    weight: float = bounded(1.0, ge=0)  # share of documents drawn from it (weights are normalised)
    task: str | None = None  # text_to_<modality>, <modality>_to_text or text; default: the set's own
    heldout: str | None = None  # a shard set of the same kind for held-out loss and early stopping

    def rules(self):
        yield self.task is None or is_task(self.task), "task", f"expected {TASK_FORMS}, got {self.task!r}"


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


class MixtureRows:
    """Rows for one rank, each from an entry of the mixture drawn by weight."""

    def __init__(self, entries: Sequence[MixtureEntry], vocab: Vocabulary, seed: int, buffer: int, rank: int = 0,
                 world: int = 1):
        self.entries, self.world = list(entries), world
        self.weights = [e.mix.weight for e in self.entries]
        self.streams = [ShardStream(e.mix.shards, vocab, seed + i, buffer, rank, world)
                        for i, e in enumerate(self.entries)]

    def draw(self, rng: random.Random, count: int) -> list[tuple[MixtureEntry, dict]]:
        """`count` (entry, row) pairs, the entries drawn by weight with `rng`."""
        picks = rng.choices(range(len(self.entries)), self.weights, k=count)
        return [(self.entries[p], self.streams[p].next()) for p in picks]

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
