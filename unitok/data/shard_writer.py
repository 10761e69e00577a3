"""Writing token shards: a `Source` tokenized into a shard set (format: `shards.py`), atomically, in parallel.

Shard i holds source items [i·S, (i+1)·S) (S = items_per_shard), whoever tokenizes it: a local
worker (``--workers N``) or a rank under ``accelerate launch`` (rank r takes shards r, r+W, …).
A shard is written to a temporary name and renamed when complete, then its record is written
(also atomically). Re-running skips shards with a record, so a killed run finishes the rest with
no duplicates and no half-written files; the main process merges the records into the manifest.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Callable, Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from accelerate.utils import gather_object
from tqdm.auto import tqdm

from unitok.core.atomic import temporary_path, write_text_atomic
from unitok.core.config import Config, bounded
from unitok.core.runtime import processes, torch_device
from unitok.core.seeds import MAX_SEED
from unitok.data.shards import (
    ERRORS_NAME,
    FORMAT,
    MANIFEST_NAME,
    RECORDS_DIR,
    SCHEMA,
    ShardError,
    file_sha256,
    read_manifest,
    shard_name,
)
from unitok.data.sources import Source, SourceItem
from unitok.data.tasks import task_modality
from unitok.tokenizer.adapters import MediaError
from unitok.tokenizer.media_tokenizer import MediaTokenizer
from unitok.tokenizer.text_bpe import TextBPE
from unitok.tokenizer.vocabulary import Vocabulary

DATASET_CARD_NAME = "README.md"

# Its `configs:` make `datasets.load_dataset(folder)` read the parquet shards; without it the JSON
# records are the most common file type and `datasets` would pick its json builder.
DATASET_CARD = """---
configs:
- config_name: default
  data_files:
  - split: train
    path: "shard-*.parquet"
tags:
- unitok
---

# unitok token shards

{rows} rows ({items} items, {tokens} tokens) tokenized by unitok: `manifest.json` says with which tokenizers and
settings, `vocabulary.json` maps the ids. Columns:
key, caption, task, text_ids, media, media_ids, seed, draw.

```python
import datasets
rows = datasets.load_dataset("path/to/this/folder", split="train")
```
"""


@dataclass(frozen=True)
class TokenizeSettings(Config):
    """What a shard set is tokenized with (a recipe's ``shards:`` section, `unitok tokenize`'s options)."""

    items_per_shard: int = bounded(1024, ge=1)
    seed: int = bounded(0, ge=0, lt=MAX_SEED)  # base of every item's noise seed
    noise_draws: int = bounded(1, ge=1)  # RDPM tokens depend on ε: K draws per item, each its own row
    batch_size: int = bounded(64, ge=1)
    require_caption: bool = True


def item_seed(base_seed: int, key: str, draw: int) -> int:
    """The noise seed of one draw of one item: depends on nothing but these, so runs agree."""
    digest = hashlib.sha256(f"{base_seed}:{draw}:{key}".encode()).digest()
    return int.from_bytes(digest[:7], "little")


def _write_json_atomic(path: Path, data: dict) -> None:
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


@dataclass
class ShardJob:
    """Everything that tokenizes one shard; forked workers inherit it (nothing is pickled)."""

    out_dir: Path
    source: Source
    tokenizer: MediaTokenizer | None  # None for a text-only corpus
    text_bpe: TextBPE
    vocab: Vocabulary
    settings: TokenizeSettings
    task: str
    strict: bool
    rank: int  # the accelerate process that writes this job's shards (recorded with each shard)

    @property
    def num_shards(self) -> int:
        return -(-len(self.source) // self.settings.items_per_shard)

    def item_range(self, index: int) -> range:
        size = self.settings.items_per_shard
        return range(index * size, min(len(self.source), (index + 1) * size))

    def record_path(self, index: int) -> Path:
        return self.out_dir / RECORDS_DIR / f"shard-{index:05d}.json"

    def run(self, index: int, progress: Callable[[int], None]) -> None:
        """Tokenize shard `index`, write it, then its record; both atomically."""
        items = [self.source[i] for i in self.item_range(index)]
        loaded, errors = [], []
        for item in items:
            try:
                loaded.append((item, self._load(item)))
            except MediaError as err:
                reason = str(err).removeprefix(f"{item.label}: ")  # the key already names the file
                if self.strict:
                    raise ShardError(f"{item.key}: {reason}") from None
                errors.append({"key": item.key, "reason": reason})
            progress(1)
        rows = self._rows(loaded)
        record = {"file": None, "rank": self.rank, "rows": len(rows), "items": len(loaded),
                  "source_items": [items[0].key, items[-1].key],
                  "source_range": [self.item_range(index).start, self.item_range(index).stop], "errors": errors}
        if rows:  # a shard of only bad inputs leaves no file (empty parquet trips readers)
            path = self.out_dir / shard_name(index)
            tmp = temporary_path(path)
            pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), tmp)
            os.replace(tmp, path)
            record |= {"file": path.name, "sha256": file_sha256(path),
                       "tokens": sum(len(r["text_ids"]) + len(r["media_ids"]) for r in rows)}
        _write_json_atomic(self.record_path(index), record)

    def _load(self, item: SourceItem) -> torch.Tensor | None:
        if item.caption is not None and not isinstance(item.caption, str):
            raise MediaError(f"caption is not text (a {type(item.caption).__name__})")
        if self.settings.require_caption and not (item.caption or "").strip():
            raise MediaError("missing caption" + (f" ({item.caption_problem})" if item.caption_problem else ""))
        return None if self.tokenizer is None else self.tokenizer.adapter.to_tensor(item.open())

    def _rows(self, loaded: list[tuple[SourceItem, torch.Tensor | None]]) -> list[dict]:
        rows = []
        for draw in range(self.settings.noise_draws if self.tokenizer else 1):
            for batch in _chunks(loaded, self.settings.batch_size):
                seeds = [item_seed(self.settings.seed, item.key, draw) for item, _ in batch]
                for (item, _), seed, media_ids in zip(batch, seeds, self._media_ids(batch, seeds)):
                    text = self.vocab.to_global("text", torch.tensor(self.text_bpe.encode(item.caption or ""),
                                                                     dtype=torch.long))
                    rows.append({"key": item.key, "caption": item.caption, "task": self.task,
                                 "text_ids": text.tolist(), "media": self.tokenizer.name if self.tokenizer else "",
                                 "media_ids": media_ids, "seed": seed, "draw": draw})
        return rows

    def _media_ids(self, batch: list[tuple[SourceItem, torch.Tensor | None]], seeds: list[int]) -> list[list[int]]:
        if self.tokenizer is None:
            return [[] for _ in batch]
        with torch.no_grad():
            ids = self.tokenizer.encode_tensor(torch.stack([x for _, x in batch]).to(self.tokenizer.device), seeds)
        return self.vocab.to_global(self.tokenizer.name, ids.flatten(1).cpu()).tolist()


class ShardWriter:
    """Tokenizes a `Source` into a shard set; `task` is what training does with its rows by default
    (``text_to_<modality>``, or ``text`` for a text-only corpus without a media tokenizer).

    `device` is where the tokenizer runs: ``cpu`` (the default, and what forked workers need), a
    torch device, or ``accelerator`` for the process's own (each rank's GPU under ``accelerate
    launch``). Its type is part of the set's identity: GPU kernels (TF32 convolutions) can give
    other codes than the CPU, and one set never mixes the two."""

    def __init__(self, out_dir: str | Path, tokenizer: MediaTokenizer | None, text_bpe: TextBPE, vocab: Vocabulary,
                 settings: TokenizeSettings, task: str | None = None, strict: bool = False, device: str = "cpu"):
        self.out_dir = Path(out_dir)
        self.tokenizer, self.text_bpe, self.settings = tokenizer, text_bpe, settings
        self.vocab = vocab.with_state_widths(None)  # ids only: a model's input-only state rows are not the set's
        self.task = task or (f"text_to_{tokenizer.modality}" if tokenizer else "text")
        modality = task_modality(self.task)  # refuses an unknown task
        if modality not in (None, tokenizer.modality if tokenizer else None):
            raise ShardError(f"task {self.task}: these rows hold {tokenizer.modality + ' and ' if tokenizer else ''}"
                             f"text, not {modality}")
        self.strict, self.device = strict, device

    def identity(self, source: Source, device: torch.device) -> dict:
        """What must match for a re-run to add to an existing shard set."""
        tokenizers = {"text": self.text_bpe.content_hash()}
        if self.tokenizer is not None:
            tokenizers[self.tokenizer.name] = self.tokenizer.content_hash()
        return {"format": FORMAT, "vocabulary_hash": self.vocab.hash, "tokenizers": tokenizers,
                "settings": vars(self.settings) | {"media": self.tokenizer.name if self.tokenizer else "",
                                                   "task": self.task, "device": device.type},
                "source": source.describe()}

    def write(self, source: Source, workers: int = 1) -> dict:
        """Tokenize every shard of `source` that has no record yet; returns the manifest's totals."""
        if len(source) == 0:
            raise ShardError("the source has no items")
        if workers < 1:
            raise ShardError(f"workers: expected an integer >= 1, got {workers}")
        state = processes()
        device = state.device if self.device == "accelerator" else torch_device(self.device)
        if workers > 1 and device.type != "cpu":
            raise ShardError("--workers > 1 forks CPU processes; on GPUs run one process per device "
                             "(accelerate launch … --device accelerator)")
        identity = self.identity(source, device)
        if len({json.dumps(i, sort_keys=True) for i in gather_object([identity])}) > 1:  # every rank joins
            raise ShardError("the ranks see different sources or settings (copies of the data with other "
                             "files or modification times?); give every rank the same data")
        self._check(identity)  # the same answer on every rank, before any barrier: all stop with one reason
        if self.tokenizer is not None:
            self.tokenizer.to(device)
        job = ShardJob(self.out_dir, source, self.tokenizer, self.text_bpe, self.vocab, self.settings, self.task,
                       self.strict, state.process_index)
        with state.main_process_first():  # the main process creates the set; the others then see it
            self._open(identity, clean=state.is_main_process)
        if self.strict:
            self._check_recorded_errors(job)
        todo = [i for i in range(state.process_index, job.num_shards, state.num_processes)
                if not job.record_path(i).is_file()]
        total = sum(len(job.item_range(i)) for i in todo)
        with tqdm(total=total, desc=f"tokenize {self.out_dir.name}", unit="item",
                  disable=not state.is_local_main_process) as progress:
            run_shards(job, todo, workers, progress.update)
        state.wait_for_everyone()
        if state.is_main_process:
            self._finish(job)
        state.wait_for_everyone()
        return read_manifest(self.out_dir)["totals"]

    def _check(self, identity: dict) -> None:
        """Refuse an output folder made with another identity, naming what differs."""
        path = self.out_dir / MANIFEST_NAME
        if not path.is_file():
            return
        manifest = json.loads(path.read_text())
        changed = [_difference(key, manifest.get(key), identity[key]) for key in identity
                   if manifest.get(key) != identity[key]]
        if changed:
            raise ShardError(f"{self.out_dir} holds shards made with other {'; '.join(changed)}; "
                             "use a new --out directory or delete it")

    def _open(self, identity: dict, clean: bool) -> None:
        (self.out_dir / RECORDS_DIR).mkdir(parents=True, exist_ok=True)
        path = self.out_dir / MANIFEST_NAME
        if clean and not path.is_file():
            self.vocab.save(self.out_dir)
            _write_json_atomic(path, {**identity, "complete": False})
        if clean:  # leftovers of a killed run: never records, so their shards are redone
            for tmp in [*self.out_dir.glob("*.tmp"), *(self.out_dir / RECORDS_DIR).glob("*.tmp")]:
                tmp.unlink(missing_ok=True)

    def _check_recorded_errors(self, job: ShardJob) -> None:
        """Under --strict, a bad item recorded by an earlier, lenient run fails like a new one."""
        for index in range(job.num_shards):
            path = job.record_path(index)
            errors = json.loads(path.read_text())["errors"] if path.is_file() else []
            if errors:
                raise ShardError(f"{errors[0]['key']}: {errors[0]['reason']} (recorded by an earlier run)")

    def _finish(self, job: ShardJob) -> None:
        missing = [i for i in range(job.num_shards) if not job.record_path(i).is_file()]
        if missing:
            raise ShardError(f"{self.out_dir}: shards {missing[:5]} were not written; re-run the same command")
        records = {shard_name(i): json.loads(job.record_path(i).read_text()) for i in range(job.num_shards)}
        errors = [e for r in records.values() for e in r["errors"]]
        write_text_atomic(self.out_dir / ERRORS_NAME, "".join(json.dumps(e) + "\n" for e in errors))
        manifest = json.loads((self.out_dir / MANIFEST_NAME).read_text())
        manifest |= {"shards": records, "complete": True, "totals": {
            "shards": sum(1 for r in records.values() if r["file"]),
            "rows": sum(r["rows"] for r in records.values()),
            "items": sum(r["items"] for r in records.values()),
            "tokens": sum(r.get("tokens", 0) for r in records.values()),
            "source_items": len(job.source),
            "errors": len(errors),
            "error_reasons": dict(Counter(error_kind(e["reason"]) for e in errors).most_common()),
        }}
        write_text_atomic(self.out_dir / DATASET_CARD_NAME, DATASET_CARD.format(**manifest["totals"]))
        _write_json_atomic(self.out_dir / MANIFEST_NAME, manifest)


def _difference(key: str, old, new) -> str:
    """``settings (seed 0 → 1)``: a differing identity field with its differing sub-fields."""
    if isinstance(old, dict) and isinstance(new, dict):
        fields = [f"{k} {old.get(k)!r} → {new.get(k)!r}" for k in {**old, **new} if old.get(k) != new.get(k)]
        return f"{key} ({', '.join(fields)})"
    return f"{key} ({old!r} → {new!r})"


def error_kind(reason: str) -> str:
    """A reason without its details, for summaries: "not a readable image", "missing caption", …"""
    return reason.split(" (", 1)[0]


# --- parallel work -------------------------------------------------------------------------------

_WORKER: dict = {}


def run_shards(job: ShardJob, indices: list[int], workers: int, progress: Callable[[int], None]) -> None:
    """Run `job` on every shard index: in this process, or in `workers` forked processes that split
    the CPU threads between them. Stops at the first error (a bad item under --strict)."""
    if workers == 1 or len(indices) <= 1:
        for index in indices:
            job.run(index, progress)
        return
    if torch.cuda.is_initialized():
        raise ShardError("--workers > 1 forks CPU processes; on a GPU use one worker per device (accelerate launch)")
    context = multiprocessing.get_context("fork")
    counts = context.SimpleQueue()
    threads = max(1, torch.get_num_threads() // workers)
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker,
                             initargs=(job, counts, threads)) as pool:
        pending = {pool.submit(_run_in_worker, index) for index in indices}
        try:
            while pending:
                done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                while not counts.empty():
                    progress(counts.get())
                for future in done:
                    future.result()
        finally:
            for future in pending:
                future.cancel()
    while not counts.empty():
        progress(counts.get())


def _start_worker(job: ShardJob, counts, threads: int) -> None:
    torch.set_num_threads(threads)
    _WORKER.update(job=job, counts=counts)


def _run_in_worker(index: int) -> None:
    _WORKER["job"].run(index, _WORKER["counts"].put)


def _chunks(iterable: Iterable, size: int) -> Iterator[list]:
    iterator = iter(iterable)
    while chunk := list(islice(iterator, size)):
        yield chunk
