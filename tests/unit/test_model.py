"""StreamModel: media positions enter with their cell, block and state rows, everything else as plain tokens."""

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import TINY_MODEL, span_inputs
from unitok.lm.batch import collate
from unitok.lm.losses import stream_loss
from unitok.lm.model import StreamModel, batch_logits, build_transformer
from unitok.lm.streams import IGNORE, StreamBuilder


def test_media_codes_get_their_cell_and_block_rows_and_text_does_not(vocab):
    torch.manual_seed(0)
    transformer = build_transformer(TINY_MODEL, vocab).eval()
    model = StreamModel(transformer)
    text = vocab.to_global("text", torch.tensor([1, 2, 3])).tolist()
    blocks = vocab.to_global("image", torch.zeros(2, 4, dtype=torch.long))  # the same code everywhere
    stream = StreamBuilder(vocab).special("<bos>").text(text).media("image", blocks, span_inputs(vocab, blocks)).build()
    batch = collate([[stream]], pad_id=0)
    boi = 4
    with torch.no_grad():
        ours = batch_logits(model, batch)
        plain = transformer(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                            position_ids=batch.position_ids).logits
    # text before the span: exactly the plain transformer
    torch.testing.assert_close(ours[:, : boi + 1], plain[:, : boi + 1])
    # the same code at different cells and blocks is told apart only through the position rows
    assert not torch.allclose(ours[:, boi + 1 :], plain[:, boi + 1 :])
    rows = batch.media_rows[0, boi + 1 : boi + 9]
    assert rows[:, 0].unique().numel() == 4 and rows[:, 1].unique().numel() == 2
    assert (batch.media_rows[0, : boi + 1] == -1).all() and (batch.media_rows[0, boi + 9 :] == -1).all()


def test_media_positions_carry_their_state_inputs_and_text_before_them_does_not(vocab):
    """Two spans with the same codes but other state inputs differ from the span on, not before;
    inputs of the wrong width are refused when the stream is built."""
    torch.manual_seed(0)
    model = StreamModel(build_transformer(TINY_MODEL, vocab).eval())
    text = vocab.to_global("text", torch.tensor([1, 2, 3])).tolist()
    blocks = vocab.to_global("image", torch.randint(0, 64, (2, 4)))
    states = span_inputs(vocab, blocks)

    def logits(inputs):
        stream = StreamBuilder(vocab).special("<bos>").text(text).media("image", blocks, inputs).build()
        batch = collate([[stream]], pad_id=0)
        assert torch.equal(batch.media_states[0, 5:13], inputs.reshape(8, 8))
        with torch.no_grad():
            return batch_logits(model, batch)

    ours, other = logits(states), logits(states + 1.0)
    boi = 4
    torch.testing.assert_close(ours[:, : boi + 1], other[:, : boi + 1])
    assert (ours[:, boi + 1 : -1] - other[:, boi + 1 : -1]).abs().amax(-1).min() > 1e-4
    torch.testing.assert_close(ours[:, -1], other[:, -1], msg="<eoi> reads a span only through a read-out block")
    with pytest.raises(ValueError, match="with 8 state inputs"):
        StreamBuilder(vocab).media("image", blocks, states[..., :4])


def test_stream_loss_is_the_cross_entropy_of_the_full_logits_at_the_targets(vocab):
    """Training projects only the labelled positions onto the vocabulary; the loss (plain and
    weighted) must be what the whole (B, L, V) logits give there, for documents of two lengths."""
    torch.manual_seed(0)
    model = StreamModel(build_transformer(TINY_MODEL, vocab).eval())
    text = vocab.to_global("text", torch.tensor([1, 2, 3])).tolist()
    blocks = vocab.to_global("image", torch.randint(0, 64, (2, 4)))
    long = StreamBuilder(vocab).special("<bos>").text(text).media("image", blocks, span_inputs(vocab, blocks)).build()
    short = StreamBuilder(vocab).special("<bos>").text(text).special("<eos>").build()
    batch = collate([[long], [short]], pad_id=0)
    weights = torch.rand(model.transformer.config.vocab_size) + 0.5
    with torch.no_grad():
        full = batch_logits(model, batch).float()
        labelled = batch.targets != IGNORE
        losses = F.cross_entropy(full[labelled], batch.targets[labelled], reduction="none")
        weight = weights[batch.targets[labelled]]
        torch.testing.assert_close(stream_loss(model, batch), losses.mean())
        torch.testing.assert_close(stream_loss(model, batch, weights), (losses * weight).sum() / weight.sum())
    assert 0 < int(labelled.sum()) < labelled.numel()  # some positions have no target: the case that is skipped


def test_tied_codes_enter_and_leave_as_the_codes_whose_rows_they_use(audio_vocab):
    """A range tied to another (`layout.tied_codes`): its code ids embed as the other's, its logits
    are the other's, and its loss trains the other's rows; nothing else changes."""
    torch.manual_seed(0)
    image, audio = audio_vocab.range("image"), audio_vocab.range("audio")
    model = StreamModel(build_transformer(TINY_MODEL, audio_vocab), tied_codes=[(audio, image)])
    plain = StreamModel(model.transformer)
    ids = torch.tensor([[1, audio.offset + 5, 2], [1, image.offset + 5, 2]])
    rows, states = torch.full((2, 3, 3), -1), torch.zeros(2, 3, 0)
    mask, positions = torch.ones(2, 1, 3, 3, dtype=torch.bool).tril(), torch.arange(3).expand(2, 3)
    logits = model(ids, rows, states, mask, positions)
    torch.testing.assert_close(logits[0], logits[1])  # audio code 5 is image code 5
    torch.testing.assert_close(logits[..., audio.offset:audio.end], logits[..., image.offset:image.end])
    untied = plain(ids, rows, states, mask, positions)
    torch.testing.assert_close(logits[1, :, :audio.offset], untied[1, :, :audio.offset])
    F.cross_entropy(logits[0, :1], torch.tensor([audio.offset + 7])).backward()
    grad = model.transformer.get_input_embeddings().weight.grad
    assert grad[image.offset + 7].abs().sum() > 0 and grad[audio.offset:audio.end].abs().sum() == 0
