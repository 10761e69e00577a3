"""Diagnostics: the digit-swapped caption names another digit and changes nothing else."""

from unitok.benchmarks.digits.diagnostics import other_digit_caption
from unitok.benchmarks.digits.scenes import parse_caption


def test_other_digit_caption_swaps_only_the_digit():
    for caption, digit in (("a red 7 on the left", 7), ("a small seven painted blue", 7),
                           ("the digit 0 in cyan at the center", 0), ("magenta number nine", 9)):
        swapped = other_digit_caption(caption, digit)
        before, after = parse_caption(caption), parse_caption(swapped)
        assert after["digit"] == (digit + 3) % 10
        assert {k: v for k, v in after.items() if k != "digit"} == {k: v for k, v in before.items() if k != "digit"}
