"""Video: the moving-digit clips of digits world, MP4 through PyAV and decord, the 3D video
tokenizer, and the pixel readers that score generated clips."""

from pathlib import Path

import numpy as np
import pytest
import torch

from unitok.benchmarks.digits.clips import (
    ClipWorldConfig,
    build_clip_world,
    heldout_direction,
    parse_clip_caption,
    render_clip,
    video_file,
    write_video_folder,
)
from unitok.benchmarks.digits.readers import BLANK, read_color, read_direction
from unitok.configs import SHIPPED
from unitok.tokenizer.adapters import ImageConfig, MediaError, Video, VideoAdapter, VideoConfig
from unitok.tokenizer.autoencoder import Autoencoder, AutoencoderConfig
from unitok.tokenizer.media_tokenizer import MediaTokenizer, TokenizerSpec, frames_tokenizer

WORLD = ClipWorldConfig(train_clips=40, heldout_clips=20)
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def world():
    return build_clip_world(WORLD)


def test_clip_world_is_deterministic_and_holds_out_one_direction_per_digit(world):
    assert world == build_clip_world(WORLD)
    assert all(it.clip.direction != heldout_direction(it.clip.digit) for it in world["train"])
    unseen = [it for it in world["heldout"] if it.unseen_combo]
    assert len(unseen) == 10 and all(it.clip.direction == heldout_direction(it.clip.digit) for it in unseen)
    for it in world["train"]:
        read = parse_clip_caption(it.caption)
        assert (read["digit"], read["color"], read["direction"]) == (it.clip.digit, it.clip.color, it.clip.direction)


def test_clips_stay_in_frame_and_the_readers_get_direction_and_colour_exactly(world):
    for it in world["train"] + world["heldout"]:
        frames = render_clip(it.clip, WORLD)
        assert frames.shape == (8, 32, 32, 3) and all(f.any() for f in frames), "the digit never leaves the frame"
        assert read_direction(frames) == it.clip.direction
        assert read_color(frames[4]) == it.clip.color
    assert read_direction(np.zeros((8, 32, 32, 3), np.uint8)) == BLANK


def test_mp4_written_by_the_project_reads_back_through_decord(world, tmp_path):
    items = world["train"][:4]
    write_video_folder(items, tmp_path, WORLD)
    adapter = VideoAdapter(VideoConfig(frames=8, size=32))
    for it in items:
        video = adapter.load(tmp_path / video_file(it))
        assert video.frames.shape == (8, 32, 32, 3) and video.fps == pytest.approx(8.0)
        error = np.abs(video.frames.astype(int) - render_clip(it.clip, WORLD)).mean()
        assert error < 3, "near-lossless H.264 keeps the pixels"
        assert read_direction(video.frames) == it.clip.direction


def test_frame_sampling_resizing_and_padding(tmp_path):
    frames = np.zeros((20, 48, 64, 3), np.uint8)
    for f in range(20):
        frames[f, :, :, 0] = 10 * f  # the red level tells which frame it is
    Video(frames, fps=20.0).save(tmp_path / "long.mp4")
    strided = VideoAdapter(VideoConfig(frames=4, size=16, stride=3)).load(tmp_path / "long.mp4")
    assert strided.frames.shape == (4, 48, 64, 3)
    assert [round(int(f[..., 0].mean()) / 10) for f in strided.frames] == [0, 3, 6, 9]
    by_time = VideoAdapter(VideoConfig(frames=4, size=16, fps=5.0)).load(tmp_path / "long.mp4")
    assert [round(int(f[..., 0].mean()) / 10) for f in by_time.frames] == [0, 4, 8, 12]
    adapter = VideoAdapter(VideoConfig(frames=6, size=16))
    x = adapter.preprocess(Video(frames[:3], fps=20.0))  # shorter than 6 frames: the last one is held
    assert x.shape == (3, 6, 16, 16) and torch.equal(x[:, 2], x[:, 5])

    def level(x):  # which source frame each sampled one is, from its red level
        return [round((float(f[0].mean()) + 1) * 127.5 / 10) for f in x.unbind(1)]

    in_memory = VideoAdapter(VideoConfig(frames=4, size=16, stride=3)).preprocess(Video(frames, fps=20.0))
    assert level(in_memory) == [0, 3, 6, 9], "an in-memory clip is sampled as a file is"
    by_time = VideoAdapter(VideoConfig(frames=4, size=16, fps=5.0))
    by_stride = VideoAdapter(VideoConfig(frames=4, size=16, stride=3))
    assert level(by_time.to_tensor(Video(frames, fps=20.0))) == [0, 4, 8, 12]
    assert level(by_stride.to_tensor(tmp_path / "long.mp4")) == [0, 3, 6, 9]


def test_empty_or_undecodable_videos_are_clear_errors(tmp_path):
    adapter = VideoAdapter(VideoConfig())
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "notes.mp4").write_text("not a video")
    for name in ("empty.mp4", "notes.mp4", "missing.mp4"):
        with pytest.raises(MediaError, match=f"{name}: not readable video"):
            adapter.load(tmp_path / name)
    with pytest.raises(MediaError, match="expected a Video"):
        adapter.preprocess(np.zeros((0, 32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="cannot write .png video"):
        Video(np.zeros((2, 8, 8, 3), np.uint8), 8.0).save(tmp_path / "x.png")


def test_3d_autoencoder_halves_time_only_in_its_temporal_levels():
    cfg = AutoencoderConfig(patch_size=2, channels=(16, 16, 16), temporal_levels=2, latent_channels=4)
    model = Autoencoder(cfg, dims=3).eval()
    x = torch.randn(2, 3, 8, 32, 32)
    z = model.encode(x)
    assert z.shape == (2, 4, 2, 2, 2) and cfg.downsample_factors(3) == (4, 16, 16)
    assert model.decode(z).shape == x.shape


def test_3d_stem_patches_frames_into_channels():
    cfg = AutoencoderConfig(patch_size=2, temporal_patch_size=2, channels=(16,), temporal_levels=1, latent_channels=4)
    model = Autoencoder(cfg, dims=3).eval()
    x = torch.randn(2, 3, 8, 32, 32)
    z = model.encode(x)
    assert z.shape == (2, 4, 2, 8, 8) and cfg.downsample_factors(3) == (4, 4, 4)
    assert model.decode(z).shape == x.shape


def test_video_tokenizer_from_its_spec_encodes_deterministically(world):
    spec = TokenizerSpec.load(SHIPPED / "tokenizers" / "video-rdpm-clips.yaml")
    torch.manual_seed(0)
    tokenizer = MediaTokenizer(spec).eval()
    clips = [Video(render_clip(it.clip, WORLD), WORLD.fps) for it in world["train"][:3]]
    ids = tokenizer.encode(clips, seed=[1, 2, 3])
    assert ids.shape == (3, spec.quantizer.noise_steps + 1, 128) and tokenizer.latent_shape == (2, 8, 8)
    assert torch.equal(ids, tokenizer.encode(clips, seed=[1, 2, 3]))
    assert not torch.equal(ids, tokenizer.encode(clips, seed=[4, 5, 6])), "RDPM tokens depend on the noise seed"
    decoded = tokenizer.decode(ids)
    assert len(decoded) == 3 and decoded[0].frames.shape == (4, 32, 32, 3)
    assert len(tokenizer.adapter.picture(tokenizer.decode_tensor(ids))) == 3


def test_temporal_levels_and_patches_are_refused_for_images():
    for temporal in ({"temporal_levels": 1}, {"temporal_patch_size": 2}):
        with pytest.raises(ValueError, match="temporal_levels and temporal_patch_size need frames"):
            TokenizerSpec(modality="image", image=ImageConfig(), autoencoder=AutoencoderConfig(**temporal))


def test_clip_world_config_refuses_bad_values_at_load():
    for bad in ({"heldout_digit_fraction": 1.5}, {"image_size": 8}, {"frames": 1}, {"frames": 40}, {"train_clips": -1}):
        with pytest.raises(ValueError):
            ClipWorldConfig(**bad)


def frames_and_image_tokenizers(world):
    """The shipped T = 1 image tokenizer's spec (random weights, one training batch for its
    running statistics) and the per-frame video spec that takes its weights."""
    image_spec = TokenizerSpec.load(SHIPPED / "tokenizers" / "image-rdpm-32-t1.yaml")
    torch.manual_seed(0)
    image = MediaTokenizer(image_spec)
    image(torch.rand(8, 3, 32, 32) * 2 - 1)  # one training pass: codebook and σ_t from data
    frames_spec = TokenizerSpec.load(REPO / "experiments" / "tokenizers" / "video-frames-32.yaml")
    return image.eval(), frames_tokenizer(frames_spec, image)


def test_a_frame_coded_by_the_image_tokenizer_has_that_image_s_codes(world):
    image, frames = frames_and_image_tokenizers(world)
    clips = [Video(render_clip(it.clip, WORLD), WORLD.fps) for it in world["train"][:2]]
    ids = frames.encode(clips, seed=[1, 2])
    assert frames.latent_shape == (4, 8, 8) and ids.shape == (2, 2, 256)
    batch = frames.to_batch(clips)  # (2, 3, 4, 32, 32): the frames the adapter samples
    for clip in range(2):
        for f in range(4):
            frame_ids = image.encode_tensor(batch[clip, :, f][None], [7])[0]
            assert torch.equal(ids[clip, -1, f * 64:(f + 1) * 64], frame_ids[-1]), "the clean block: the image's codes"
    assert torch.equal(frames.decode_tensor(ids)[:, :, 1], image.decode_tensor(
        torch.stack([ids[:, 0, 64:128], ids[:, 1, 64:128]], dim=1))), "and decodes as that image"


def test_per_frame_autoencoders_are_refused_for_images_and_with_temporal_settings():
    with pytest.raises(ValueError, match="autoencoder.per_frame: codes the frames of a clip; image tensors have none"):
        TokenizerSpec(modality="image", image=ImageConfig(), autoencoder=AutoencoderConfig(per_frame=True))
    with pytest.raises(ValueError, match="per_frame: codes every frame apart; it takes no temporal_levels"):
        AutoencoderConfig(per_frame=True, temporal_levels=1, channels=(16,))
