"""The digits world on disk: one modality rendered into caption folders, one per split."""

from pathlib import Path

from unitok.benchmarks.digits.clips import ClipWorldConfig, build_clip_world, write_video_folder
from unitok.benchmarks.digits.images import write_image_folder
from unitok.benchmarks.digits.scenes import DigitsWorldConfig, build_digits_world
from unitok.benchmarks.digits.tones import ToneWorldConfig, build_tone_world, write_audio_folder

WorldConfig = DigitsWorldConfig | ToneWorldConfig | ClipWorldConfig


def write_world_folders(world: WorldConfig, folders: dict[str, Path]) -> None:
    """Render one modality of the digits world into caption folders, one per split ("train", "heldout")."""
    if isinstance(world, ToneWorldConfig):
        splits = build_tone_world(world)
        for split, folder in folders.items():
            write_audio_folder(splits[split], folder, world.sample_rate)
    elif isinstance(world, ClipWorldConfig):
        splits = build_clip_world(world)
        for split, folder in folders.items():
            write_video_folder(splits[split], folder, world)
    else:
        splits = build_digits_world(world)
        for split, folder in folders.items():
            write_image_folder(splits[split], folder, world.image_size)
