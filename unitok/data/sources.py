"""Where items come from: media folders, Hugging Face `datasets`, or text-only corpora.

A source is a sized, indexable and picklable list of `SourceItem`s in a fixed order, so that
shard i always holds the same items, whichever worker or rank tokenizes it. Items carry their
media undecoded (a path or bytes): a corrupt file fails on its own item (reported, skipped),
never on the whole source.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from unitok.core.errors import UnitokError
from unitok.tokenizer.adapters import AudioAdapter, ImageAdapter, MediaError, VideoAdapter

CAPTION_COLUMNS = ("caption", "text")
FILE_COLUMNS = ("file", "file_name", "path")
MANIFEST_NAMES = ("metadata.jsonl", "metadata.csv", "captions.jsonl", "captions.csv")
MEDIA_EXTENSIONS = frozenset(ImageAdapter.file_extensions + AudioAdapter.file_extensions + VideoAdapter.file_extensions)


class SourceError(UnitokError):
    """The source as a whole is unusable (missing manifest, no file column, …)."""


@dataclass(frozen=True)
class SourceItem:
    key: str  # stable id: the file path relative to the folder, the dataset row index, the corpus line
    caption: str | None
    media: Any = None  # a path, undecoded bytes, or None for a text-only item

    @property
    def label(self) -> str:
        """How errors name the media: its path, or the item's key for media held as bytes."""
        return self.key if isinstance(self.media, bytes) else str(self.media)

    def open(self) -> Any:
        """What an adapter's `to_tensor` takes: a path or an open binary file."""
        if self.media is None:
            raise MediaError("no media")
        return _LabelledBytes(self.media, self.label) if isinstance(self.media, bytes) else self.media


class _LabelledBytes(io.BytesIO):
    """In-memory media whose errors read ``<key>: reason``, not a BytesIO repr that differs per run."""

    def __init__(self, data: bytes, label: str):
        super().__init__(data)
        self.label = label

    def __str__(self) -> str:
        return self.label


class Source:
    """A fixed list of items; subclasses say where it comes from (`describe`, part of a shard set's identity)."""

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, index: int) -> SourceItem:
        raise NotImplementedError

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def describe(self) -> dict:
        """Where the items come from and a fingerprint of their content (part of a shard set's identity;
        the item count is there too, so a refusal can say how the source changed)."""
        raise NotImplementedError


def fingerprint(parts: Iterable[Any]) -> str:
    """A short hash of a source's content, one part at a time (a corpus is never one big string)."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(json.dumps(part, default=str).encode() + b"\n")
    return digest.hexdigest()[:16]


class FolderSource(Source):
    """Media files of a folder with captions from a JSONL/CSV manifest (`file,caption`) or from
    sidecar ``.txt`` files (``cat.png`` + ``cat.txt``).

    Without `captions`, the folder's own ``metadata.jsonl`` / ``metadata.csv`` (the `imagefolder`
    convention, column ``file_name``) or ``captions.jsonl`` is used, else sidecar files.
    """

    def __init__(self, folder: str | Path, captions: str | Path | None = None):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise SourceError(f"{self.folder}: not a directory")
        manifest = Path(captions) if captions else next(
            (self.folder / n for n in MANIFEST_NAMES if (self.folder / n).is_file()), None)
        self.captions = str(manifest) if manifest else "sidecar .txt files"
        self.rows = _manifest_rows(manifest) if manifest else _sidecar_rows(self.folder)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> SourceItem:
        relative, caption = self.rows[index]
        return SourceItem(key=relative, caption=caption, media=self.folder / relative)

    def describe(self) -> dict:
        """The fingerprint covers the captions and every file's size and modification time (as
        `datasets` does for local files): a re-run over edited files is refused, not mixed in."""
        return {"folder": str(self.folder), "captions": self.captions, "items": len(self),
                "fingerprint": fingerprint((r, c, _file_signature(self.folder / r)) for r, c in self.rows)}


def _file_signature(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None  # missing: reported on its own item
    return stat.st_size, stat.st_mtime_ns


def _manifest_rows(path: Path) -> list[tuple[str, str | None]]:
    rows = read_table(path)
    if rows and _column(rows[0], FILE_COLUMNS) is None:
        raise SourceError(f"{path}: no file column (expected one of {FILE_COLUMNS})")
    return [(str(_column(row, FILE_COLUMNS)), _column(row, CAPTION_COLUMNS)) for row in rows]


def _sidecar_rows(folder: Path) -> list[tuple[str, str | None]]:
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in MEDIA_EXTENSIONS and p.is_file())
    if not files:
        raise SourceError(f"{folder}: no caption manifest (metadata.jsonl, captions.jsonl, …; or pass --captions) "
                          "and no media files with sidecar .txt captions")
    return [(str(p.relative_to(folder)), _read_sidecar(p.with_suffix(".txt"))) for p in files]


def _read_sidecar(path: Path) -> str | None:
    if not path.is_file():
        return None
    return path.read_text(errors="replace").strip() or None


def read_table(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSONL or CSV file; names the line of a malformed JSONL row."""
    if not path.is_file():
        raise SourceError(f"{path}: file not found")
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


class DatasetSource(Source):
    """Rows of a Hugging Face `datasets` dataset (``imagefolder``, a hub name, a local script).

    The media column may be an `Image`, `Audio` or `Video` feature (kept undecoded, so a corrupt
    cell fails on its own row) or a column of file paths (relative ones resolve against `data_dir`).
    `data_dir` and `data_files` are `datasets.load_dataset`'s: ``csv`` with ``data_dir=photos``,
    ``data_files=items.csv`` reads ``photos/items.csv``, whose paths are relative to ``photos``.
    """

    def __init__(self, name: str, split: str = "train", media_column: str = "image", text_column: str | None = None,
                 data_dir: str | None = None, data_files: str | list[str] | None = None):
        import datasets

        try:
            ds = datasets.load_dataset(name, data_dir=data_dir, data_files=data_files, split=split)
        except Exception as err:  # datasets raises many types; the reason is what matters
            cause = f"{err}: {err.__cause__}" if err.__cause__ else str(err)
            raise SourceError(f"cannot load dataset {name!r} (data_dir={data_dir}, data_files={data_files}): "
                              f"{cause}") from None
        missing = [c for c in (media_column, text_column) if c and c not in ds.column_names]
        if missing:
            raise SourceError(f"dataset {name!r} has no column {missing[0]!r}; it has {ds.column_names}")
        feature = ds.features[media_column]
        if hasattr(feature, "decode"):  # Image / Audio / Video: kept undecoded, decoded by our adapter
            ds = ds.cast_column(media_column, type(feature)(decode=False))
        self.path_column = getattr(feature, "dtype", None) in ("string", "large_string")
        self.name, self.split, self.data_dir, self.data_files = name, split, data_dir, data_files
        self.media_column, self.text_column, self.dataset = media_column, text_column, ds

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> SourceItem:
        row = self.dataset[index]
        caption = row.get(self.text_column) if self.text_column else _column(row, CAPTION_COLUMNS)
        return SourceItem(key=str(index), caption=caption, media=self._media(row[self.media_column]))

    def _media(self, cell: Any) -> Any:
        if isinstance(cell, dict):  # an undecoded Image/Audio/Video cell: {"bytes", "path"}
            return cell.get("bytes") or cell.get("path")
        if isinstance(cell, str) and self.data_dir and not Path(cell).is_absolute():
            return Path(self.data_dir) / cell
        return cell

    def describe(self) -> dict:
        """`datasets`' own fingerprint covers the table and its transforms; media that a path column
        points at are covered like a folder's files (size and modification time)."""
        paths = self.dataset[self.media_column] if self.path_column else []
        return {"dataset": self.name, "data_dir": self.data_dir, "data_files": self.data_files, "split": self.split,
                "media_column": self.media_column, "text_column": self.text_column, "items": len(self),
                "fingerprint": fingerprint([self.dataset._fingerprint] +
                                           [_file_signature(Path(self._media(p))) for p in paths if p])}


class TextSource(Source):
    """A text-only corpus: a ``.txt`` file (one document per non-empty line) or JSONL/CSV rows
    with a ``text`` (or ``caption``) column."""

    def __init__(self, path: str | Path, text_column: str | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise SourceError(f"{self.path}: text corpus not found")
        if self.path.suffix == ".txt":
            self.texts = [line.strip() for line in self.path.read_text(errors="replace").splitlines() if line.strip()]
        else:
            columns = (text_column,) if text_column else CAPTION_COLUMNS
            self.texts = [_column(row, columns) for row in read_table(self.path)]

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, index: int) -> SourceItem:
        return SourceItem(key=f"{self.path.name}:{index}", caption=self.texts[index])

    def describe(self) -> dict:
        return {"text": str(self.path), "items": len(self), "fingerprint": fingerprint(self.texts)}
