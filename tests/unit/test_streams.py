"""Streams and documents: generated blocks as contexts and group queries, read-out blocks, targets,
attention, positions, document masks."""

import torch

from tests.helpers import span_inputs
from unitok.lm.batch import collate, pack
from unitok.lm.documents import MediaSpan, neighbourhood_states, task_document
from unitok.lm.layout import StreamLayout, cell_order, group_bounds
from unitok.lm.streams import IGNORE, StreamBuilder

N, BLOCKS = 3, 4  # 3 cells per block, T = 3
ORDER = cell_order(N).tolist()
# the groups of the generated blocks k_2, k_1, k_0 over ORDER: 2 groups, 2 groups, 1 group
BOUNDS = [[0, 1, 3], [0, 2, 3], [0, 3]]
LAYOUT = StreamLayout()


def media_blocks(vocab):
    local = torch.arange(BLOCKS * N).reshape(BLOCKS, N)  # distinct ids: block b, cell n -> b*N + n
    return vocab.to_global("image", local)


def image_span(vocab, blocks=None):
    """The span of `media_blocks` (a 1 x N latent)."""
    blocks = media_blocks(vocab) if blocks is None else blocks
    return MediaSpan("image", blocks, span_inputs(vocab, blocks), span_inputs(vocab, blocks, decided=False), (1, N))


def text_to_image(vocab, text=(10, 11, 12), bounds=BOUNDS):
    return task_document(vocab, LAYOUT, "text_to_image", list(text), image_span(vocab), bounds)


def layout(vocab, stream):
    """Index of <boi>, and per generated block g: {cell: context index}, {cell: query index}."""
    boi = stream.input_ids.index(vocab.special_id("<boi>"))
    contexts, queries, start = [], [], boi + 1
    for bounds in BOUNDS:
        contexts.append({cell: start + k for k, cell in enumerate(ORDER[: bounds[-2]])})
        start += bounds[-2]
        queries.append({cell: start + k for k, cell in enumerate(ORDER)})
        start += N
    return boi, contexts, queries


def group_of(g, cell):
    rank = ORDER.index(cell)
    return next(i for i in range(len(BOUNDS[g]) - 1) if BOUNDS[g][i] <= rank < BOUNDS[g][i + 1])


def test_a_query_predicts_its_cell_and_its_input_carries_no_trace_of_its_code(vocab):
    stream = text_to_image(vocab)
    _, contexts, queries = layout(vocab, stream)
    blocks, mask_id = media_blocks(vocab), vocab.mask_id("image")
    decided, undecided = span_inputs(vocab, blocks), span_inputs(vocab, blocks, decided=False)
    for g in range(BLOCKS - 1):
        for cell, p in queries[g].items():
            assert stream.input_ids[p] == mask_id and stream.targets[p] == int(blocks[g + 1, cell])
            assert stream.target_block[p] == g and stream.media_states[p] == undecided[g + 1, cell].tolist()
        for cell, p in contexts[g].items():
            assert stream.input_ids[p] == int(blocks[g + 1, cell]) and stream.targets[p] == IGNORE
            assert stream.media_states[p] == decided[g + 1, cell].tolist()
    for b in range(1, BLOCKS):  # other codes in block b: its queries' inputs stay, its contexts' change
        changed = blocks.clone()
        changed[b] = vocab.to_global("image", (vocab.to_local("image", blocks[b]) + 17) % 64)
        assert torch.equal(span_inputs(vocab, changed, decided=False)[b], undecided[b])
        assert (span_inputs(vocab, changed)[b] != decided[b]).any(-1).all()
        if b + 1 < BLOCKS:
            next_block = span_inputs(vocab, changed, decided=False)[b + 1]
            assert (next_block != undecided[b + 1]).any(), "the next block's change"


def test_the_noise_block_has_no_position_and_nothing_follows_the_last_trained_block(vocab):
    stream = text_to_image(vocab)
    boi, _, _ = layout(vocab, stream)
    for p in range(boi):  # <bos> and caption: next token, the last caption token predicts <boi>
        assert stream.targets[p] == stream.input_ids[p + 1]
    assert stream.targets[boi] == IGNORE  # <boi> would predict k_T, which is drawn from noise
    assert len(stream) == boi + 1 + sum(b[-2] + N for b in BOUNDS), "contexts of all groups but the last, N queries"
    assert vocab.special_id("<eoi>") not in stream.input_ids
    first_only = text_to_image(vocab, bounds=BOUNDS[:1])
    assert first_only.input_ids == stream.input_ids[: len(first_only)] and len(first_only) == boi + 1 + 1 + N


def test_a_query_sees_the_prefix_and_the_earlier_groups_of_its_block_only(vocab):
    stream = text_to_image(vocab)
    boi, contexts, queries = layout(vocab, stream)
    mask = collate([[stream]], pad_id=0).attention_mask[0, 0]
    for g in range(BLOCKS - 1):
        for cell, q in queries[g].items():
            seen = {p for p in range(len(stream)) if mask[q, p]}
            earlier = {p for c, p in contexts[g].items() if group_of(g, c) < group_of(g, cell)}
            assert seen == set(range(boi + 1)) | earlier, "no other block, no query (itself included)"
        for k, (cell, p) in enumerate(contexts[g].items()):
            seen = {s for s in range(len(stream)) if mask[p, s]}
            assert seen == set(range(boi + 1)) | set(list(contexts[g].values())[: k + 1]), "contexts: causal"
            readers = {q for q in range(len(stream)) if mask[q, p]}
            assert all(r in contexts[g].values() or r in queries[g].values() for r in readers), \
                "a drawn code reaches its own block only, never an earlier one"
    assert mask[1, 0] and not mask[1, 2], "text is causal"


def test_every_block_takes_the_positions_after_boi(vocab):
    stream = text_to_image(vocab)
    boi, contexts, queries = layout(vocab, stream)
    batch = collate([[stream]], pad_id=0)
    assert batch.position_ids[0, : boi + 1].tolist() == list(range(boi + 1))
    cells, block_rows = vocab.range("image.cells").offset, vocab.range("image.blocks").offset
    for g in range(BLOCKS - 1):
        for cell, p in [*contexts[g].items(), *queries[g].items()]:
            assert stream.positions[p] == boi + 1 + cell
            assert batch.media_rows[0, p, :2].tolist() == [cells + cell, block_rows + g + 1]


def test_packed_documents_never_see_each_other(vocab):
    a, b = text_to_image(vocab), task_document(vocab, LAYOUT, "text", [20, 21, 22, 23])
    rows = pack([a, b], max_length=len(a) + len(b))
    assert len(rows) == 1
    batch = collate(rows, pad_id=0, length=len(a) + len(b) + 5)
    mask = batch.attention_mask[0, 0]
    la = len(a)
    assert not mask[la:, :la].any() and not mask[:la, la:].any()
    assert batch.position_ids[0, la] == 0, "positions restart in every document"
    assert mask[la + 2, la] and mask[la + 2, la + 2] and not mask[la + 2, la + 3]
    pad = la + len(b)
    assert not mask[:pad, pad:].any(), "no document sees padding"
    assert mask.any(-1).all(), "every row of the mask attends somewhere (no NaN in sdpa)"


def test_caption_dropout(vocab):
    dropped = task_document(vocab, LAYOUT, "text_to_image", [10, 11], image_span(vocab), BOUNDS, drop_text=True)
    assert dropped.input_ids[:2] == [vocab.special_id("<bos>"), vocab.special_id("<boi>")]


def test_media_to_text_reads_the_clean_state_through_a_read_out_block(vocab):
    blocks = media_blocks(vocab)
    decided = span_inputs(vocab, blocks)
    to_text = task_document(vocab, LAYOUT, "image_to_text", [10, 11], image_span(vocab))
    boi, eoi = to_text.input_ids.index(vocab.special_id("<boi>")), to_text.input_ids.index(vocab.special_id("<eoi>"))
    readout = range(boi + 1, eoi)
    assert len(readout) == N, "the read-out block alone: no code block, no position without a dependent target"
    assert all(to_text.input_ids[p] == vocab.readout_id("image") for p in readout)
    C = decided.shape[-1] // 2
    assert [to_text.media_states[p][:C] for p in readout] == decided[-1, :, :C].tolist(), "s_0 at every cell"
    assert all(x == 0 for p in readout for x in to_text.media_states[p][C:]), "no trace of the noise ε̂"
    assert [to_text.positions[p] for p in readout] == [to_text.positions[boi] + 1 + n for n in range(N)]
    assert to_text.targets[eoi] == 10 and to_text.targets[eoi + 1] == 11
    assert to_text.targets[eoi + 2] == vocab.special_id("<eos>") and to_text.targets[-1] == IGNORE
    assert all(to_text.targets[p] == IGNORE for p in range(boi, eoi)), "the media is the condition, not trained"
    mask = collate([[to_text]], pad_id=0).attention_mask[0, 0]
    assert mask[eoi + 1, : eoi + 1].all(), "the caption sees the read-out block"
    for p in readout:
        assert {k for k in range(len(to_text)) if mask[p, k]} == set(range(eoi)), "the prefix and the block itself"
        assert not mask[: boi + 1, p].any(), "no earlier position sees it"


def test_a_neighbourhood_holds_the_other_cells_of_its_square_and_zeros_beyond_the_edge():
    states = torch.arange(1.0, 13.0).reshape(12, 1)  # a (2, 2, 3) latent (time, height, width), C = 1
    around = neighbourhood_states(states, (2, 2, 3), patch=3)
    assert around.shape == (12, 8)
    assert around[1].tolist() == [0, 0, 0, 1, 3, 4, 5, 6], "cell (0, 0, 1): row above off the edge, then 1 _ 3 / 4 5 6"
    assert around[7].tolist() == [0, 0, 0, 7, 9, 10, 11, 12], "the second time slice: never the first one's cells"
    pair = torch.stack([states, 2 * states])  # leading dimensions pass through
    assert torch.equal(neighbourhood_states(pair, (2, 2, 3), 3)[1], 2 * around)
    try:
        neighbourhood_states(states, (3, 3), 3)
    except ValueError as err:
        assert "has 9 cells, got 12" in str(err)
    else:
        raise AssertionError("a latent shape of another size was accepted")


def test_a_read_out_patch_gives_each_cell_its_neighbours_through_rows_of_its_own(vocab):
    blocks, patched = media_blocks(vocab), vocab.with_state_widths(StreamLayout(readout_patch=3).readout_width)
    decided = span_inputs(vocab, blocks)  # N = 3 cells: a 1 x 3 latent
    doc = task_document(patched, StreamLayout(readout_patch=3), "image_to_text", [10], image_span(vocab))
    boi = doc.input_ids.index(vocab.special_id("<boi>"))
    readout, C = range(boi + 1, boi + 1 + N), decided.shape[-1] // 2
    s0 = decided[-1, :, :C]
    assert all(doc.media_rows[p][2] == patched.range("image.readout_state").offset for p in readout)
    first = doc.media_states[readout[0]]
    assert len(first) == (9 + 1) * C and first[:C] == s0[0].tolist() and not any(first[C:2 * C])
    assert first[2 * C:] == [0.0] * 4 * C + s0[1].tolist() + [0.0] * 3 * C, "its right neighbour, zeros elsewhere"
    try:
        StreamBuilder(patched).read_out("image", decided[-1])
    except ValueError as err:
        assert "state inputs of shape" in str(err)
    else:
        raise AssertionError("a read-out block without its neighbours was accepted by a patched vocabulary")


def test_an_interleaved_document_trains_each_span_and_its_text_reads_only_read_outs(audio_vocab):
    """<bos> text <boi> generated image, read-out <eoi> text <boa> generated audio: the image's
    queries and the text after it are trained; the text sees the read-out, never the image's
    blocks; the audio span sees the text and the image's read-out, never the image's blocks."""
    vocab = audio_vocab
    image, audio = media_blocks(vocab), vocab.to_global("audio", torch.arange(2 * 5).reshape(2, 5) % 7)
    image_bounds, audio_bounds = [[0, 1, 3]], [[0, 2, 5]]
    stream = (StreamBuilder(vocab).special("<bos>").text([10, 11])
              .generated("image", image[-1:], span_inputs(vocab, image)[-1:],
                         span_inputs(vocab, image, decided=False)[-1:], image_bounds)
              .read_out("image", span_inputs(vocab, image)[-1]).text([12, 13])
              .generated("audio", audio[-1:], span_inputs(vocab, audio, "audio")[-1:],
                         span_inputs(vocab, audio, "audio", decided=False)[-1:], audio_bounds)
              .build())
    ids = stream.input_ids
    boi, eoi, boa = (ids.index(vocab.special_id(t)) for t in ("<boi>", "<eoi>", "<boa>"))
    image_block = range(boi + 1, boi + 1 + 1 + N)  # one context (groups [0, 1, 3]) and N queries
    readout = range(image_block.stop, eoi)
    text_after, audio_block = range(eoi, boa), range(boa + 1, len(stream))
    assert len(readout) == N and len(audio_block) == 2 + 5
    image_queries = [p for p in image_block if ids[p] == vocab.mask_id("image")]
    assert sorted(stream.targets[p] for p in image_queries) == sorted(image[-1].tolist())
    assert [stream.targets[p] for p in text_after] == [12, 13, vocab.special_id("<boa>")]
    assert stream.targets[boi - 1] == vocab.special_id("<boi>") and stream.targets[boi] == IGNORE
    audio_queries = [p for p in audio_block if ids[p] == vocab.mask_id("audio")]
    assert sorted(stream.targets[p] for p in audio_queries) == sorted(audio[-1].tolist())
    assert all(stream.targets[p] == IGNORE for p in [*readout, *(p for p in image_block if p not in image_queries)])
    mask = collate([[stream]], pad_id=0).attention_mask[0, 0]
    for p in [*readout, *text_after, *audio_block]:
        assert not mask[p, list(image_block)].any(), "nothing after the image's block sees it"
    for p in [*text_after, *audio_block]:
        assert mask[p, list(readout)].all() and mask[p, : boi + 1].all()
    for p in text_after:
        assert mask[p, list(text_after)].tolist() == [k <= p for k in text_after], "text stays causal"
    assert stream.positions[eoi] == stream.positions[boi] + N + 1 and stream.positions[boa] == stream.positions[eoi] + 3


def test_raster_order_is_causal_next_token(vocab):
    block = vocab.to_global("image", torch.arange(N).reshape(1, N))
    inputs = span_inputs(vocab, block)
    stream = StreamBuilder(vocab, "raster").special("<bos>").text([10]).media("image", block, inputs).build()
    boi = stream.input_ids.index(vocab.special_id("<boi>"))
    assert stream.targets[boi] == int(block[0, 0])
    assert [stream.targets[boi + 1 + n] for n in range(N - 1)] == block[0, 1:].tolist()
    assert stream.targets[boi + N] == IGNORE
    mask = collate([[stream]], pad_id=0).attention_mask[0, 0]
    assert not mask[boi + 1, boi + 2] and mask[boi + 2, boi + 1], "raster codes are causal"
    assert stream.target_block[boi] == 0 and stream.target_block[boi + 1] == 0
    assert stream.positions == list(range(len(stream)))


def test_state_inputs_must_match_the_blocks(vocab):
    blocks = media_blocks(vocab)
    for build in (lambda i: StreamBuilder(vocab).media("image", blocks, i),
                  lambda i: StreamBuilder(vocab).generated("image", blocks[1:], i[1:], i[1:], BOUNDS)):
        try:
            build(span_inputs(vocab, blocks)[:, :, :4])
        except ValueError as err:
            assert "state inputs of shape" in str(err)
        else:
            raise AssertionError("state inputs of the wrong width were accepted")


def test_groups_split_a_block_over_the_cell_order():
    assert group_bounds(64, 4, "linear") == [0, 16, 32, 48, 64] and group_bounds(3, 1) == [0, 3]
    assert sorted(cell_order(64).tolist()) == list(range(64)) and torch.equal(cell_order(64), cell_order(64))


def test_packing_fills_rows_longest_first(vocab):
    def doc(length):
        return task_document(vocab, LAYOUT, "text", list(range(10, 8 + length)))  # <bos> … <eos>

    docs = [doc(n) for n in (4, 10, 4, 4, 10, 3)]
    rows = pack(docs, max_length=12)
    assert sorted(len(d) for row in rows for d in row) == sorted(len(d) for d in docs), "every document, once"
    assert [[len(d) for d in row] for row in rows] == [[10], [10], [4, 4, 4], [3]]
    assert all(sum(len(d) for d in row) <= 12 for row in rows)
