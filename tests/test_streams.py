"""Stream layout: targets, block-causal attention, document masks, caption dropout."""

import torch

from unitok.streams import IGNORE, StreamBuilder, collate, pack, task_document

from .conftest import span_states

N, BLOCKS = 3, 4  # 3 positions per block, T = 3


def media_blocks(vocab):
    local = torch.arange(BLOCKS * N).reshape(BLOCKS, N)  # distinct ids: block b, position n -> b*N + n
    return vocab.to_global("image", local)


def text_to_image(vocab, text=(10, 11, 12)):
    blocks = media_blocks(vocab)
    return task_document(vocab, "timestep", "text_to_image", list(text), "image", blocks, span_states(vocab, blocks))


def layout(vocab, stream):
    """Index of <boi> and the position of (block b, n)."""
    boi = stream.input_ids.index(vocab.special_id("<boi>"))
    return boi, lambda b, n: boi + 1 + b * N + n


def test_media_targets_are_next_timestep_same_position(vocab):
    stream = text_to_image(vocab)
    _, pos = layout(vocab, stream)
    blocks = media_blocks(vocab)
    for b in range(BLOCKS - 1):
        for n in range(N):
            assert stream.targets[pos(b, n)] == int(blocks[b + 1, n])
    for n in range(N):  # k_0 carries no target; <eoi> is appended by the sampler
        assert stream.targets[pos(BLOCKS - 1, n)] == IGNORE


def test_text_targets_are_shifted_by_one_and_noise_block_is_not_a_target(vocab):
    stream = text_to_image(vocab)
    boi, _ = layout(vocab, stream)
    for p in range(boi):  # <bos> and caption: next token, the last caption token predicts <boi>
        assert stream.targets[p] == stream.input_ids[p + 1]
    assert stream.targets[boi] == IGNORE  # <boi> would predict k_T, which is drawn from noise
    eoi = boi + 1 + BLOCKS * N
    assert stream.input_ids[eoi] == vocab.special_id("<eoi>")
    assert stream.targets[eoi] == vocab.special_id("<eos>")
    assert stream.targets[-1] == IGNORE


def test_block_causal_attention(vocab):
    stream = text_to_image(vocab)
    boi, pos = layout(vocab, stream)
    mask = collate([[stream]], pad_id=0).attention_mask[0, 0]
    for b in range(BLOCKS):
        q = pos(b, 1)
        assert mask[q, : boi + 1].all(), "a media token sees the whole prefix"
        for n in range(N):
            assert mask[q, pos(b, n)], "and every token of its own block, later positions included"
            for earlier in range(b):
                assert mask[q, pos(earlier, n)], "and every noisier block"
            for later in range(b + 1, BLOCKS):
                assert not mask[q, pos(later, n)], "never a less noisy block"
    # text is causal
    assert mask[1, 0] and not mask[1, 2]


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
    dropped = task_document(vocab, "timestep", "text_to_image", [10, 11], "image", blocks, span_states(vocab, blocks),
                            drop_text=True)
    assert dropped.input_ids[:2] == [vocab.special_id("<bos>"), vocab.special_id("<boi>")]
    to_text = task_document(vocab, "timestep", "image_to_text", [10, 11], "image", blocks, span_states(vocab, blocks))
    eoi = to_text.input_ids.index(vocab.special_id("<eoi>"))
    assert to_text.targets[eoi] == 10 and to_text.targets[eoi + 1] == 11
    assert to_text.targets[eoi + 2] == vocab.special_id("<eos>") and to_text.targets[-1] == IGNORE
    boi = to_text.input_ids.index(vocab.special_id("<boi>"))
    assert all(t == IGNORE for t in to_text.targets[boi:eoi]), "the media span is the condition, not trained"
    mask = collate([[to_text]], pad_id=0).attention_mask[0, 0]
    assert mask[eoi + 1, : eoi + 1].all(), "text after the span sees the whole media span"


def test_raster_order_is_causal_next_token(vocab):
    block = vocab.to_global("image", torch.arange(N).reshape(1, N))
    stream = StreamBuilder(vocab, "raster").special("<bos>").text([10]).media("image", block, span_states(vocab, block)).build()
    boi = stream.input_ids.index(vocab.special_id("<boi>"))
    assert stream.targets[boi] == int(block[0, 0])
    assert [stream.targets[boi + 1 + n] for n in range(N - 1)] == block[0, 1:].tolist()
    assert stream.targets[boi + N] == IGNORE
    mask = collate([[stream]], pad_id=0).attention_mask[0, 0]
    assert not mask[boi + 1, boi + 2], "raster codes are causal"
    assert stream.target_block[boi] == 0 and stream.target_block[boi + 1] == 0
