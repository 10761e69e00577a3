"""Code logits tied to the codebook's geometry (``layout.code_geometry``), a lever of issue #33.

A media code's logit is the hidden state times the code's output row, learned for each of K codes
apart: what the transformer learns about one code teaches it nothing about the codes next to it in
the latent space. With the geometry, each media range adds to its code logits a term computed from
the codebook vectors e_k (the tokenizer's, fixed):

    logit_k += (W h) · e_k + b · |e_k|²

a learned map W of the hidden state h into the latent space and a learned scale b: the negative
squared distance between W h and e_k up to a constant, when b = −½. Nearby codes get nearby logits,
so a hidden state that predicts a place in the latent space predicts every code around it. W and
b start at zero: an untrained head adds nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from unitok.tokenizer.vocabulary import Vocabulary

if TYPE_CHECKING:
    from unitok.tokenizer.media_tokenizer import MediaTokenizer


class CodeGeometry(nn.Module):
    """The geometry term of one media range: hidden states (…, H) -> (…, K) to add to the logits of
    its K codes, which start at global id `offset`."""

    def __init__(self, codebook: torch.Tensor, offset: int, hidden_size: int):
        super().__init__()
        self.offset = offset
        # the tokenizer's codebook: rebuilt from it on loading, never trained here
        self.register_buffer("codebook", codebook.detach().clone().float(), persistent=False)
        self.to_latent = nn.Linear(hidden_size, codebook.shape[1], bias=False)
        nn.init.zeros_(self.to_latent.weight)
        self.norm_scale = nn.Parameter(torch.zeros(()))

    @property
    def end(self) -> int:
        return self.offset + self.codebook.shape[0]

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        codebook = self.codebook.to(hidden.dtype)
        return self.to_latent(hidden) @ codebook.T + self.norm_scale.to(hidden.dtype) * codebook.square().sum(-1)


def build_code_heads(enabled: bool, vocab: Vocabulary, tokenizers: dict[str, "MediaTokenizer"],
                     hidden_size: int) -> dict[str, CodeGeometry]:
    """A geometry head per media range (name -> tokenizer) where the layout asks for them."""
    if not enabled:
        return {}
    return {name: CodeGeometry(t.quantizer.codebook, vocab.range(name).offset, hidden_size)
            for name, t in tokenizers.items()}
