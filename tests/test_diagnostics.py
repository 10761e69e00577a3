"""Diagnostics: the digit-swapped caption names another digit and changes nothing else; the
factorized first step draws every cell from a training item that looks like the prompt's."""

import pytest
import torch

from unitok.digits_world import Item, Scene, parse_caption
from unitok.eval.diagnostics import factorized_first_blocks, other_digit_caption


def test_other_digit_caption_swaps_only_the_digit():
    for caption, digit in (("a red 7 on the left", 7), ("a small seven painted blue", 7),
                           ("the digit 0 in cyan at the center", 0), ("magenta number nine", 9)):
        swapped = other_digit_caption(caption, digit)
        before, after = parse_caption(caption), parse_caption(swapped)
        assert after["digit"] == (digit + 3) % 10
        assert {k: v for k, v in after.items() if k != "digit"} == {k: v for k, v in before.items() if k != "digit"}


def test_factorized_first_blocks_take_each_cell_pair_from_one_lookalike_donor():
    def item(i, digit, position, size):
        return Item(Scene(digit, "red", position, size, digit_index=i), caption="", key=f"train-{i}", unseen_combo=False)

    looks = [(d, p, s) for d in (1, 7) for p in ("left", "right") for s in ("small", "large")]
    train = [item(i, *looks[i % len(looks)]) for i in range(64)]
    N = 16
    # Every id names its donor: (row, block, cell) -> row * 1000 + block * 100 + cell.
    media = torch.arange(64)[:, None, None] * 1000 + torch.arange(5)[None, :, None] * 100 + torch.arange(N)
    asked = [item(100 + j, *looks[j]) for j in range(len(looks))]
    first = factorized_first_blocks(asked, train, media, seed=0)
    assert first.shape == (len(asked), 2, N)
    for it, blocks in zip(asked, first):
        donors = blocks // 1000
        assert torch.equal(donors[0], donors[1])  # k_T and k_{T-1} of a cell come from one donor
        assert torch.equal(blocks % 1000, torch.tensor([[0], [100]]) + torch.arange(N))  # right block, own cell
        for row in donors[0].tolist():
            assert train[row].scene.digit == it.scene.digit and train[row].scene.position == it.scene.position
            assert train[row].scene.size == it.scene.size
        assert len(set(donors[0].tolist())) > 1  # cells are drawn independently, not one donor for the image
    assert torch.equal(first, factorized_first_blocks(asked, train, media, seed=0))
    # A look no training item has (a centred 7) borrows from the items of its digit.
    centred = factorized_first_blocks([item(200, 7, "center", "small")], train, media, seed=0)[0] // 1000
    assert all(train[row].scene.digit == 7 for row in centred[0].tolist())


def test_factorized_first_blocks_refuse_a_digit_no_training_item_shows():
    train = [Item(Scene(1, "red", "left", "small", digit_index=0), caption="", key="train-0", unseen_combo=False)]
    asked = [Item(Scene(7, "red", "left", "small", digit_index=1), caption="", key="heldout-0", unseen_combo=False)]
    with pytest.raises(ValueError, match="digit 7"):
        factorized_first_blocks(asked, train, torch.zeros(1, 5, 4, dtype=torch.long), seed=0)
