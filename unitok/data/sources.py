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
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.compute as pc

from unitok.core.errors import UnitokError
from unitok.core.text_files import read_utf8
from unitok.tokenizer.adapters import AudioAdapter, ImageAdapter, MediaError, VideoAdapter

CAPTION_COLUMNS = ("caption", "text")
FILE_COLUMNS = ("file", "file_name", "path")
MANIFEST_NAMES = ("metadata.jsonl", "metadata.csv", "captions.jsonl", "captions.csv")
MEDIA_EXTENSIONS = frozenset(ImageAdapter.file_extensions + AudioAdapter.file_extensions + VideoAdapter.file_extensions)


class SourceError(UnitokError):
    """The source as a whole is unusable (missing manifest, no file column, …)."""


@dataclass(frozen=True)
class SourceItem:
    key: str  # stable id: the file path relative to the folder or dataset, else the row index; the corpus line
    caption: str | None
    media: Any = None  # a path, undecoded bytes, or None for a text-only item
    caption_problem: str | None = None  # why `caption` is None where the source knows (reported with the item)

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
    convention, column ``file_name``) or ``captions.jsonl`` is used, else sidecar files. A file
    with several manifest lines is one item per line, keyed ``cat.png``, ``cat.png#2``, … (several
    captions of one image are common). With `every_file`, every media file of the folder is an
    item, and one the manifest has no line for is an item without a caption (reported, not
    dropped); without it, the items are the manifest's lines (a recipe's splits, which may share
    one folder with a manifest each).
    """

    def __init__(self, folder: str | Path, captions: str | Path | None = None, every_file: bool = True):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise SourceError(f"{self.folder}: not a directory")
        manifest = Path(captions) if captions else next(
            (self.folder / n for n in MANIFEST_NAMES if (self.folder / n).is_file()), None)
        self.captions = str(manifest) if manifest else "sidecar .txt files"
        self.rows = _manifest_rows(manifest, self.folder, every_file) if manifest else _sidecar_rows(self.folder)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> SourceItem:
        key, relative, caption, problem = self.rows[index]
        return SourceItem(key=key, caption=caption, media=self.folder / relative, caption_problem=problem)

    def describe(self) -> dict:
        """The fingerprint covers the captions and every file's size and modification time (as
        `datasets` does for local files): a re-run over edited files is refused, not mixed in."""
        return {"folder": str(self.folder), "captions": self.captions, "items": len(self),
                "fingerprint": fingerprint((k, c, p, _file_signature(self.folder / r)) for k, r, c, p in self.rows)}


def _file_signature(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None  # missing: reported on its own item
    return stat.st_size, stat.st_mtime_ns


FolderRow = tuple[str, str, Any, str | None]  # key, file relative to the folder, caption, caption problem


def _media_files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.suffix.lower() in MEDIA_EXTENSIONS and p.is_file())


def _manifest_rows(path: Path, folder: Path, every_file: bool) -> list[FolderRow]:
    """The manifest's lines in order, then (`every_file`) the folder's media files it has no line for."""
    rows = read_table(path)
    if rows and _column(rows[0], FILE_COLUMNS) is None:
        raise SourceError(f"{path}: no file column (expected one of {FILE_COLUMNS})")
    files = [str(_column(row, FILE_COLUMNS)) for row in rows]
    listed = {Path(f) for f in files}  # `./a.png` lists a.png
    unlisted = [(f, f, None, f"{path.name} has no line for it")
                for f in (_media_files(folder) if every_file else []) if Path(f) not in listed]
    return [(key, f, _column(row, CAPTION_COLUMNS), None)
            for key, f, row in zip(unique_keys(files), files, rows)] + unlisted


def unique_keys(names: list[str]) -> list[str]:
    """`names` with the second, third, … occurrence of a name suffixed ``#2``, ``#3``, …"""
    seen: Counter[str] = Counter()
    keys = []
    for name in names:
        seen[name] += 1
        keys.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return keys


def _sidecar_rows(folder: Path) -> list[FolderRow]:
    files = _media_files(folder)
    if not files:
        raise SourceError(f"{folder}: no caption manifest (metadata.jsonl, captions.jsonl, …; or pass --captions) "
                          "and no media files with sidecar .txt captions")
    return [(f, f, *_read_sidecar(folder / Path(f).with_suffix(".txt"))) for f in files]


def _read_sidecar(path: Path) -> tuple[str | None, str | None]:
    """The caption in a sidecar file, or None and why it cannot be read as text."""
    if not path.is_file():
        return None, None
    try:
        return path.read_text(encoding="utf-8").strip() or None, None
    except UnicodeDecodeError as err:
        return None, f"{path.name} is not UTF-8 text: byte {err.start}"


def read_table(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSONL or CSV file; names the line of a malformed JSONL row."""
    text = read_utf8(path, SourceError)
    if path.suffix == ".csv":
        return list(csv.DictReader(io.StringIO(text, newline="")))
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
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
        self.keys = unique_keys([self._key(index, path) for index, path in enumerate(self._paths())])

    def _paths(self) -> list[str | None]:
        """Every row's media file path (None where a cell holds bytes only), read from the Arrow
        column without loading any media bytes."""
        column = self.dataset.with_format("arrow")[self.media_column]
        if pa.types.is_struct(column.type):
            column = pc.struct_field(column, "path")
        return column.to_pylist()

    def _key(self, index: int, path: Any) -> str:
        """Where a row has a file: its path relative to the dataset's folder, a relative path as the
        row gives it, else its file name (not a cache path, which differs by machine); the row
        index where it has none."""
        if not isinstance(path, str) or not path:
            return str(index)
        file = Path(path)
        if not file.is_absolute():
            return path
        for root in (self.data_dir, self.name):
            if root and Path(root).is_dir() and file.is_relative_to(Path(root).resolve()):
                return str(file.relative_to(Path(root).resolve()))
        return file.name

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> SourceItem:
        row = self.dataset[index]
        caption = row.get(self.text_column) if self.text_column else _column(row, CAPTION_COLUMNS)
        return SourceItem(key=self.keys[index], caption=caption, media=self._media(row[self.media_column]))

    def _media(self, cell: Any) -> Any:
        if isinstance(cell, dict):  # an undecoded Image/Audio/Video cell: {"bytes", "path"}
            return cell.get("bytes") or cell.get("path")
        if isinstance(cell, str) and self.data_dir and not Path(cell).is_absolute():
            return Path(self.data_dir) / cell
        return cell

    def describe(self) -> dict:
        """`datasets`' own fingerprint covers the table and its transforms; media that a path column
        points at are covered like a folder's files (size and modification time)."""
        paths = self._paths() if self.path_column else []
        return {"dataset": self.name, "data_dir": self.data_dir, "data_files": self.data_files, "split": self.split,
                "media_column": self.media_column, "text_column": self.text_column, "items": len(self),
                "fingerprint": fingerprint([self.dataset._fingerprint] +
                                           [_file_signature(Path(self._media(p))) for p in paths if p])}


class TextSource(Source):
    """A text-only corpus: a ``.txt`` file (one document per non-empty line, keyed ``corpus.txt:LINE``)
    or JSONL/CSV rows with a ``text`` (or ``caption``) column. A ``.txt`` line that is not UTF-8 is
    a bad item (reported); a JSONL/CSV file that is not UTF-8 is refused, naming the line."""

    def __init__(self, path: str | Path, text_column: str | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise SourceError(f"{self.path}: text corpus not found")
        if self.path.suffix == ".txt":
            self.lines = [(number, line.strip()) for number, line in enumerate(self.path.read_bytes().splitlines(), 1)
                          if line.strip()]
        else:
            columns = (text_column,) if text_column else CAPTION_COLUMNS
            self.lines = [(number, _column(row, columns)) for number, row in enumerate(read_table(self.path), 1)]

    def __len__(self) -> int:
        return len(self.lines)

    def __getitem__(self, index: int) -> SourceItem:
        number, text = self.lines[index]
        key = f"{self.path.name}:{number}"
        if not isinstance(text, bytes):
            return SourceItem(key=key, caption=text)
        try:
            return SourceItem(key=key, caption=text.decode("utf-8"))
        except UnicodeDecodeError as err:
            return SourceItem(key=key, caption=None, caption_problem=f"the line is not UTF-8 text: byte {err.start}")

    def describe(self) -> dict:
        return {"text": str(self.path), "items": len(self), "fingerprint": fingerprint(
            (n, t.hex() if isinstance(t, bytes) else t) for n, t in self.lines)}
