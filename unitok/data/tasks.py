"""Tasks: what a shard row trains. ``text_to_<modality>`` generates the media from its caption,
``<modality>_to_text`` captions the media, ``text`` trains the caption alone."""

from __future__ import annotations

from unitok.core.errors import UnitokError

MODALITIES = ("image", "audio", "video")
TASK_FORMS = "text_to_<modality>, <modality>_to_text or text (modality: image, audio or video)"


def is_task(task: str) -> bool:
    return task == "text" or task in {f"text_to_{m}" for m in MODALITIES} | {f"{m}_to_text" for m in MODALITIES}


def task_modality(task: str) -> str | None:
    """The media modality a task involves: ``text_to_audio`` and ``audio_to_text`` -> "audio";
    ``text`` -> None."""
    if not is_task(task):
        raise UnitokError(f"unknown task {task!r}; expected {TASK_FORMS}")
    if task == "text":
        return None
    return task.removeprefix("text_to_") if task.startswith("text_to_") else task.removesuffix("_to_text")


def generates_media(task: str) -> bool:
    return task.startswith("text_to_")
