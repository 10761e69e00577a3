"""A shipped audio tokenizer trained a few hundred steps keeps the dialled digits through the whole
chain (too long for the unit tier)."""

import random

import torch

from unitok.benchmarks.digits.dtmf import decode_dtmf
from unitok.benchmarks.digits.tones import dtmf_waveform, sample_tone_clip
from unitok.configs import SHIPPED
from unitok.core.config import from_dict, to_dict
from unitok.tokenizer.adapters import Audio, AudioAdapter
from unitok.tokenizer.media_tokenizer import TokenizerSpec
from unitok.train.tokenizer import TokenizerTraining, train_media_tokenizer

SPEC = SHIPPED / "tokenizers" / "audio-rdpm-dtmf.yaml"


def test_dtmf_clips_survive_a_trained_tokenizer_encode_decode():
    """The whole chain on a tokenizer fitted to two clips: spectrogram -> autoencoder -> RDPM ids
    -> codes -> decoder -> Griffin-Lim -> Goertzel gives back the dialled digits."""
    spec = TokenizerSpec.load(SPEC)
    adapter = AudioAdapter(spec.audio)
    spec = from_dict(TokenizerSpec, {**to_dict(spec), "quantizer": {**to_dict(spec.quantizer), "codebook_size": 64}})
    rng = random.Random(5)
    two = [Audio(dtmf_waveform(sample_tone_clip(rng, digits), 8000), 8000) for digits in ((4, 7), (1, 0, 9))]
    x = torch.stack([adapter.preprocess(a) for a in two]).repeat(8, 1, 1, 1)
    tokenizer = train_media_tokenizer(spec, x, TokenizerTraining(steps=300, batch_size=16, learning_rate=3e-3,
                                                                 warmup_steps=10), seed=0)
    decoded = tokenizer.decode(tokenizer.encode(two, seed=[0, 1]))
    assert [decode_dtmf(a.samples, 8000) for a in decoded] == [(4, 7), (1, 0, 9)]
