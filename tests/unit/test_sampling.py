"""Samplers: a block in the groups of its decode schedule (cached passes equal the trained layout,
every cell decided once, one group = one pass), raster AR, media→text, the codebook range, sampler
options."""

import pytest
import torch

from tests.helpers import TINY_MODEL, TINY_VIDEO_SPEC, image_layout
from unitok.core.config import from_dict
from unitok.core.errors import UnitokError
from unitok.core.seeds import item_generators
from unitok.lm import sampling
from unitok.lm.batch import collate
from unitok.lm.documents import MediaSpan, task_document
from unitok.lm.layout import (
    DecodeSchedule,
    StreamLayout,
    cell_groups,
    cell_order,
    group_bounds,
    undecided_after_groups,
)
from unitok.lm.model import StreamModel, batch_logits, build_transformer
from unitok.lm.sampling import (
    GroupSampler,
    RasterSampler,
    SamplerConfig,
    choose,
    media_prefix,
    sample_text,
)
from unitok.lm.streams import StreamBuilder
from unitok.tokenizer.media_tokenizer import MediaTokenizer, TokenizerSpec
from unitok.tokenizer.rdpm import QuantizerConfig, RDPMQuantizer
from unitok.tokenizer.vocabulary import MediaLayout, Vocabulary

N, BLOCKS = 4, 3  # spans of k_T and two generated blocks of 4 cells
torch.manual_seed(1234)
IMAGE_QUANTIZER = RDPMQuantizer(QuantizerConfig(noise_steps=BLOCKS - 1, codebook_size=64), latent_channels=4)


@pytest.fixture
def vocab():
    return Vocabulary.build(40, "texthash", [MediaLayout("image", "image", 64, "imagehash", num_blocks=BLOCKS,
                                                         num_positions=N, latent_channels=4)])


def span_inputs(vocab, blocks):
    """Every cell decided."""
    return IMAGE_QUANTIZER.block_inputs(vocab.to_local("image", blocks)[None])[0][0]


class RecordingModel(StreamModel):
    """A StreamModel that keeps every pass's fed ids, cells, state inputs and logits."""

    def __init__(self, transformer):
        super().__init__(transformer)
        self.passes = []

    def forward(self, input_ids, media_rows, media_states, attention_mask, position_ids, cache=None, outputs_at=None):
        logits = super().forward(input_ids, media_rows, media_states, attention_mask, position_ids, cache, outputs_at)
        self.passes.append((input_ids.clone(), media_rows[..., 0].clone(), media_states.clone(), logits.clone()))
        return logits


@pytest.fixture
def model(vocab):
    torch.manual_seed(0)
    return RecordingModel(build_transformer(TINY_MODEL, vocab)).eval()


def text(vocab, ids):
    return [vocab.range("text").offset + i for i in ids]


def group_sampler(groups, group_sizes="cosine", **options):
    return GroupSampler(SamplerConfig(**{"guidance_scale": 2.0, **options}), DecodeSchedule(groups, group_sizes))


def sample(model, vocab, sampler, prompts, first, seed=0, name="image", quantizer=IMAGE_QUANTIZER):
    return sampler.sample(model, vocab, name, quantizer, prompts, first, item_generators([seed] * len(prompts)))


def trained_query_logits(model, vocab, prompt, local_ids, bounds, name="image", quantizer=IMAGE_QUANTIZER,
                         layout=StreamLayout(), latent_shape=()):
    """Logits of every query of a training document of the span `local_ids` (T+1, N) with the
    generated blocks' groups `bounds`, in document order (block, then cell order)."""
    decided, undecided = (inputs[0] for inputs in quantizer.block_inputs(local_ids[None]))
    span = MediaSpan(name, vocab.to_global(name, local_ids), decided, undecided, latent_shape)
    stream = task_document(vocab, layout, f"text_to_{name}", prompt, span, bounds)
    with torch.no_grad():
        logits = batch_logits(model, collate([[stream]], pad_id=0))[0]
    return logits[torch.tensor(stream.input_ids) == vocab.mask_id(name)]


@pytest.mark.parametrize("group_sizes", ["cosine", "linear"])
def test_cached_groups_equal_the_trained_layout_and_decide_every_cell_once(model, vocab, group_sizes):
    """Every pass's query logits equal those of a training document of the sampled span: the
    sampler gives each cell exactly the context it was trained with."""
    prompts = [text(vocab, [1, 2, 3]), text(vocab, [4])]  # different lengths: exercises left padding
    first = torch.randint(0, 64, (2, 1, N))
    groups = (3, 2)
    sampler = group_sampler(groups, group_sizes)
    ids = sample(model, vocab, sampler, prompts, first)
    passes = model.passes[1:]  # the first call is the prompt prefix
    assert len(passes) == sampler.passes(BLOCKS, N) == 5
    mask_id, cells = vocab.mask_id("image"), vocab.range("image.cells").offset
    bounds = [group_bounds(N, g, group_sizes) for g in groups]
    fed, cell, _, _ = passes[0]
    assert torch.equal(cell[0][fed[0] == mask_id] - cells, cell_order(N)[:bounds[0][1]]), \
        "the first pass queries the first group of the order"
    for row, prompt in enumerate(prompts + [[], []]):  # conditional rows, then unconditional ones
        trained = trained_query_logits(model, vocab, prompt, ids[row % 2], bounds)
        queried = torch.cat([logits[row][fed[row] == mask_id] for fed, _, _, logits in passes])
        torch.testing.assert_close(queried, trained, atol=1e-4, rtol=1e-4)
    for block, block_passes in ((1, passes[:3]), (2, passes[3:])):
        drawn = torch.cat([cell[0][fed[0] == mask_id] for fed, cell, _, _ in block_passes]) - cells
        assert sorted(drawn.tolist()) == list(range(N)), "every cell of a block is drawn exactly once"
        fed_contexts = torch.cat([fed[:2][fed[:2] != mask_id].view(2, -1) for fed, _, _, _ in block_passes], 1)
        context_cells = torch.cat([cell[0][fed[0] != mask_id] for fed, cell, _, _ in block_passes]) - cells
        assert torch.equal(fed_contexts, ids[:, block, context_cells] + vocab.range("image").offset), \
            "a context is its cell's drawn code"


def test_queries_with_a_neighbourhood_see_the_decided_cells_around_them_as_trained(vocab):
    """With `query_patch` 3 on a 3x3 latent, each query's state inputs hold the cells around it
    that earlier groups decided, and nothing else: cached passes equal the training document's
    logits, a first group's queries see no neighbour, a later one's see the drawn codes."""
    layout = StreamLayout(query_patch=3)
    nine = Vocabulary.build(40, "texthash", [MediaLayout("image", "image", 64, "imagehash", num_blocks=2,
                                                         num_positions=9, latent_channels=4)])
    nine = nine.with_state_widths(None, layout.query_width)
    torch.manual_seed(0)
    recording = RecordingModel(build_transformer(TINY_MODEL, nine)).eval()
    quantizer = RDPMQuantizer(QuantizerConfig(noise_steps=1, codebook_size=64), latent_channels=4)
    sampler = GroupSampler(SamplerConfig(guidance_scale=2.0), DecodeSchedule((3,)), 3, (3, 3))
    prompts = [text(nine, [1, 2, 3]), text(nine, [4])]
    ids = sampler.sample(recording, nine, "image", quantizer, prompts, torch.randint(0, 64, (2, 1, 9)),
                         item_generators([0, 0]))
    passes, mask_id = recording.passes[1:], nine.mask_id("image")
    bounds = [group_bounds(9, 3)]
    for row, prompt in enumerate(prompts + [[], []]):
        trained = trained_query_logits(recording, nine, prompt, ids[row % 2], bounds, quantizer=quantizer,
                                       layout=layout, latent_shape=(3, 3))
        queried = torch.cat([logits[row][fed[row] == mask_id] for fed, _, _, logits in passes])
        torch.testing.assert_close(queried, trained, atol=1e-4, rtol=1e-4)
    first_fed, _, first_states, _ = passes[0]
    queries = first_states[0][first_fed[0] == mask_id]
    assert queries.shape[-1] == (9 + 1) * 4 and not queries[:, 8:].any(), "the first group sees no decided cell"
    last_fed, last_cells, last_states, _ = passes[-1]
    decided = quantizer.block_inputs(ids[:1])[0][0, -1, :, :4]  # the clean block's drawn states (9, 4)
    order, groups = cell_order(9), cell_groups(bounds[0])
    cell = order[bounds[0][2]].item()  # a cell of the last group
    row = (last_cells[0] == nine.range("image.cells").offset + cell) & (last_fed[0] == mask_id)
    around = last_states[0][row][0, 8:].view(8, 4)
    assert around.any(), "a last-group cell has drawn neighbours"
    y, x = divmod(cell, 3)
    square = [(y + dy, x + dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
    for k, (ny, nx) in enumerate(square):
        inside = 0 <= ny < 3 and 0 <= nx < 3
        expected = decided[ny * 3 + nx] if inside and groups[ny * 3 + nx] < groups[cell] else torch.zeros(4)
        torch.testing.assert_close(around[k], expected)


def test_groups_on_a_3d_video_latent_decide_every_cell_once_as_trained_and_are_seeded():
    """The video tokenizer's latent is frames x height x width; its N cells are drawn in groups
    exactly as image cells: cached passes equal a full recompute of the trained layout, every
    cell once per block, the same seed the same clip."""
    torch.manual_seed(0)
    tokenizer = MediaTokenizer(from_dict(TokenizerSpec, TINY_VIDEO_SPEC)).eval()
    assert len(tokenizer.latent_shape) == 3
    n, num_blocks, quantizer = tokenizer.num_positions, tokenizer.num_blocks, tokenizer.quantizer
    vocab = Vocabulary.build(40, "texthash", [tokenizer.layout()])
    model = RecordingModel(build_transformer(TINY_MODEL, vocab)).eval()
    first = quantizer.quantize_noise(tokenizer.draw_noise(2, seeds=[0, 1])).unsqueeze(1)
    prompts, groups = [text(vocab, [1, 2, 3]), text(vocab, [4])], (5, 3)
    sampler = group_sampler(groups)
    ids = sample(model, vocab, sampler, prompts, first, name="video", quantizer=quantizer)
    passes, mask_id, cells = model.passes[1:], vocab.mask_id("video"), vocab.range("video.cells").offset
    assert ids.shape == (2, num_blocks, n) and len(passes) == sum(groups)
    bounds = [group_bounds(n, g) for g in groups]
    for row, prompt in enumerate(prompts + [[], []]):
        trained = trained_query_logits(model, vocab, prompt, ids[row % 2], bounds, name="video", quantizer=quantizer)
        queried = torch.cat([logits[row][fed[row] == mask_id] for fed, _, _, logits in passes])
        torch.testing.assert_close(queried, trained, atol=1e-4, rtol=1e-4)
    for block_passes in (passes[:groups[0]], passes[groups[0]:]):
        drawn = torch.cat([cell[0][fed[0] == mask_id] for fed, cell, _, _ in block_passes]) - cells
        assert sorted(drawn.tolist()) == list(range(n)), "every cell of a block is drawn exactly once"
    again = sample(model, vocab, sampler, prompts, first, name="video", quantizer=quantizer)
    other = sample(model, vocab, sampler, prompts, first, seed=1, name="video", quantizer=quantizer)
    assert torch.equal(ids, again) and not torch.equal(ids, other)


def test_one_group_per_block_is_the_one_pass_sampler(model, vocab):
    """With one group per block every cell of a block is drawn by one pass that holds only its
    queries: greedy, it is the argmax of a training document's one-group queries."""
    first = torch.randint(0, 64, (2, 1, N))
    prompts = [text(vocab, [1, 2]), text(vocab, [3])]
    greedy = GroupSampler(SamplerConfig(guidance_scale=1.0, gumbel_scale=0.0), DecodeSchedule((1, 1)))
    ids = sample(model, vocab, greedy, prompts, first)
    assert greedy.passes(BLOCKS, N) == BLOCKS - 1 == len(model.passes) - 1
    assert all((fed == vocab.mask_id("image")).all() for fed, _, _, _ in model.passes[1:])
    assert torch.equal(ids[:, :1], first)
    codes = vocab.range("image")
    order = cell_order(N)
    for row, prompt in enumerate(prompts):
        logits = trained_query_logits(model, vocab, prompt, ids[row], [[0, N]] * (BLOCKS - 1)).view(BLOCKS - 1, N, -1)
        assert torch.equal(logits[..., codes.offset:codes.end].argmax(-1), ids[row, 1:, order])


def test_group_samples_are_seeded_and_continue_a_given_trajectory(model, vocab):
    prompts = [text(vocab, [1, 2]), text(vocab, [3])]
    first = torch.randint(0, 64, (2, 2, N))  # k_T and k_{T-1} given: only the last block is drawn
    sampler = group_sampler((3, 2))
    a, b = sample(model, vocab, sampler, prompts, first), sample(model, vocab, sampler, prompts, first)
    assert torch.equal(a, b) and torch.equal(a[:, :2], first)
    assert len(model.passes) == 2 * (1 + 2)  # one prefix and the last block's 2 groups, twice
    assert not torch.equal(a, sample(model, vocab, sampler, prompts, first, seed=1))


def test_refine_temperature_applies_to_the_blocks_after_the_first_generated_one(model, vocab, monkeypatch):
    temperatures = []

    def recording_choose(logits, cfg, generator):
        temperatures.append(cfg.temperature)
        return choose(logits, cfg, generator)

    monkeypatch.setattr(sampling, "choose", recording_choose)
    prompts, noise = [text(vocab, [1, 2]), text(vocab, [3])], torch.randint(0, 64, (2, 1, N))
    plain = sample(model, vocab, group_sampler((2, 3)), prompts, noise)
    cold = sample(model, vocab, group_sampler((2, 3), refine_temperature=0.02), prompts, noise)
    assert temperatures == [1.0] * 5 + [1.0, 1.0, 0.02, 0.02, 0.02]  # a draw per group: k_{T-1}'s 2, k_0's 3
    assert torch.equal(cold[:, :2], plain[:, :2]) and not torch.equal(cold, plain)
    temperatures.clear()
    sample(model, vocab, group_sampler((2, 3), refine_temperature=0.02), prompts, plain[:, :2])
    assert temperatures == [0.02] * 3  # k_{T-1} given: only refining groups are drawn


def test_groups_must_fit_the_tokenizer_and_the_cells(model, vocab):
    with pytest.raises(ValueError, match="the decode schedule lists 3 blocks, but this tokenizer draws 2"):
        sample(model, vocab, group_sampler((2, 1, 1)), [text(vocab, [1])], torch.zeros(1, 1, N, dtype=torch.long))
    with pytest.raises(ValueError, match="5 groups cannot each hold one of 4 cells"):
        undecided_after_groups(N, 5)
    assert undecided_after_groups(64, 6) == [61, 55, 45, 32, 16, 0]
    assert undecided_after_groups(64, 6, "linear") == [53, 42, 32, 21, 10, 0]
    assert undecided_after_groups(4, 4) == [3, 2, 1, 0] and undecided_after_groups(4, 1) == [0]
    with pytest.raises(ValueError, match=r"groups: must list the groups of each generated block, got none"):
        DecodeSchedule(())
    with pytest.raises(ValueError, match=r"groups\[1\]: must be >= 1, got 0"):
        DecodeSchedule((2, 0))


def test_raster_sampler_matches_full_recompute(model, vocab):
    greedy = RasterSampler(SamplerConfig(guidance_scale=1.0, gumbel_scale=0.0))
    ids = greedy.sample(model, vocab, "image", IMAGE_QUANTIZER, [text(vocab, [5, 6])], None, item_generators([0]))
    assert ids.shape == (1, 1, N) and greedy.passes(1, N) == N
    codes = vocab.range("image")
    block = vocab.to_global("image", ids[0])
    stream = StreamBuilder(vocab, "raster").special("<bos>").text(text(vocab, [5, 6])).media(
        "image", block, IMAGE_QUANTIZER.block_inputs(ids)[0][0]).build()
    with torch.no_grad():
        logits = batch_logits(model, collate([[stream]], pad_id=0))
    boi = 1 + 2
    assert torch.equal(logits[0, boi:boi + N, codes.offset:codes.end].argmax(-1), ids[0, 0])


def test_sampled_ids_stay_in_the_codebook_range(model, vocab):
    # bias the model towards every other id (text, specials, input rows): the sampler must still only emit image codes
    codes = vocab.range("image")
    with torch.no_grad():
        model.transformer.lm_head.weight[: codes.offset] += 5.0
        model.transformer.lm_head.weight[codes.end:] += 5.0
    ids = sample(model, vocab, group_sampler((2, 2), temperature=2.0), [text(vocab, [1])] * 3,
                 torch.zeros(3, 1, N, dtype=torch.long))
    assert ids.min() >= 0 and ids.max() < 64


def test_each_media_span_stays_in_its_own_range_when_there_are_several():
    vocab = Vocabulary.build(40, "t", [image_layout(), MediaLayout("audio", "audio", 32, "a", num_blocks=3,
                                                                   num_positions=N, latent_channels=4)])
    torch.manual_seed(0)
    model = StreamModel(build_transformer(TINY_MODEL, vocab)).eval()
    audio = vocab.range("audio")
    with torch.no_grad():  # every other id, the image codes included, is favoured
        model.transformer.lm_head.weight[: audio.offset] += 5.0
        model.transformer.lm_head.weight[audio.end:] += 5.0
    quantizer = RDPMQuantizer(QuantizerConfig(noise_steps=2, codebook_size=32), latent_channels=4)
    first = torch.zeros(3, 1, N, dtype=torch.long)
    ids = group_sampler((1, 1), temperature=2.0).sample(model, vocab, "audio", quantizer, [text(vocab, [1])] * 3, first,
                                                        item_generators([0] * 3))
    assert ids.shape == (3, 3, N) and ids.min() >= 0 and ids.max() < audio.size


def test_media_prefix_opens_a_span_after_the_prompt(vocab):
    prefix = media_prefix(vocab, "timestep", "image", text(vocab, [1, 2]))
    assert prefix.input_ids == [vocab.special_id("<bos>"), *text(vocab, [1, 2]), vocab.special_id("<boi>")]
    assert prefix.positions == [0, 1, 2, 3]


def test_text_after_a_media_span_is_text_only_and_equals_full_recompute(model, vocab):
    """Greedy media→text with the KV cache picks what a full forward of the growing stream picks,
    among text ids and <eos> only, even when the model favours media codes."""
    with torch.no_grad():
        codes = vocab.range("image")
        model.transformer.lm_head.weight[codes.offset : codes.end] += 5.0
    blocks = vocab.to_global("image", torch.randint(0, 64, (2, BLOCKS, N), generator=torch.Generator().manual_seed(1)))
    prefixes = [StreamBuilder(vocab, "timestep").special("<bos>").read_out("image", span_inputs(vocab, b)[-1]).build()
                for b in blocks]
    got = sample_text(model, vocab, prefixes, 6, SamplerConfig.for_text(), item_generators([0] * len(prefixes)))
    allowed = torch.full((model.transformer.config.vocab_size,), float("-inf"))
    text_range = vocab.range("text")
    allowed[text_range.offset : text_range.end] = 0.0
    allowed[vocab.special_id("<eos>")] = 0.0
    for b, row in zip(blocks, got):
        expected = []
        while len(expected) < 6:
            stream = (StreamBuilder(vocab, "timestep").special("<bos>").read_out("image", span_inputs(vocab, b)[-1])
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
        sample_text(model, vocab, prefixes, 2, SamplerConfig(guidance_scale=2.0), item_generators([0] * len(prefixes)))


def test_choose_top_k_top_p_and_seeded_gumbel():
    logits = torch.tensor([[4.0, 3.0, 1.0, -2.0]]).repeat(500, 1)
    g = item_generators(range(500))
    top1 = choose(logits, SamplerConfig(top_k=1), g)
    assert (top1 == 0).all()
    top2 = choose(logits, SamplerConfig(top_k=2), g)
    assert set(top2.tolist()) == {0, 1}
    nucleus = choose(logits, SamplerConfig(top_p=0.5), g)  # p(0) ≈ 0.71 > 0.5: only id 0 survives
    assert (nucleus == 0).all()
    a = choose(logits, SamplerConfig(), item_generators(range(500)))
    b = choose(logits, SamplerConfig(), item_generators(range(500)))
    assert torch.equal(a, b) and len(set(a.tolist())) > 1
    same_seed = choose(logits, SamplerConfig(), item_generators([7] * 500))
    assert len(set(same_seed.tolist())) == 1, "rows with one seed draw alike, whatever their place"
    with pytest.raises(UnitokError, match="2 generators for 500 rows"):
        choose(logits, SamplerConfig(), item_generators([1, 2]))


def test_sampler_config_rejects_bad_values():
    for bad in ({"temperature": 0}, {"top_k": 0}, {"top_p": 1.5}, {"gumbel_scale": -1}, {"refine_temperature": 0.0}):
        with pytest.raises(ValueError):
            SamplerConfig(**bad)
