"""Digits world: the embedded default dataset: real sklearn digits as coloured, captioned scenes
(images), the same digits dialled as DTMF tones (audio) and moving in short clips (video)."""

from pathlib import Path

from unitok.digits_world.images import (
    digit_pixels,
    image_file,
    position_centers,
    real_renders,
    render_array,
    render_scene,
    write_image_folder,
)
from unitok.digits_world.scenes import (
    COLOR_NAMES,
    COLORS,
    DIGIT_WORDS,
    POSITIONS,
    SIZES,
    DigitsWorldConfig,
    Item,
    Scene,
    build_digits_world,
    canonical_caption,
    caption_for,
    digit_pools,
    heldout_color,
    load_digit_images,
    parse_caption,
    sample_scene,
)
from unitok.digits_world.clips import ClipWorldConfig, build_clip_world, write_video_folder
from unitok.digits_world.tones import ToneWorldConfig, build_tone_world, write_audio_folder


def write_world_folders(world: DigitsWorldConfig | ToneWorldConfig | ClipWorldConfig, folders: dict[str, Path]) -> None:
    """Render one modality of digits world into caption folders, one per split ("train", "heldout")."""
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


__all__ = [
    "ClipWorldConfig",
    "COLORS",
    "COLOR_NAMES",
    "DIGIT_WORDS",
    "POSITIONS",
    "SIZES",
    "ToneWorldConfig",
    "DigitsWorldConfig",
    "Item",
    "Scene",
    "build_clip_world",
    "build_digits_world",
    "build_tone_world",
    "canonical_caption",
    "caption_for",
    "digit_pixels",
    "digit_pools",
    "heldout_color",
    "image_file",
    "load_digit_images",
    "parse_caption",
    "position_centers",
    "real_renders",
    "render_array",
    "render_scene",
    "sample_scene",
    "write_audio_folder",
    "write_image_folder",
    "write_video_folder",
    "write_world_folders",
]
