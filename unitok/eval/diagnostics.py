"""Where text→image goes wrong, measured on held-out digits-world items and their own tokens,
and whether media→text reads the media at all.

- `first_step_digit_ce_gain`: how much worse the LM predicts the first generated block
  ``k_{T−1}`` when the caption names another digit. About 0 means the model does not read the
  digit at all, whatever the sampler does afterwards.
- `digit_accuracy_given_first_step`: digit accuracy when ``k_T`` and ``k_{T−1}`` are the item's
  own tokens and the model generates only the rest: what the later, refining steps achieve.
- `digit_accuracy_factorized_first_step`: the same, but each cell's ``(k_T, k_{T−1})`` is taken
  from a random training item of the same digit, position and size. That is a first step whose
  cells are drawn independently, each from the data's own distribution: the ceiling of a
  parallel first step, however well the model learns its per-cell distributions.
- `caption_ce_gain_from_media`: how much worse the LM predicts held-out captions after another
  item's media span than after its own (nats per caption token). About 0 means the captions do
  not depend on the media.
"""

from __future__ import annotations

import re
from collections import defaultdict

import numpy as np
import torch

from ..digits_world import DIGIT_WORDS, Item, image_file
from ..model import StreamModel
from ..pipeline import UniTokPipeline
from ..sampling import SamplerConfig, sample_media
from ..streams import task_document
from ..training.data import media_states
from ..training.lm import heldout_loss


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
    """Cross-entropy (nats per code) of ``k_{T−1}`` with the digit swapped minus with the true caption."""
    tokenizer = pipe.tokenizer_for("image")
    model, vocab = StreamModel(pipe.transformer), pipe.vocabulary
    blocks = vocab.to_global(tokenizer.name, media_ids)
    states = tokenizer.quantizer.running_states(media_ids.to(tokenizer.device)).cpu()

    def first_step_ce(captions: list[str]) -> float:
        docs = [task_document(vocab, pipe.media_order, "text_to_image", pipe.encode_prompt(c), tokenizer.name, b, s)
                for c, b, s in zip(captions, blocks, states)]
        return heldout_loss(model, vocab, {"text_to_image": docs}, pipe.device)["ce_per_block"][0]

    swapped = [other_digit_caption(it.caption, it.scene.digit) for it in items]
    return first_step_ce(swapped) - first_step_ce([it.caption for it in items])


def digit_accuracy_given_first_step(pipe: UniTokPipeline, items: list[Item], media_ids: torch.Tensor,
                                    sampler: SamplerConfig, classifier, seed: int) -> float:
    """Digit accuracy of samples that keep the item's own ``k_T, k_{T−1}`` and generate the rest."""
    return _digit_accuracy_continuing(pipe, items, media_ids[:, :2], sampler, classifier, seed)


def digit_accuracy_factorized_first_step(pipe: UniTokPipeline, items: list[Item], train_items: list[Item],
                                         train_media_ids: torch.Tensor, sampler: SamplerConfig, classifier,
                                         seed: int) -> float:
    """Digit accuracy of samples whose first two blocks are a per-cell collage of training items of
    the item's digit, position and size (`factorized_first_blocks`), the model generating the rest."""
    first = factorized_first_blocks(items, train_items, train_media_ids, seed)
    return _digit_accuracy_continuing(pipe, items, first, sampler, classifier, seed)


def factorized_first_blocks(items: list[Item], train_items: list[Item], train_media_ids: torch.Tensor,
                            seed: int) -> torch.Tensor:
    """(n, 2, N) local ids: for every cell, ``(k_T, k_{T−1})`` of its own random donor among the
    training items that look like the item (same digit, position and size; same digit where a
    small world has no such item). The pair comes from one donor, so each cell's noise and first
    step stay consistent."""
    donors_of = defaultdict(list)
    for row, it in enumerate(train_items):
        donors_of[_looks(it)].append(row)
        donors_of[it.scene.digit].append(row)
    generator = torch.Generator().manual_seed(seed)
    N = train_media_ids.shape[2]
    cells = torch.arange(N)
    blocks = []
    for it in items:
        pool = torch.tensor(donors_of.get(_looks(it)) or donors_of[it.scene.digit])
        if len(pool) == 0:
            raise ValueError(f"no training item shows digit {it.scene.digit}")
        donors = pool[torch.randint(len(pool), (N,), generator=generator)]
        blocks.append(train_media_ids[donors, :2, cells].T)  # (N, 2) -> (2, N)
    return torch.stack(blocks)


def _looks(item: Item) -> tuple:
    return item.scene.digit, item.scene.position, item.scene.size


def _digit_accuracy_continuing(pipe: UniTokPipeline, items: list[Item], first_blocks: torch.Tensor,
                               sampler: SamplerConfig, classifier, seed: int) -> float:
    tokenizer = pipe.tokenizer_for("image")
    prompts = [pipe.encode_prompt(it.caption) for it in items]
    ids = sample_media(StreamModel(pipe.transformer), pipe.vocabulary, tokenizer.name, prompts, first_blocks,
                       tokenizer.num_blocks, tokenizer.num_positions, pipe.media_order, sampler,
                       tokenizer.quantizer.running_states, torch.Generator().manual_seed(seed))
    images = np.stack([np.asarray(im) for im in tokenizer.decode(ids)])
    return float((classifier.predict(images) == np.array([it.scene.digit for it in items])).mean())


def caption_ce_gain_from_media(pipe: UniTokPipeline, modality: str, shards, count: int) -> float:
    """Caption cross-entropy after the next item's span minus after the item's own, over `count`
    held-out shard rows (a `<modality>_to_text` diagnostic)."""
    vocab = pipe.vocabulary
    rows = shards.select(range(min(count, len(shards)))).to_list()
    media = media_states(rows, vocab, pipe.media_tokenizers)
    task = f"{modality}_to_text"

    def caption_ce(media_of: list[int]) -> float:
        docs = [task_document(vocab, pipe.media_order, task, row["text_ids"], row["media"], *media[m])
                for row, m in zip(rows, media_of)]
        return heldout_loss(StreamModel(pipe.transformer), vocab, {task: docs}, pipe.device)["loss"]

    own = list(range(len(rows)))
    return caption_ce(own[1:] + own[:1]) - caption_ce(own)
