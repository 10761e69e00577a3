"""StreamModel: media codes enter with their cell and block rows, everything else as plain tokens."""

import torch

from unitok.model import StreamModel, batch_logits, build_transformer
from unitok.streams import StreamBuilder, collate

from .conftest import TINY_MODEL


def test_media_codes_get_their_cell_and_block_rows_and_text_does_not(vocab):
    torch.manual_seed(0)
    transformer = build_transformer(TINY_MODEL, vocab).eval()
    model = StreamModel(transformer)
    text = vocab.to_global("text", torch.tensor([1, 2, 3])).tolist()
    blocks = vocab.to_global("image", torch.zeros(2, 4, dtype=torch.long))  # the same code everywhere
    batch = collate([[StreamBuilder(vocab).special("<bos>").text(text).media("image", blocks).build()]], pad_id=0)
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
