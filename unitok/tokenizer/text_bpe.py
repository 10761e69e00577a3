"""Text BPE: a sentencepiece model trained by the toolkit on the recipe's captions.

Ids here are *local* (sentencepiece piece ids); the vocabulary's "text" range maps them to
global ids. Special tokens live in the vocabulary, not in the BPE model, so sentencepiece's
own bos/eos/pad are disabled. Byte fallback keeps any prompt encodable without <unk>.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import sentencepiece as spm

from unitok.core.atomic import write_bytes_atomic, write_text_atomic
from unitok.core.config import Config, bounded

MODEL_NAME = "spm.model"
CONFIG_NAME = "config.json"


@dataclass(frozen=True)
class TextBPEConfig(Config):
    """A recipe's ``text_bpe:`` section."""

    vocab_size: int = bounded(512, ge=16)
    byte_fallback: bool = True


class TextBPE:
    def __init__(self, model_proto: bytes):
        self.model_proto = model_proto
        self.processor = spm.SentencePieceProcessor(model_proto=model_proto)

    @classmethod
    def train(cls, texts: Iterable[str], config: TextBPEConfig) -> "TextBPE":
        model = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(list(texts)),
            model_writer=model,
            model_type="bpe",
            vocab_size=config.vocab_size,
            byte_fallback=config.byte_fallback,
            character_coverage=1.0,
            hard_vocab_limit=False,  # small caption sets have fewer merges than vocab_size
            bos_id=-1,
            eos_id=-1,
            pad_id=-1,
            unk_id=0,
            num_threads=1,  # deterministic merges
            minloglevel=2,
        )
        return cls(model.getvalue())

    @property
    def vocab_size(self) -> int:
        return self.processor.get_piece_size()

    def encode(self, text: str) -> list[int]:
        return self.processor.encode(text.strip())

    def decode(self, ids: list[int]) -> str:
        return self.processor.decode([int(i) for i in ids])

    def content_hash(self) -> str:
        return hashlib.sha256(self.model_proto).hexdigest()[:16]

    def save_pretrained(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(directory / MODEL_NAME, self.model_proto)
        config = {"unitok_class": "TextBPE", "vocab_size": self.vocab_size, "content_hash": self.content_hash()}
        write_text_atomic(directory / CONFIG_NAME, json.dumps(config, indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "TextBPE":
        path = Path(directory) / MODEL_NAME
        if not path.is_file():
            raise FileNotFoundError(f"{directory}: no {MODEL_NAME}; not a saved TextBPE")
        return cls(path.read_bytes())
