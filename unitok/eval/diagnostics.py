"""Where text→image goes wrong, measured on held-out digits-world items and their own tokens.

- `first_step_digit_ce_gain`: how much worse the LM predicts the first generated block
  ``k_{T−1}`` when the caption names another digit. About 0 means the model does not read the
  digit at all, whatever the sampler does afterwards.
- `digit_accuracy_given_first_step`: digit accuracy when ``k_T`` and ``k_{T−1}`` are the item's
  own tokens and the model generates only the rest: what the later, refining steps achieve.
"""

from __future__ import annotations

import re

import numpy as np
import torch

from ..digits_world import DIGIT_WORDS, Item, image_file
from ..model import StreamModel
from ..pipeline import UniTokPipeline
from ..sampling import SamplerConfig, sample_media
from ..streams import task_document
from ..training.lm import TokenItems, heldout_loss


def heldout_media_ids(shards, pipe: UniTokPipeline, items: list[Item]) -> torch.Tensor:
    """(n, blocks, N) local ids of `items` from the held-out shard set (keyed by image file)."""
    tokenizer = pipe.tokenizer_for("image")
    row_of = {key: row for row, key in enumerate(shards["key"])}
    media = TokenItems.from_dataset(shards, tokenizer.num_blocks).media_ids
    rows = [row_of[image_file(item)] for item in items]
    return pipe.vocabulary.to_local(tokenizer.name, media[rows])


def other_digit_caption(caption: str, digit: int) -> str:
    """The caption with its digit (numeral or word) replaced by digit + 3 (mod 10)."""
    other = (digit + 3) % 10
    caption = re.sub(rf"\b{digit}\b", str(other), caption)
    return re.sub(rf"\b{DIGIT_WORDS[digit]}\b", DIGIT_WORDS[other], caption)


def first_step_digit_ce_gain(pipe: UniTokPipeline, items: list[Item], media_ids: torch.Tensor) -> float:
    """Cross-entropy (nats per code) of ``k_{T−1}`` with the digit swapped minus with the true caption."""
    tokenizer = pipe.tokenizer_for("image")
    model, vocab = StreamModel(pipe.transformer), pipe.vocabulary
    blocks = vocab.to_global(tokenizer.name, media_ids)

    def first_step_ce(captions: list[str]) -> float:
        docs = [task_document(vocab, pipe.media_order, "text_to_image", pipe.encode_prompt(c), tokenizer.name, b)
                for c, b in zip(captions, blocks)]
        return heldout_loss(model, vocab, docs, pipe.device)["ce_per_block"][0]

    swapped = [other_digit_caption(it.caption, it.scene.digit) for it in items]
    return first_step_ce(swapped) - first_step_ce([it.caption for it in items])


def digit_accuracy_given_first_step(pipe: UniTokPipeline, items: list[Item], media_ids: torch.Tensor,
                                    sampler: SamplerConfig, classifier, seed: int) -> float:
    """Digit accuracy of samples that keep the item's own ``k_T, k_{T−1}`` and generate the rest."""
    tokenizer = pipe.tokenizer_for("image")
    prompts = [pipe.encode_prompt(it.caption) for it in items]
    ids = sample_media(StreamModel(pipe.transformer), pipe.vocabulary, tokenizer.name, prompts, media_ids[:, :2],
                       tokenizer.num_blocks, tokenizer.num_positions, pipe.media_order, sampler,
                       torch.Generator().manual_seed(seed))
    images = np.stack([np.asarray(im) for im in tokenizer.decode(ids)])
    return float((classifier.predict(images) == np.array([it.scene.digit for it in items])).mean())
