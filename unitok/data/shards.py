"""Token shards: the format of a shard set, and reading, verifying and inspecting one.

Layout of a shard set (written by `shard_writer.ShardWriter`)::

    shard-00000.parquet …      rows: key, caption, task, text_ids, media, media_ids, seed, draw
    records/shard-00000.json   one per finished shard: rank, rows, items, source range, errors, sha256
    vocabulary.json            the vocabulary every id refers to
    manifest.json              identity (vocabulary and tokenizer hashes, settings, source),
                               the finished shards, totals
    errors.jsonl               one line per skipped input: key and reason
    README.md                  a dataset card, so that `datasets.load_dataset(folder)` reads the parquet
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from unitok.core.config import config_hash
from unitok.core.errors import UnitokError
from unitok.tokenizer.vocabulary import Vocabulary

# Of the rows and manifest; a shard set of another format is refused (re-tokenize it).
# 4: rows of datasets keyed by file name where a file exists, corpus lines by line number.
FORMAT = 4

MANIFEST_NAME = "manifest.json"

ERRORS_NAME = "errors.jsonl"

RECORDS_DIR = "records"

SCHEMA = pa.schema([
    ("key", pa.string()),
    ("caption", pa.string()),
    ("task", pa.string()),
    ("text_ids", pa.list_(pa.int32())),
    ("media", pa.string()),  # the media range name, "" for a text-only item
    ("media_ids", pa.list_(pa.int32())),  # global ids, blocks [k_T … k_0] flattened (num_blocks · N)
    ("seed", pa.int64()),  # the RDPM noise seed of this row's draw
    ("draw", pa.int32()),
])


class ShardError(UnitokError):
    """A shard set that does not belong with this tokenizer/vocabulary, or a bad item under --strict."""


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.parquet"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(shard_dir: str | Path) -> dict:
    path = Path(shard_dir) / MANIFEST_NAME
    if not path.is_file():
        raise ShardError(f"{shard_dir}: no {MANIFEST_NAME}; not a unitok shard set (run `unitok tokenize`)")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise ShardError(f"{shard_dir}: shards of format {manifest.get('format', 1)}, this unitok reads format "
                         f"{FORMAT}; tokenize the source again")
    if not manifest.get("complete"):
        raise ShardError(f"{shard_dir}: tokenization did not finish; re-run the same `unitok tokenize` command")
    return manifest


def shard_files(shard_dir: str | Path) -> list[Path]:
    """The set's parquet files in shard order (a shard of only bad inputs has none)."""
    manifest = read_manifest(shard_dir)
    return [Path(shard_dir) / r["file"] for _, r in sorted(manifest["shards"].items()) if r["file"]]


def shard_set_hash(shard_dir: str | Path) -> str:
    """A hash of a finished set's files: what training checkpoints record of the data they read."""
    return config_hash({name: record.get("sha256") for name, record in read_manifest(shard_dir)["shards"].items()})


def load_shards(shard_dir: str | Path, vocab: Vocabulary, streaming: bool = False):
    """The shard set as a `datasets.Dataset` (or `IterableDataset`), refused unless made with `vocab`."""
    import datasets

    vocab.require_holds(Vocabulary.load(shard_dir), f"shard set {shard_dir}")
    files = [str(f) for f in shard_files(shard_dir)]
    return datasets.load_dataset("parquet", data_files=files, split="train", streaming=streaming)


# --- inspect and verify ----------------------------------------------------------------------------

def _token_lengths(table: pa.Table) -> list[int]:
    import pyarrow.compute as pc

    text = pc.list_value_length(table["text_ids"]).to_pylist()
    media = pc.list_value_length(table["media_ids"]).to_pylist()
    return [t + m for t, m in zip(text, media)]


def inspect_shards(shard_dir: str | Path, bins: int = 8) -> dict:
    """Counts, tokenizers, tasks, a token-length histogram and the errors of a finished shard set."""
    import numpy as np

    manifest = read_manifest(shard_dir)
    tasks, media, lengths = Counter(), Counter(), []
    for path in shard_files(shard_dir):
        table = pq.read_table(path, columns=["task", "media", "text_ids", "media_ids"])
        tasks.update(table["task"].to_pylist())
        media.update(table["media"].to_pylist())
        lengths += _token_lengths(table)
    counts, edges = np.histogram(lengths, bins=bins) if lengths else ([], [])
    return {"dir": str(shard_dir), "source": manifest["source"], "tokenizers": manifest["tokenizers"],
            "vocabulary_hash": manifest["vocabulary_hash"], "settings": manifest["settings"],
            "totals": manifest["totals"], "tasks": dict(tasks), "media": dict(media),
            "token_length_histogram": [{"from": int(a), "to": int(b), "rows": int(c)}
                                       for a, b, c in zip(edges[:-1], edges[1:], counts)]}


def verify_shards(shard_dir: str | Path) -> list[str]:
    """Re-read every shard: file present, sha256 and row count as recorded, every id inside its
    vocabulary range, no (key, draw) twice. Returns the problems found (empty: the set is sound)."""
    shard_dir = Path(shard_dir)
    manifest, vocab = read_manifest(shard_dir), Vocabulary.load(shard_dir)
    problems, seen = [], set()
    for name, record in sorted(manifest["shards"].items()):
        if not record["file"]:
            continue
        path = shard_dir / record["file"]
        if not path.is_file():
            problems.append(f"{name}: file missing")
            continue
        if file_sha256(path) != record["sha256"]:
            problems.append(f"{name}: sha256 differs from the manifest (the file changed after it was written)")
        table = pq.read_table(path)
        if table.num_rows != record["rows"]:
            problems.append(f"{name}: {table.num_rows} rows, the manifest says {record['rows']}")
        problems += [f"{name}: {p}" for p in _id_problems(table, vocab)]
        for key, draw in zip(table["key"].to_pylist(), table["draw"].to_pylist()):
            if (key, draw) in seen:
                problems.append(f"{name}: item {key!r} draw {draw} appears twice")
            seen.add((key, draw))
    return problems


def _id_problems(table: pa.Table, vocab: Vocabulary) -> list[str]:
    import pyarrow.compute as pc

    problems = []
    text = vocab.range("text")
    checks = [("text_ids", text.offset, text.end, table)]
    for name in set(table["media"].to_pylist()) - {""}:
        r = vocab.range(name)
        checks.append(("media_ids", r.offset, r.end, table.filter(pc.equal(table["media"], name))))
    for column, low, high, rows in checks:
        ids = pc.list_flatten(rows[column])
        if len(ids) and (pc.min(ids).as_py() < low or pc.max(ids).as_py() >= high):
            problems.append(f"{column} outside their vocabulary range [{low}, {high})")
    return problems
