"""Audio: DTMF digits world, the Goertzel decoder, the audio adapter (decord, log-mel, Griffin-Lim)
and an audio RDPM tokenizer built from its spec."""

import json
import random
import wave

import numpy as np
import pytest
import torch

from unitok.benchmarks.digits.dtmf import decode_dtmf, dtmf_roundtrip_accuracy
from unitok.benchmarks.digits.tones import (
    ToneClip,
    ToneWorldConfig,
    audio_file,
    build_tone_world,
    dtmf_waveform,
    is_heldout_pair,
    parse_tone_caption,
    sample_tone_clip,
    tone_caption,
    write_audio_folder,
)
from unitok.configs import SHIPPED
from unitok.tokenizer.adapters import Audio, AudioAdapter, MediaError
from unitok.tokenizer.media_tokenizer import MediaTokenizer, TokenizerSpec

SPEC = SHIPPED / "tokenizers" / "audio-rdpm-dtmf.yaml"


@pytest.fixture(scope="module")
def adapter():
    return AudioAdapter(TokenizerSpec.load(SPEC).audio)


def clips(n, seed=0):
    rng = random.Random(seed)
    return [sample_tone_clip(rng, tuple(rng.randrange(10) for _ in range(rng.randint(1, 3)))) for _ in range(n)]


def test_goertzel_decodes_every_dialled_sequence_exactly():
    for clip in clips(200):
        assert decode_dtmf(dtmf_waveform(clip, 8000), 8000) == clip.digits
    repeated = ToneClip((6, 6, 0), (0.1, 0.1, 0.1), (0.06, 0.06, 0.06), (0.5, 0.3, 0.8))
    assert decode_dtmf(dtmf_waveform(repeated, 8000), 8000) == (6, 6, 0)  # a pause separates equal keys
    assert decode_dtmf(np.zeros(8000, dtype=np.float32), 8000) == ()
    noise = np.random.default_rng(0).normal(0, 0.3, 8000).astype(np.float32)
    assert decode_dtmf(noise, 8000) == ()  # loud noise is not a key


def test_tone_captions_name_the_digits_in_order():
    rng = random.Random(0)
    for digits in ((4,), (4, 7), (1, 0, 9)):
        for _ in range(10):
            assert parse_tone_caption(tone_caption(digits, rng)) == digits


def test_mel_normalisation_round_trips_inside_its_range(adapter):
    db = torch.linspace(adapter.config.floor_db, adapter.config.ceil_db, 50)
    unit = adapter.db_to_unit(db)
    assert unit.min() >= -1 and unit.max() <= 1
    assert torch.allclose(adapter.unit_to_db(unit), db, atol=1e-4)
    assert adapter.db_to_unit(torch.tensor([-200.0, 99.0])).tolist() == [-1.0, 1.0]  # clamped, never outside


def test_dtmf_clip_survives_spectrogram_and_griffin_lim(adapter):
    batch = clips(12, seed=1)
    x = torch.stack([adapter.preprocess(Audio(dtmf_waveform(c, 8000), 8000)) for c in batch])
    assert x.shape == (12, *adapter.input_shape) and x.min() >= -1 and x.max() <= 1
    audio = adapter.postprocess(x)
    assert all(a.sample_rate == 8000 and len(a.samples) == adapter.config.samples for a in audio)
    assert [decode_dtmf(a.samples, 8000) for a in audio] == [c.digits for c in batch]


def test_spectrogram_errors_stay_small_through_the_vocoder(adapter):
    """A decoder is never exact: with errors of 3 % of the range on every mel cell, the tones must
    still decode (an ill-conditioned mel inversion turns such errors into clipping noise)."""
    batch = clips(12, seed=3)
    x = torch.stack([adapter.preprocess(Audio(dtmf_waveform(c, 8000), 8000)) for c in batch])
    noisy = x + 0.03 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    audio = adapter.postprocess(noisy)
    assert [decode_dtmf(a.samples, 8000) for a in audio] == [c.digits for c in batch]
    assert max(float(np.abs(a.samples).max()) for a in audio) < 1.0, "no clipping"


def test_files_are_read_through_decord_and_resampled(adapter, tmp_path):
    clip = clips(1, seed=2)[0]
    for rate in (8000, 16000):
        Audio(dtmf_waveform(clip, rate), rate).save(tmp_path / f"clip{rate}.wav")
        loaded = adapter.load(tmp_path / f"clip{rate}.wav")
        assert loaded.sample_rate == 8000 and abs(len(loaded.samples) - len(dtmf_waveform(clip, 8000))) <= 1
        assert decode_dtmf(loaded.samples, 8000) == clip.digits
    with open(tmp_path / "clip16000.wav", "rb") as handle:  # an open file works like a path
        assert decode_dtmf(adapter.load(handle).samples, 8000) == clip.digits
    with wave.open(str(tmp_path / "clip8000.wav")) as written:
        assert (written.getnchannels(), written.getsampwidth(), written.getframerate()) == (1, 2, 8000)


@pytest.mark.parametrize("content", [b"", b"RIFF\x00\x00\x00\x00WAVEjunk", b"this is a text file, not audio\n" * 20])
def test_unreadable_audio_is_a_clear_error_naming_the_file(adapter, tmp_path, content):
    path = tmp_path / "broken.wav"
    path.write_bytes(content)
    with pytest.raises(MediaError, match="broken.wav"):
        adapter.load(path)


def test_wrong_in_memory_audio_is_refused(adapter):
    with pytest.raises(MediaError, match="16000 Hz"):
        adapter.preprocess(Audio(np.zeros(100, dtype=np.float32), 16000))
    with pytest.raises(MediaError, match="1-D"):
        adapter.preprocess(np.zeros((2, 100), dtype=np.float32))


def test_audio_tokenizer_encodes_deterministically_and_round_trips(tmp_path):
    torch.manual_seed(0)
    spec = TokenizerSpec.load(SPEC)
    tokenizer = MediaTokenizer(spec).eval()
    blocks = spec.quantizer.noise_steps + 1
    assert (tokenizer.num_positions, tokenizer.num_blocks) == (8 * 16, blocks)
    audio = [Audio(dtmf_waveform(c, 8000), 8000) for c in clips(3, seed=3)]
    ids = tokenizer.encode(audio, seed=[0, 1, 2])
    assert ids.shape == (3, blocks, 128) and int(ids.max()) < spec.quantizer.codebook_size
    assert torch.equal(ids, tokenizer.encode(audio, seed=[0, 1, 2]))
    assert not torch.equal(ids[0, 0], tokenizer.encode(audio[:1], seed=[7])[0, 0])  # k_T follows the seed
    decoded = tokenizer.decode(ids)
    assert len(decoded) == 3 and all(len(a.samples) == tokenizer.adapter.config.samples for a in decoded)
    assert all(np.array_equal(a.samples, b.samples) for a, b in zip(decoded, tokenizer.decode(ids)))  # deterministic
    tokenizer.save_pretrained(tmp_path / "audio")
    assert torch.equal(MediaTokenizer.from_pretrained(tmp_path / "audio").encode(audio, seed=[0, 1, 2]), ids)


def test_audio_spec_with_image_channels_fails_naming_the_field(tmp_path):
    text = open(SPEC).read().replace("in_channels: 1", "in_channels: 3")
    (tmp_path / "bad.yaml").write_text(text)
    with pytest.raises(ValueError, match="in_channels"):
        TokenizerSpec.load(tmp_path / "bad.yaml")


def test_tone_world_is_deterministic_and_holds_out_digit_pairs():
    world = build_tone_world(ToneWorldConfig(seed=0, train_clips=400, heldout_clips=60))
    assert world == build_tone_world(ToneWorldConfig(seed=0, train_clips=400, heldout_clips=60))
    for item in world["train"]:
        assert not any(is_heldout_pair(a, b) for a, b in zip(item.clip.digits, item.clip.digits[1:]))
        assert parse_tone_caption(item.caption) == item.clip.digits
    unseen = [it for it in world["heldout"] if it.unseen_combo]
    assert len(unseen) == 30
    assert all(any(is_heldout_pair(a, b) for a, b in zip(it.clip.digits, it.clip.digits[1:])) for it in unseen)
    assert {d for it in world["train"] for d in it.clip.digits} == set(range(10))


def test_audio_folder_is_read_back_by_the_adapter(adapter, tmp_path):
    items = build_tone_world(ToneWorldConfig(seed=1, train_clips=4, heldout_clips=0))["train"]
    root = write_audio_folder(items, tmp_path / "tones")
    records = [json.loads(line) for line in (root / "captions.jsonl").read_text().splitlines()]
    assert [r["file"] for r in records] == [audio_file(it) for it in items]
    for record, item in zip(records, items):
        assert decode_dtmf(adapter.load(root / record["file"]).samples, 8000) == item.clip.digits


class _FakeAudioTokenizer:
    """Encode keeps the clips, decode returns them, silencing every odd one: the scorer must count 1 in 2."""

    def __init__(self, adapter):
        self.adapter = adapter
        self.seeds = []

    def encode(self, clips, seed):
        self.seeds += list(seed)
        return clips

    def decode(self, clips):
        return [c if i % 2 == 0 else Audio(np.zeros_like(c.samples), c.sample_rate) for i, c in enumerate(clips)]


def test_dtmf_roundtrip_accuracy_counts_exact_sequences_with_one_seed_per_clip(adapter):
    items = build_tone_world(ToneWorldConfig(seed=3, train_clips=10, heldout_clips=0))["train"]
    fake = _FakeAudioTokenizer(adapter)
    assert dtmf_roundtrip_accuracy(fake, items, seed=5, batch_size=4) == 0.5  # batches of 4: items 0, 2, 4, … survive
    assert fake.seeds == list(range(5, 15))


@pytest.mark.parametrize("edit, field", [("floor_db: -60.0", "floor_db: 40.0"), ("f_max: 1600.0", "f_max: 9000.0")])
def test_bad_audio_section_fails_at_load_naming_the_file_and_section(tmp_path, edit, field):
    text = open(SPEC).read()
    assert edit in text
    (tmp_path / "bad.yaml").write_text(text.replace(edit, field))
    with pytest.raises(ValueError, match=rf"bad\.yaml: audio\.{field.split(':')[0]}: "):
        TokenizerSpec.load(tmp_path / "bad.yaml")
