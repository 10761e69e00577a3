"""The transformer: a Hugging Face Llama-family decoder built from a model spec (``models/*.yaml``).

It is a plain `LlamaForCausalLM` trained from scratch, so `save_pretrained`, `from_pretrained`,
safetensors, accelerate and FSDP work as users expect. unitok only decides the inputs (ids, 4D
masks, position ids, media position rows) and the targets: `streams.py` lays a document out,
`batch.py` turns its reach and segments into masks.
`StreamModel` is the one place that turns a stream's inputs into logits; it holds the transformer
and the *media modules* its layout asks for: the conv readers (`reader.py`) and the code geometry
heads (`code_geometry.py`), saved beside the transformer's weights as ``media_modules.safetensors``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from unitok.core.config import Config, bounded, load_config
from unitok.core.errors import UnitokError
from unitok.lm.batch import Batch
from unitok.lm.code_geometry import CodeGeometry, build_code_heads
from unitok.lm.reader import ConvReader, build_readers
from unitok.tokenizer.vocabulary import TokenRange, Vocabulary

if TYPE_CHECKING:
    from unitok.lm.layout import StreamLayout
    from unitok.tokenizer.media_tokenizer import MediaTokenizer


@dataclass(frozen=True)
class ModelSpec(Config):
    """Transformer size (``models/*.yaml``)."""

    hidden_size: int = bounded(256, ge=1)
    num_layers: int = bounded(4, ge=1)
    num_heads: int = bounded(4, ge=1)
    num_kv_heads: int | None = bounded(None, ge=1)  # None = multi-head attention; fewer = grouped-query
    intermediate_size: int = bounded(704, ge=1)  # SwiGLU width, ≈ 8/3 · hidden rounded to a multiple of 64
    max_position_embeddings: int = bounded(2048, ge=1)
    rope_theta: float = bounded(10000.0, gt=0)
    tie_word_embeddings: bool = True
    initializer_range: float = bounded(0.02, gt=0)

    def rules(self):
        yield (self.hidden_size % max(self.num_heads, 1) == 0, "hidden_size",
               f"must be divisible by num_heads ({self.num_heads}), got {self.hidden_size}")
        yield (self.num_kv_heads is None or self.num_heads % max(self.num_kv_heads, 1) == 0, "num_kv_heads",
               f"must divide num_heads ({self.num_heads}), got {self.num_kv_heads}")

    @classmethod
    def load(cls, path: str | Path) -> "ModelSpec":
        return load_config(path, cls)


MEDIA_MODULES_FILE = "media_modules.safetensors"


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


class StreamModel(nn.Module):
    """The transformer with unitok's input rule: a media position enters as the sum of the
    embeddings of its code (or the mask row while undecided), its latent cell and its noise step
    (`Batch.media_rows`), plus its state inputs (2C floats, `Batch.media_states`: the running RDPM
    state at its cell, its own code included once decided, and the noise ε̂; more for a read-out
    cell that takes a neighbourhood) times as many state rows from its first one, a learned linear
    map; every other token as its own embedding. The extra rows live in the transformer's
    embedding table, and the sum is taken inside `forward`, where DDP and FSDP expect every use of a
    parameter. A range with a conv reader adds its output to its read-out positions' linear map; a
    range with a code geometry head adds its term to its code logits.
    `save_pretrained` writes the transformer as transformers does and the media modules beside it."""

    def __init__(self, transformer: LlamaForCausalLM, readers: dict[str, ConvReader] | None = None,
                 code_heads: dict[str, CodeGeometry] | None = None,
                 tied_codes: Sequence[tuple[TokenRange, TokenRange]] = ()):
        super().__init__()
        self.transformer = transformer
        self.readers = nn.ModuleDict(readers or {})  # media range -> its conv reader (`reader.py`)
        self.code_heads = nn.ModuleDict(code_heads or {})  # media range -> its code geometry (`code_geometry.py`)
        self.tied_codes = tuple(tied_codes)  # (codes, the codes whose rows they use): `layout.tied_codes`
        # first state row of a range's read-out positions -> its reader, which makes their inputs
        self._reader_of_row = {reader.state_row: name for name, reader in self.readers.items()}

    def save_pretrained(self, directory: str | Path, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        """The transformer's `save_pretrained` folder (config.json, model.safetensors), plus
        ``media_modules.safetensors`` with media modules; `state_dict` (of this module) where
        accelerate gathered it."""
        weights = self.state_dict() if state_dict is None else state_dict
        self.transformer.save_pretrained(directory, safe_serialization=True, state_dict={
            name.removeprefix("transformer."): w for name, w in weights.items() if name.startswith("transformer.")})
        modules = {name: w.contiguous() for name, w in weights.items() if not name.startswith("transformer.")}
        if modules:
            save_file(modules, str(Path(directory) / MEDIA_MODULES_FILE))

    @classmethod
    def from_pretrained(cls, directory: str | Path, readers: dict[str, ConvReader] | None = None,
                        code_heads: dict[str, CodeGeometry] | None = None,
                        tied_codes: Sequence[tuple[TokenRange, TokenRange]] = ()) -> "StreamModel":
        """A saved model: its transformer, and the weights of its media modules (`media_modules`)
        when there are any."""
        model = cls(LlamaForCausalLM.from_pretrained(directory, use_safetensors=True), readers, code_heads,
                    tied_codes)
        model.load_media_modules(directory)
        return model

    def load_media_modules(self, directory: str | Path) -> None:
        """The media modules' weights saved beside a transformer in `directory` (none to load without)."""
        expected = {name for name in self.state_dict() if not name.startswith("transformer.")}
        if not expected:
            return
        path = Path(directory) / MEDIA_MODULES_FILE
        if not path.is_file():
            raise UnitokError(f"{path}: missing; the layout asks for media modules (conv readers or code "
                              f"geometry), whose weights it holds")
        weights = load_file(str(path))
        if set(weights) != expected:
            raise UnitokError(f"{path}: does not match the layout's media modules (missing "
                              f"{sorted(expected - set(weights))}, unexpected {sorted(set(weights) - expected)})")
        self.load_state_dict(weights, strict=False)

    def forward(self, input_ids: torch.Tensor, media_rows: torch.Tensor, media_states: torch.Tensor,
                attention_mask: torch.Tensor, position_ids: torch.Tensor, cache=None,
                outputs_at: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, L, V); `cache` (a `DynamicCache`) is extended in place. With `outputs_at` (B, L) bool,
        only the logits (M, V) of those positions: training needs them at its targets alone (under
        half of a batch's positions), and the vocabulary projection and its softmax are a fifth of a
        training step's time."""
        table = self.transformer.get_input_embeddings()
        rows = media_rows.clamp_min(0)
        has_rows = (media_rows[..., :2] >= 0).unsqueeze(-1)  # (B, L, 2, 1)
        for codes, rows_of in self.tied_codes:  # a tied code enters as the code whose rows it uses
            tied = (input_ids >= codes.offset) & (input_ids < codes.end)
            input_ids = torch.where(tied, input_ids - codes.offset + rows_of.offset, input_ids)
        embeds = table(input_ids) + (table(rows[..., :2]) * has_rows).sum(dim=2)  # (B, L, H)
        coded = media_rows[..., 2] >= 0  # (B, L): media positions, the only ones with state inputs
        first_rows, states = media_rows[..., 2][coded], media_states[coded]  # (M,), (M, S)
        from_state = torch.zeros(*states.shape[:-1], embeds.shape[-1], dtype=embeds.dtype, device=embeds.device)
        for first in first_rows.unique().tolist():  # one state range per modality and kind of position
            of_range = first_rows == first
            # states are zero-padded beyond a range's width, so the rows past it weigh nothing
            weight = table.weight[first:first + states.shape[-1]]
            projected = states[of_range, :weight.shape[0]].to(weight.dtype) @ weight
            if first in self._reader_of_row:
                projected = projected + self.readers[self._reader_of_row[first]](states[of_range])
            from_state[of_range] = projected.to(embeds.dtype)  # autocast: bf16
        embeds = embeds.index_put((coded,), from_state, accumulate=True)
        hidden = self.transformer.model(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids,
                                        cache=cache, use_cache=cache is not None).last_hidden_state
        return self.logits(hidden if outputs_at is None else hidden[outputs_at])

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The vocabulary's logits of hidden states (…, H), with each code geometry head's term; a
        tied range's logits are those of the codes whose rows it uses."""
        logits = self.transformer.lm_head(hidden)
        for head in self.code_heads.values():
            logits[..., head.offset:head.end] += head(hidden)
        for codes, rows_of in self.tied_codes:
            logits[..., codes.offset:codes.end] = logits[..., rows_of.offset:rows_of.end]
        return logits


def batch_logits(model: nn.Module, batch: Batch, outputs_at: torch.Tensor | None = None) -> torch.Tensor:
    """(B, L, V) logits of a `StreamModel`, also when accelerate has wrapped it (DDP, FSDP); (M, V)
    at the positions `outputs_at` (B, L) only."""
    return model(batch.input_ids, batch.media_rows, batch.media_states, batch.attention_mask, batch.position_ids,
                 outputs_at=outputs_at)


def media_modules(layout: "StreamLayout", vocab: Vocabulary, tokenizers: dict[str, "MediaTokenizer"],
                  hidden_size: int) -> dict[str, dict[str, nn.Module]]:
    """The untrained modules `layout` asks for beside the transformer, as `StreamModel`'s keyword
    arguments: conv readers (`reader.build_readers`) and code geometry heads
    (`code_geometry.build_code_heads`; none for a tied range, which takes its target's)."""
    untied = {name: t for name, t in tokenizers.items() if name not in layout.tied_codes}
    return {"readers": build_readers(layout.reader, vocab, tokenizers, hidden_size),
            "code_heads": build_code_heads(layout.code_geometry, vocab, untied, hidden_size)}


def tied_code_ranges(layout: "StreamLayout", vocab: Vocabulary,
                     tokenizers: dict[str, "MediaTokenizer"]) -> list[tuple[TokenRange, TokenRange]]:
    """(codes, the codes whose rows they use) of each pair of `layout.tied_codes`, refused where the
    two tokenizers do not code with one codebook."""
    tied = []
    for name, target in layout.tied_codes.items():
        if not torch.equal(tokenizers[name].quantizer.codebook, tokenizers[target].quantizer.codebook):
            raise UnitokError(f"layout.tied_codes: {name} shares {target}'s code rows, but its tokenizer codes with "
                              f"another codebook (tie the codes of a tokenizer whose frames_from is {target})")
        tied.append((vocab.range(name), vocab.range(target)))
    return tied
