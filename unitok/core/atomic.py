"""Writes that a kill cannot leave half done: a temporary name beside the target, then a rename.

Saved folders (pipelines, tokenizers) write the file that marks them loadable (their config or
index) last and atomically, and remove it first, so a killed save leaves a folder that refuses to
load rather than one that loads a mix of old and new files.
"""

from __future__ import annotations

import os
from pathlib import Path


def temporary_path(path: Path) -> Path:
    """A temporary name of this process: a worker orphaned by a killed run never shares it."""
    return path.with_name(f"{path.name}.{os.getpid()}.tmp")


def write_bytes_atomic(path: Path, data: bytes) -> None:
    tmp = temporary_path(path)
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode())
