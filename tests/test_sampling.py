"""Cached sampling: equal to a full recompute, inside the codebook range, sampler options."""

import pytest
import torch

from unitok.model import StreamModel, batch_logits, build_transformer
from unitok.sampling import CachedDecoder, SamplerConfig, choose, sample_media, sample_text
from unitok.streams import StreamBuilder, collate
from unitok.vocabulary import MediaLayout, Vocabulary

from .conftest import IMAGE_QUANTIZER, TINY_MODEL, image_layout, span_states

states = IMAGE_QUANTIZER.running_states

N, BLOCKS = 4, 3


@pytest.fixture
def model(vocab):
    torch.manual_seed(0)
    return StreamModel(build_transformer(TINY_MODEL, vocab)).eval()


def text(vocab, ids):
    return [vocab.range("text").offset + i for i in ids]


def full_logits(model, vocab, prompts, blocks, order="timestep"):
    streams = [StreamBuilder(vocab, order).special("<bos>").text(text(vocab, p)).media("image", b, span_states(vocab, b)).build()
               for p, b in zip(prompts, blocks)]
    batch = collate([[s] for s in streams], pad_id=0, pad_side="left")
    with torch.no_grad():
        return batch_logits(model, batch)


def test_cached_block_steps_equal_full_recompute(model, vocab):
    prompts = [[1, 2, 3], [4]]  # different lengths: exercises left padding
    blocks = [vocab.to_global("image", torch.randint(0, 64, (BLOCKS, N))) for _ in prompts]
    prefix = [StreamBuilder(vocab).special("<bos>").text(text(vocab, p)).media("image", b[:1], span_states(vocab, b[:1]), complete=False).build()
              for p, b in zip(prompts, blocks)]
    with torch.no_grad():
        decoder = CachedDecoder(model, collate([[s] for s in prefix], pad_id=0, pad_side="left"))
        cached = [decoder.logits[:, -N:]]
        for k in range(1, BLOCKS):
            rows = vocab.position_rows("image", BLOCKS, N)[k]
            fed_states = torch.stack([span_states(vocab, b[: k + 1])[k] for b in blocks])
            cached.append(decoder.feed(torch.stack([b[k] for b in blocks]), rows, fed_states, block=True))
    reference = full_logits(model, vocab, prompts, blocks)
    length = reference.shape[1]
    for k in range(BLOCKS):
        start = length - 1 - (BLOCKS - k) * N  # the full stream ends with <eoi>
        torch.testing.assert_close(cached[k], reference[:, start:start + N], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("given", [1, 2])
def test_greedy_sampler_matches_full_recompute(model, vocab, given):
    """Every block the cached sampler picks greedily is the argmax of a full recompute, whether
    it starts from k_T alone or continues a trajectory from its first `given` blocks."""
    first = torch.randint(0, 64, (2, given, N))
    greedy = SamplerConfig(gumbel_scale=0.0, guidance_scale=2.0)
    prompts = [text(vocab, [1, 2]), text(vocab, [3])]
    ids = sample_media(model, vocab, "image", prompts, first, BLOCKS, N, "timestep", greedy, states)
    assert torch.equal(ids[:, :given], first)
    codes = vocab.range("image")
    g = vocab.to_global("image", ids)
    cond = full_logits(model, vocab, [[1, 2], [3]], g)
    uncond = full_logits(model, vocab, [[], []], g)
    for k in range(given, BLOCKS):
        # block k - 1 predicts block k; both streams end with <eoi> but differ in length
        predicting = slice(-1 - (BLOCKS - k + 1) * N, -1 - (BLOCKS - k) * N)
        guided = uncond[:, predicting] + 2.0 * (cond[:, predicting] - uncond[:, predicting])
        assert torch.equal(guided[..., codes.offset:codes.end].argmax(-1), ids[:, k])


def test_raster_sampler_matches_full_recompute(model, vocab):
    greedy = SamplerConfig(gumbel_scale=0.0)
    ids = sample_media(model, vocab, "image", [text(vocab, [5, 6])], None, 1, N, "raster", greedy, states)
    assert ids.shape == (1, 1, N)
    codes = vocab.range("image")
    logits = full_logits(model, vocab, [[5, 6]], [vocab.to_global("image", ids[0])], order="raster")
    boi = 1 + 2
    expected = logits[0, boi:boi + N, codes.offset:codes.end].argmax(-1)
    assert torch.equal(expected, ids[0, 0])


def test_sampled_ids_stay_in_the_codebook_range(model, vocab):
    # bias the model towards every other id (text, specials, position rows): the sampler must
    # still only emit image codes
    codes = vocab.range("image")
    with torch.no_grad():
        model.transformer.lm_head.weight[: codes.offset] += 5.0
        model.transformer.lm_head.weight[codes.end:] += 5.0
    ids = sample_media(model, vocab, "image", [text(vocab, [1])] * 3, torch.zeros(3, 1, N, dtype=torch.long), BLOCKS, N,
                       "timestep", SamplerConfig(temperature=2.0), states, torch.Generator().manual_seed(0))
    assert ids.min() >= 0 and ids.max() < 64


def test_each_media_span_stays_in_its_own_range_when_there_are_several():
    vocab = Vocabulary.build(40, "t", [image_layout(), MediaLayout("audio", "audio", 32, "a", num_blocks=3, num_positions=N,
                                                                         latent_channels=4)])
    torch.manual_seed(0)
    model = StreamModel(build_transformer(TINY_MODEL, vocab)).eval()
    audio = vocab.range("audio")
    with torch.no_grad():  # every other id, the image codes included, is favoured
        model.transformer.lm_head.weight[: audio.offset] += 5.0
        model.transformer.lm_head.weight[audio.end:] += 5.0
    ids = sample_media(model, vocab, "audio", [text(vocab, [1])] * 3, torch.zeros(3, 1, N, dtype=torch.long), 3, N,
                       "timestep", SamplerConfig(temperature=2.0), states, torch.Generator().manual_seed(0))
    assert ids.shape == (3, 3, N) and ids.min() >= 0 and ids.max() < audio.size


def test_text_after_a_media_span_is_text_only_and_equals_full_recompute(model, vocab):
    """Greedy media→text with the KV cache picks what a full forward of the growing stream picks,
    among text ids and <eos> only, even when the model favours media codes."""
    with torch.no_grad():
        codes = vocab.range("image")
        model.transformer.lm_head.weight[codes.offset : codes.end] += 5.0
    blocks = vocab.to_global("image", torch.randint(0, 64, (2, BLOCKS, N), generator=torch.Generator().manual_seed(1)))
    prefixes = [StreamBuilder(vocab, "timestep").special("<bos>").media("image", b, span_states(vocab, b), trained=False).build() for b in blocks]
    got = sample_text(model, vocab, prefixes, 6, SamplerConfig(gumbel_scale=0.0))
    allowed = torch.full((model.transformer.config.vocab_size,), float("-inf"))
    text_range = vocab.range("text")
    allowed[text_range.offset : text_range.end] = 0.0
    allowed[vocab.special_id("<eos>")] = 0.0
    for b, row in zip(blocks, got):
        expected = []
        while len(expected) < 6:
            stream = (StreamBuilder(vocab, "timestep").special("<bos>").media("image", b, span_states(vocab, b), trained=False)
                      .text([text_range.offset + t for t in expected]).build())
            with torch.no_grad():
                logits = batch_logits(model, collate([[stream]], pad_id=0))[0, -1]
            best = int((logits + allowed).argmax())
            if best == vocab.special_id("<eos>"):
                break
            expected.append(best - text_range.offset)
        assert row == expected and all(0 <= t < text_range.size for t in row)
    assert any(got), "the check saw text, not only <eos>"
    with pytest.raises(ValueError, match="guidance_scale applies to text→media"):
        sample_text(model, vocab, prefixes, 2, SamplerConfig(guidance_scale=2.0))


def test_choose_top_k_top_p_and_seeded_gumbel():
    logits = torch.tensor([[4.0, 3.0, 1.0, -2.0]]).repeat(500, 1)
    g = torch.Generator().manual_seed(0)
    top1 = choose(logits, SamplerConfig(top_k=1), g)
    assert (top1 == 0).all()
    top2 = choose(logits, SamplerConfig(top_k=2), g)
    assert set(top2.tolist()) == {0, 1}
    nucleus = choose(logits, SamplerConfig(top_p=0.5), g)  # p(0) ≈ 0.71 > 0.5: only id 0 survives
    assert (nucleus == 0).all()
    a = choose(logits, SamplerConfig(), torch.Generator().manual_seed(1))
    b = choose(logits, SamplerConfig(), torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and len(set(a.tolist())) > 1


def test_sampler_config_rejects_bad_values():
    for bad in ({"temperature": 0}, {"top_k": 0}, {"top_p": 1.5}, {"gumbel_scale": -1}):
        with pytest.raises(ValueError):
            SamplerConfig(**bad)
