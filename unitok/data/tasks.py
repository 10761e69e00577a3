"""Tasks: what a shard row trains. ``text_to_<modality>`` generates the media from its caption,
``<modality>_to_text`` captions the media, ``text`` trains the caption alone."""

from __future__ import annotations

from unitok.core.errors import UnitokError


def task_modality(task: str) -> str | None:
    """The media modality a task involves: ``text_to_audio`` and ``audio_to_text`` -> "audio";
    ``text`` -> None."""
    if task == "text":
        return None
    if task.startswith("text_to_"):
        return task.removeprefix("text_to_")
    if task.endswith("_to_text"):
        return task.removesuffix("_to_text")
    raise UnitokError(f"unknown task {task!r}; expected text_to_<modality>, <modality>_to_text or text")


def generates_media(task: str) -> bool:
    return task.startswith("text_to_")
