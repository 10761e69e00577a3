"""Fixtures of both tiers: a tiny tokenizer and vocabularies (`helpers.py` builds them)."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import image_layout, tiny_tokenizer_spec
from unitok.tokenizer.media_tokenizer import MediaTokenizer
from unitok.tokenizer.vocabulary import MediaLayout, Vocabulary


@pytest.fixture
def tiny_tokenizer() -> MediaTokenizer:
    torch.manual_seed(0)
    return MediaTokenizer(tiny_tokenizer_spec()).eval()


@pytest.fixture
def vocab() -> Vocabulary:
    return Vocabulary.build(40, "texthash", [image_layout()])


@pytest.fixture
def audio_vocab() -> Vocabulary:
    """`vocab` and an audio range of 64 codes, for spans of 2 blocks of 5 positions, C = 4."""
    audio = MediaLayout("audio", "audio", 64, "audiohash", num_blocks=2, num_positions=5, latent_channels=4)
    return Vocabulary.build(40, "texthash", [image_layout(), audio])
