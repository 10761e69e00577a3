"""The transformer: a Hugging Face Llama-family decoder built from ``models/*.yaml``.

It is a plain `LlamaForCausalLM` trained from scratch, so `save_pretrained`, `from_pretrained`,
safetensors, accelerate, FSDP and PEFT work as users expect. unitok only decides the inputs
(ids, 4D block-causal masks, position ids) and the targets; see `streams.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from .config import load_config
from .streams import IGNORE, Batch
from .vocabulary import Vocabulary


@dataclass(frozen=True)
class ModelSpec:
    """Transformer size (``models/*.yaml``)."""

    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int | None = None  # None = multi-head attention; fewer = grouped-query
    intermediate_size: int = 704  # SwiGLU width, ≈ 8/3 · hidden rounded to a multiple of 64
    max_position_embeddings: int = 2048
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = True
    initializer_range: float = 0.02

    def __post_init__(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.num_kv_heads is not None and self.num_heads % self.num_kv_heads:
            raise ValueError("num_heads must be a multiple of num_kv_heads")

    @classmethod
    def load(cls, path: str | Path) -> "ModelSpec":
        return load_config(path, cls)


def padded_vocab_size(vocab: Vocabulary, multiple: int = 64) -> int:
    """Embedding rows rounded up for efficient matmuls; the extra ids are never sampled."""
    return -(-vocab.size // multiple) * multiple


def build_transformer(spec: ModelSpec, vocab: Vocabulary) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=padded_vocab_size(vocab),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads or spec.num_heads,
        max_position_embeddings=spec.max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": spec.rope_theta},
        tie_word_embeddings=spec.tie_word_embeddings,
        initializer_range=spec.initializer_range,
        pad_token_id=vocab.special_id("<pad>"),
        bos_token_id=vocab.special_id("<bos>"),
        eos_token_id=vocab.special_id("<eos>"),
        attn_implementation="sdpa",
    )
    return LlamaForCausalLM(config)


def stream_loss(model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, int]:
    """Mean cross-entropy over every labelled position (targets are already aligned: no shift)."""
    logits = model(
        input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids
    ).logits  # (B, L, V)
    count = int((batch.targets != IGNORE).sum())
    loss = F.cross_entropy(logits.flatten(0, 1).float(), batch.targets.flatten(), ignore_index=IGNORE)
    return loss, count
