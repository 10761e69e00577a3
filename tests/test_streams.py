"""Stream layout: within-block masking, targets, block attention, positions, document masks."""

import torch

from unitok.streams import IGNORE, StreamBuilder, collate, pack, task_document

from .conftest import span_inputs

N, BLOCKS = 3, 4  # 3 cells per block, T = 3


def media_blocks(vocab):
    local = torch.arange(BLOCKS * N).reshape(BLOCKS, N)  # distinct ids: block b, cell n -> b*N + n
    return vocab.to_global("image", local)


# which cells of the generated blocks k_2, k_1, k_0 are undecided (the targets)
MASKED = torch.tensor([[True, False, True], [False, True, False], [True, True, True]])


def text_to_image(vocab, text=(10, 11, 12), masked=MASKED):
    blocks = media_blocks(vocab)
    return task_document(vocab, "timestep", "text_to_image", list(text), "image", blocks,
                         span_inputs(vocab, blocks, masked), masked)


def layout(vocab, stream):
    """Index of <boi> and the index of (generated block g, cell n); g = 0 is k_{T-1}."""
    boi = stream.input_ids.index(vocab.special_id("<boi>"))
    return boi, lambda g, n: boi + 1 + g * N + n


def test_a_masked_cell_predicts_its_own_code_and_its_input_carries_no_trace_of_it(vocab):
    stream = text_to_image(vocab)
    _, pos = layout(vocab, stream)
    blocks, mask_id = media_blocks(vocab), vocab.mask_id("image")
    inputs = span_inputs(vocab, blocks, MASKED)
    for g in range(BLOCKS - 1):
        for n in range(N):
            p, code = pos(g, n), int(blocks[g + 1, n])
            if MASKED[g, n]:
                assert stream.input_ids[p] == mask_id and stream.targets[p] == code
            else:
                assert stream.input_ids[p] == code and stream.targets[p] == IGNORE
            assert stream.target_block[p] == (g if MASKED[g, n] else -1)
            assert stream.media_states[p] == inputs[g + 1, n].tolist()
    for b in range(1, BLOCKS):  # other codes in block b: its masked cells' inputs stay, its decided cells' change
        changed = blocks.clone()
        changed[b] = vocab.to_global("image", (vocab.to_local("image", blocks[b]) + 17) % 64)
        moved = (span_inputs(vocab, changed, MASKED)[b] - inputs[b]).abs().amax(-1) > 0
        assert torch.equal(moved, ~MASKED[b - 1]), "a cell's inputs hold its own code only once it is decided"
        if b + 1 < BLOCKS:
            assert (span_inputs(vocab, changed, MASKED)[b + 1] != inputs[b + 1]).any(), "and the next block's"


def test_the_noise_block_has_no_position_and_nothing_follows_the_last_trained_block(vocab):
    stream = text_to_image(vocab)
    boi, _ = layout(vocab, stream)
    for p in range(boi):  # <bos> and caption: next token, the last caption token predicts <boi>
        assert stream.targets[p] == stream.input_ids[p + 1]
    assert stream.targets[boi] == IGNORE  # <boi> would predict k_T, which is drawn from noise
    assert len(stream) == boi + 1 + (BLOCKS - 1) * N
    assert vocab.special_id("<eoi>") not in stream.input_ids
    first_only = text_to_image(vocab, masked=MASKED[:1])
    assert len(first_only) == boi + 1 + N and first_only.input_ids == stream.input_ids[: boi + 1 + N]


def test_a_block_sees_the_prefix_and_itself_and_no_other_block(vocab):
    stream = text_to_image(vocab)
    boi, pos = layout(vocab, stream)
    mask = collate([[stream]], pad_id=0).attention_mask[0, 0]
    for g in range(BLOCKS - 1):
        for q in range(N):
            assert mask[pos(g, q), : boi + 1].all(), "a media position sees the whole prefix"
            for n in range(N):
                assert mask[pos(g, q), pos(g, n)], "and every cell of its own block, decided or not"
                for other in set(range(BLOCKS - 1)) - {g}:
                    assert not mask[pos(g, q), pos(other, n)], "and no cell of another block"
    # decided cells' codes reach the other cells of their block only, never an earlier block
    for g in range(BLOCKS - 1):
        decided = [pos(g, n) for n in range(N) if not MASKED[g, n]]
        for p in decided:
            assert [q for q in range(len(stream)) if mask[q, p]] == [pos(g, n) for n in range(N)]
    assert mask[1, 0] and not mask[1, 2], "text is causal"


def test_every_block_takes_the_positions_after_boi(vocab):
    stream = text_to_image(vocab)
    boi, pos = layout(vocab, stream)
    batch = collate([[stream]], pad_id=0)
    assert batch.position_ids[0, : boi + 1].tolist() == list(range(boi + 1))
    for g in range(BLOCKS - 1):
        assert [stream.positions[pos(g, n)] for n in range(N)] == list(range(boi + 1, boi + 1 + N))
    rows = batch.media_rows[0, boi + 1:]
    assert rows[:, 0].tolist() == (torch.arange(N).repeat(BLOCKS - 1) + vocab.range("image.cells").offset).tolist()
    assert rows[:, 1].tolist() == (torch.arange(1, BLOCKS).repeat_interleave(N) + vocab.range("image.blocks").offset).tolist()


def test_packed_documents_never_see_each_other(vocab):
    a, b = text_to_image(vocab), task_document(vocab, "timestep", "text", [20, 21, 22, 23])
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


def test_caption_dropout_and_media_to_text(vocab):
    blocks = media_blocks(vocab)
    inputs = span_inputs(vocab, blocks, MASKED)
    dropped = task_document(vocab, "timestep", "text_to_image", [10, 11], "image", blocks, inputs, MASKED,
                            drop_text=True)
    assert dropped.input_ids[:2] == [vocab.special_id("<bos>"), vocab.special_id("<boi>")]
    to_text = task_document(vocab, "timestep", "image_to_text", [10, 11], "image", blocks, span_inputs(vocab, blocks))
    boi, eoi = to_text.input_ids.index(vocab.special_id("<boi>")), to_text.input_ids.index(vocab.special_id("<eoi>"))
    assert eoi == boi + 1 + BLOCKS * N, "the whole span, k_T included, every cell decided"
    assert to_text.input_ids[boi + 1 : eoi] == blocks.reshape(-1).tolist()
    assert to_text.targets[eoi] == 10 and to_text.targets[eoi + 1] == 11
    assert to_text.targets[eoi + 2] == vocab.special_id("<eos>") and to_text.targets[-1] == IGNORE
    assert all(t == IGNORE for t in to_text.targets[boi:eoi]), "the media span is the condition, not trained"
    mask = collate([[to_text]], pad_id=0).attention_mask[0, 0]
    assert mask[eoi + 1, : eoi + 1].all(), "text after the span sees the whole media span"
    assert to_text.positions[eoi] == to_text.positions[boi] + N + 1, "text continues after one block's positions"


def test_raster_order_is_causal_next_token(vocab):
    block = vocab.to_global("image", torch.arange(N).reshape(1, N))
    stream = StreamBuilder(vocab, "raster").special("<bos>").text([10]).media("image", block, span_inputs(vocab, block)).build()
    boi = stream.input_ids.index(vocab.special_id("<boi>"))
    assert stream.targets[boi] == int(block[0, 0])
    assert [stream.targets[boi + 1 + n] for n in range(N - 1)] == block[0, 1:].tolist()
    assert stream.targets[boi + N] == IGNORE
    mask = collate([[stream]], pad_id=0).attention_mask[0, 0]
    assert not mask[boi + 1, boi + 2] and mask[boi + 2, boi + 1], "raster codes are causal"
    assert stream.target_block[boi] == 0 and stream.target_block[boi + 1] == 0
    assert stream.positions == list(range(len(stream)))


def test_masks_need_a_trained_timestep_span_of_the_blocks_shape(vocab):
    blocks = media_blocks(vocab)
    inputs = span_inputs(vocab, blocks)
    for order, masked, trained in (("timestep", MASKED, True), ("raster", torch.ones(BLOCKS, N, dtype=torch.bool), True),
                                   ("timestep", torch.ones(BLOCKS, N, dtype=torch.bool), False)):
        try:
            StreamBuilder(vocab, order).media("image", blocks, inputs, masked=masked, trained=trained)
        except ValueError as err:
            assert "masked cells" in str(err)
        else:
            raise AssertionError(f"{order} {tuple(masked.shape)} trained={trained} was accepted")


def test_packing_fills_rows_longest_first(vocab):
    def doc(length):
        return task_document(vocab, "timestep", "text", list(range(10, 8 + length)))  # <bos> … <eos>

    docs = [doc(n) for n in (4, 10, 4, 4, 10, 3)]
    rows = pack(docs, max_length=12)
    assert sorted(len(d) for row in rows for d in row) == sorted(len(d) for d in docs), "every document, once"
    assert [[len(d) for d in row] for row in rows] == [[10], [10], [4, 4, 4], [3]]
    assert all(sum(len(d) for d in row) <= 12 for row in rows)
