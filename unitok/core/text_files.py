"""Reading the text files users write (captions, recipes, specs): bytes that are not UTF-8 are
refused in one line that names the file and the line they are on."""

from __future__ import annotations

from pathlib import Path

from unitok.core.errors import UnitokError


def read_utf8(path: Path, error: type[UnitokError] = UnitokError) -> str:
    """The text of `path`, or `error` naming the file (missing) or the line (not UTF-8)."""
    if not path.is_file():
        raise error(f"{path}: file not found")
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise error(f"{path}:{line}: not UTF-8 text; re-save the file as UTF-8") from None
