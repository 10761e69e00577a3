"""Where text→image goes wrong, measured on held-out digits-world items and their own tokens,
and whether media→text reads the media at all.

- `first_step_digit_ce_gain`: how much worse the LM predicts the first generated block
  ``k_{T−1}``, every cell undecided (a sampler's first look at it), when the caption names another
  digit. About 0 means the model does not read the digit, whatever the sampler does afterwards.
- `digit_accuracy_given_first_step`: digit accuracy when ``k_T`` and ``k_{T−1}`` are the item's
  own tokens and the model generates only the rest: what the later, refining blocks keep.
- `caption_loss_matched_vs_shuffled`: the held-out caption loss after each item's own media and
  after another item's (nats per caption token), and their gap `caption_ce_gain_from_media`.
  About 0 means the captions do not depend on the media.
"""

from __future__ import annotations

import re

import numpy as np
import torch

from unitok.benchmarks.digits.images import image_file
from unitok.benchmarks.digits.scenes import DIGIT_WORDS, Item
from unitok.core.seeds import item_generators
from unitok.lm.documents import MediaSpan, media_spans, task_document
from unitok.lm.losses import heldout_loss
from unitok.pipeline import UniTokPipeline


def media_ids_of(shards, pipe: UniTokPipeline, items: list[Item]) -> torch.Tensor:
    """(n, blocks, N) local ids of `items` from a shard set (keyed by image file)."""
    tokenizer = pipe.tokenizer_for("image")
    row_of = {key: row for row, key in enumerate(shards["key"])}
    rows = shards.select([row_of[image_file(item)] for item in items])
    media = torch.tensor(rows["media_ids"], dtype=torch.long).reshape(len(rows), tokenizer.num_blocks, -1)
    return pipe.vocabulary.to_local(tokenizer.name, media)


def other_digit_caption(caption: str, digit: int) -> str:
    """The caption with its digit (numeral or word) replaced by digit + 3 (mod 10)."""
    other = (digit + 3) % 10
    caption = re.sub(rf"\b{digit}\b", str(other), caption)
    return re.sub(rf"\b{DIGIT_WORDS[digit]}\b", DIGIT_WORDS[other], caption)


def first_step_digit_ce_gain(pipe: UniTokPipeline, items: list[Item], media_ids: torch.Tensor) -> float:
    """Cross-entropy (nats per code) of ``k_{T−1}``, every cell undecided, with the digit swapped
    minus with the true caption."""
    tokenizer = pipe.tokenizer_for("image")
    model, vocab = pipe.model, pipe.vocabulary
    blocks = vocab.to_global(tokenizer.name, media_ids)
    contexts, queries = (inputs.cpu() for inputs in tokenizer.quantizer.block_inputs(media_ids.to(tokenizer.device)))
    spans = [MediaSpan(tokenizer.name, b, context, query, tokenizer.latent_shape)
             for b, context, query in zip(blocks, contexts, queries)]
    one_group = [[0, media_ids.shape[2]]]  # timestep order: the first generated block alone, every cell a query

    def first_step_ce(captions: list[str]) -> float:
        docs = [task_document(vocab, pipe.layout, "text_to_image", pipe.encode_prompt(c), span, one_group)
                for c, span in zip(captions, spans)]
        return heldout_loss(model, vocab, {"text_to_image": docs}, pipe.device)["ce_per_block"][0]

    swapped = [other_digit_caption(it.caption, it.scene.digit) for it in items]
    return first_step_ce(swapped) - first_step_ce([it.caption for it in items])


def digit_accuracy_given_first_step(pipe: UniTokPipeline, items: list[Item], media_ids: torch.Tensor, classifier,
                                    seed: int) -> float:
    """Digit accuracy of samples that keep the item's own ``k_T, k_{T−1}`` and generate the rest
    with the pipeline's image sampler."""
    tokenizer = pipe.tokenizer_for("image")
    prompts = [pipe.encode_prompt(it.caption) for it in items]
    ids = pipe.sampler_for("image").sample(pipe.model, pipe.vocabulary, tokenizer.name,
                                           tokenizer.quantizer, prompts, media_ids[:, :2],
                                           item_generators([seed + i for i in range(len(items))]))
    images = np.stack([np.asarray(im) for im in tokenizer.decode(ids)])
    return float((classifier.predict(images) == np.array([it.scene.digit for it in items])).mean())


def caption_loss_matched_vs_shuffled(pipe: UniTokPipeline, modality: str, shards, count: int) -> dict:
    """Held-out caption cross-entropy after each item's own media and after the next item's (a
    `<modality>_to_text` diagnostic, over `count` shard rows): a large gap says the captions read
    the media."""
    vocab = pipe.vocabulary
    rows = shards.select(range(min(count, len(shards)))).to_list()
    spans = media_spans(rows, vocab, pipe.media_tokenizers)
    task = f"{modality}_to_text"

    def caption_ce(media_of: list[int]) -> float:
        docs = [task_document(vocab, pipe.layout, task, row["text_ids"], spans[m]) for row, m in zip(rows, media_of)]
        return heldout_loss(pipe.model, vocab, {task: docs}, pipe.device)["loss"]

    own = list(range(len(rows)))
    matched, shuffled = caption_ce(own), caption_ce(own[1:] + own[:1])
    return {"caption_loss_matched": matched, "caption_loss_shuffled": shuffled,
            "caption_ce_gain_from_media": shuffled - matched}
