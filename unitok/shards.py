"""Token shards: `datasets`-readable parquet files plus a manifest, written atomically.

Layout of a shard set::

    shard-00000.parquet …      rows: key, caption, text_ids, media, media_ids, seed
    vocabulary.json            the vocabulary every id refers to
    manifest.json              vocabulary hash, tokenizer hashes, settings, finished shards
    errors.jsonl               one line per skipped input: key and reason

Items are cut into shards of a fixed count in source order. A shard is written to a temporary
name and renamed when complete, then recorded in the manifest (also written atomically), so a
killed run resumes by skipping recorded shards: no duplicates, no half-written files.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm

from .adapters import MediaError
from .media_tokenizer import MediaTokenizer
from .sources import SourceItem
from .text_bpe import TextBPE
from .vocabulary import Vocabulary

MANIFEST_NAME = "manifest.json"
ERRORS_NAME = "errors.jsonl"
SCHEMA = pa.schema([
    ("key", pa.string()),
    ("caption", pa.string()),
    ("text_ids", pa.list_(pa.int32())),
    ("media", pa.string()),
    ("media_ids", pa.list_(pa.int32())),  # global ids, blocks [k_T … k_0] flattened (num_blocks · N)
    ("seed", pa.int64()),
])


class ShardError(ValueError):
    """A shard set that does not belong with this tokenizer/vocabulary, or a bad item under --strict."""


@dataclass(frozen=True)
class TokenizeSettings:
    items_per_shard: int = 1024
    seed: int = 0  # base of every item's noise seed
    noise_draws: int = 1  # RDPM tokens depend on ε: K draws per item, each its own row
    batch_size: int = 64
    require_caption: bool = True


def item_seed(base_seed: int, key: str, draw: int) -> int:
    """The noise seed of one draw of one item: depends on nothing but these, so runs agree."""
    digest = hashlib.sha256(f"{base_seed}:{draw}:{key}".encode()).digest()
    return int.from_bytes(digest[:7], "little")


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


class ShardWriter:
    def __init__(self, out_dir: str | Path, tokenizer: MediaTokenizer, text_bpe: TextBPE, vocab: Vocabulary,
                 settings: TokenizeSettings, strict: bool = False):
        self.out_dir = Path(out_dir)
        self.tokenizer, self.text_bpe, self.vocab, self.settings = tokenizer, text_bpe, vocab, settings
        self.strict = strict
        self.identity = {
            "vocabulary_hash": vocab.hash,
            "tokenizers": {tokenizer.name: tokenizer.content_hash(), "text": text_bpe.content_hash()},
            "settings": vars(settings) | {"media": tokenizer.name},
        }
        self.manifest = self._open()

    def _open(self) -> dict:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / MANIFEST_NAME
        if path.is_file():
            manifest = json.loads(path.read_text())
            existing = {k: manifest.get(k) for k in self.identity}
            if existing != self.identity:
                changed = [k for k in self.identity if existing[k] != self.identity[k]]
                raise ShardError(
                    f"{self.out_dir} holds shards made with other {', '.join(changed)}; "
                    "use a new --out directory or delete it"
                )
            return manifest
        self.vocab.save(self.out_dir)
        manifest = {**self.identity, "shards": {}, "complete": False}
        _write_json_atomic(path, manifest)
        return manifest

    def write(self, items: Iterable[SourceItem]) -> dict:
        """Tokenize every shard not yet recorded; returns the manifest's totals."""
        size = self.settings.items_per_shard
        with tqdm(desc=f"tokenize {self.out_dir.name}", unit="item") as progress:
            for index, chunk in enumerate(_chunks(items, size)):
                name = f"shard-{index:05d}.parquet"
                if name in self.manifest["shards"]:
                    progress.update(len(chunk))
                    continue
                rows, errors = self._tokenize(chunk, progress)
                if rows:  # a chunk of only bad inputs leaves no file (empty parquet trips readers)
                    tmp = self.out_dir / (name + ".tmp")
                    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), tmp)
                    os.replace(tmp, self.out_dir / name)
                self.manifest["shards"][name] = {"items": len(rows), "errors": errors,
                                                 "first_key": chunk[0].key, "last_key": chunk[-1].key}
                _write_json_atomic(self.out_dir / MANIFEST_NAME, self.manifest)
        return self._finish()

    def _tokenize(self, chunk: Sequence[SourceItem], progress) -> tuple[list[dict], list[dict]]:
        loaded, errors = [], []
        for item in chunk:
            try:
                if self.settings.require_caption and not (item.caption or "").strip():
                    raise MediaError("missing caption")
                loaded.append((item, self.tokenizer.adapter.to_tensor(item.load())))
            except MediaError as err:
                if self.strict:
                    raise ShardError(f"{item.key}: {err}") from None
                errors.append({"key": item.key, "reason": str(err)})
            progress.update(1)
        rows = []
        for draw in range(self.settings.noise_draws):
            for batch in _chunks(loaded, self.settings.batch_size):
                seeds = [item_seed(self.settings.seed, item.key, draw) for item, _ in batch]
                ids = self.tokenizer.encode_tensor(torch.stack([x for _, x in batch]), seeds)
                media_ids = self.vocab.to_global(self.tokenizer.name, ids.flatten(1).cpu())
                for (item, _), seed, m in zip(batch, seeds, media_ids):
                    text = self.vocab.to_global("text", torch.tensor(self.text_bpe.encode(item.caption or ""), dtype=torch.long))
                    rows.append({"key": item.key, "caption": item.caption, "text_ids": text.tolist(),
                                 "media": self.tokenizer.name, "media_ids": m.tolist(), "seed": seed})
        return rows, errors

    def _finish(self) -> dict:
        shards = self.manifest["shards"]
        errors = [e for s in shards.values() for e in s["errors"]]
        tmp = self.out_dir / (ERRORS_NAME + ".tmp")
        tmp.write_text("".join(json.dumps(e) + "\n" for e in errors))
        os.replace(tmp, self.out_dir / ERRORS_NAME)
        self.manifest["totals"] = {"shards": len(shards), "items": sum(s["items"] for s in shards.values()),
                                   "errors": len(errors)}
        self.manifest["complete"] = True
        _write_json_atomic(self.out_dir / MANIFEST_NAME, self.manifest)
        return self.manifest["totals"]


def _chunks(iterable: Iterable, size: int) -> Iterator[list]:
    iterator = iter(iterable)
    while chunk := list(islice(iterator, size)):
        yield chunk


def read_manifest(shard_dir: str | Path) -> dict:
    path = Path(shard_dir) / MANIFEST_NAME
    if not path.is_file():
        raise ShardError(f"{shard_dir}: no {MANIFEST_NAME}; not a unitok shard set (run `unitok tokenize`)")
    manifest = json.loads(path.read_text())
    if not manifest.get("complete"):
        raise ShardError(f"{shard_dir}: tokenization did not finish; re-run the same `unitok tokenize` command")
    return manifest


def load_shards(shard_dir: str | Path, vocab: Vocabulary):
    """The shard set as a `datasets.Dataset`, refused unless it was made with `vocab`."""
    import datasets

    shard_dir = Path(shard_dir)
    manifest = read_manifest(shard_dir)
    vocab.require_same(Vocabulary.load(shard_dir), f"shard set {shard_dir}")
    files = [str(shard_dir / name) for name, shard in sorted(manifest["shards"].items()) if shard["items"]]
    return datasets.load_dataset("parquet", data_files=files, split="train")
