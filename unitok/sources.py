"""Where media items come from: folders with a caption manifest, or Hugging Face `imagefolder`.

A source yields `SourceItem`s in a fixed order; each knows how to load its own media, so a
corrupt file fails on its own item (reported, skipped) and never on the whole source.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from .adapters import MediaError

CAPTION_COLUMNS = ("caption", "text")
FILE_COLUMNS = ("file", "file_name", "path")


class SourceError(ValueError):
    """The source as a whole is unusable (missing manifest, no file column, …)."""


@dataclass
class SourceItem:
    key: str  # stable id: the file path relative to the folder, or the dataset row index
    caption: str | None
    load: Callable[[], Any]  # returns the media object or a path the adapter can load


def read_caption_manifest(path: Path) -> list[dict[str, str]]:
    """Rows of a JSONL or CSV manifest; names the line on a malformed JSONL row."""
    if not path.is_file():
        raise SourceError(f"{path}: caption manifest not found")
    if path.suffix == ".csv":
        with path.open(newline="") as f:
            return list(csv.DictReader(f))
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise SourceError(f"{path}:{number}: not valid JSON ({err.msg})") from None
    return rows


def _column(row: dict, names: tuple[str, ...]) -> Any:
    return next((row[n] for n in names if row.get(n) not in (None, "")), None)


def folder_items(folder: str | Path, captions: str | Path | None = None) -> Iterator[SourceItem]:
    """Media files listed in a caption manifest (`file,caption` JSONL/CSV).

    Without `captions`, the folder's own ``metadata.jsonl`` / ``metadata.csv`` (the
    `imagefolder` convention, column ``file_name``) is used.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise SourceError(f"{folder}: not a directory")
    manifest = Path(captions) if captions else _find_metadata(folder)
    rows = read_caption_manifest(manifest)
    if rows and _column(rows[0], FILE_COLUMNS) is None:
        raise SourceError(f"{manifest}: no file column (expected one of {FILE_COLUMNS})")
    for row in rows:
        relative = str(_column(row, FILE_COLUMNS))
        path = folder / relative
        yield SourceItem(key=relative, caption=_column(row, CAPTION_COLUMNS), load=lambda p=path: p)


def _find_metadata(folder: Path) -> Path:
    for name in ("metadata.jsonl", "metadata.csv", "captions.jsonl", "captions.csv"):
        if (folder / name).is_file():
            return folder / name
    raise SourceError(f"{folder}: no caption manifest; pass --captions FILE or add metadata.jsonl")


def dataset_items(name: str, data_dir: str | None, split: str, media_column: str,
                  text_column: str | None) -> Iterator[SourceItem]:
    """Rows of a Hugging Face `datasets` dataset (e.g. ``imagefolder``), media left undecoded so
    that a corrupt file fails on its own row."""
    import datasets

    try:
        ds = datasets.load_dataset(name, data_dir=data_dir, split=split)
    except Exception as err:  # datasets raises many types; the reason is what matters
        raise SourceError(f"cannot load dataset {name!r} (data_dir={data_dir}): {err}") from None
    if media_column not in ds.column_names:
        raise SourceError(f"dataset {name!r} has no column {media_column!r}; it has {ds.column_names}")
    if isinstance(ds.features[media_column], datasets.Image):
        ds = ds.cast_column(media_column, datasets.Image(decode=False))
    for index, row in enumerate(ds):
        caption = row.get(text_column) if text_column else _column(row, CAPTION_COLUMNS)
        yield SourceItem(key=str(index), caption=caption, load=lambda m=row[media_column]: _undecoded(m))


def _undecoded(media: Any) -> Any:
    """An undecoded `datasets` Image cell ({"bytes", "path"}) -> something the adapter loads."""
    if isinstance(media, dict):
        if media.get("bytes") is not None:
            return io.BytesIO(media["bytes"])
        if media.get("path"):
            return media["path"]
        raise MediaError("dataset cell has neither bytes nor path")
    return media
