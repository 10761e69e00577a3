"""Vocabulary: disjoint ranges, local<->global round trip, manifest checks."""

import json

import pytest
import torch

from tests.helpers import image_layout
from unitok.lm.layout import StreamLayout
from unitok.lm.reader import ReaderSpec
from unitok.tokenizer.vocabulary import SPECIAL_TOKENS, Vocabulary, VocabularyError


def test_ranges_tile_without_overlap(vocab):
    ids = [set(range(r.offset, r.end)) for r in vocab.ranges]
    assert sum(len(s) for s in ids) == vocab.size == len(set().union(*ids))
    assert vocab.range("special").size == len(SPECIAL_TOKENS)
    assert vocab.range("image").offset == len(SPECIAL_TOKENS) + 40


def test_local_global_round_trip_and_bounds(vocab):
    local = torch.arange(64)
    glob = vocab.to_global("image", local)
    assert glob.min() == vocab.range("image").offset
    assert torch.equal(vocab.to_local("image", glob), local)
    with pytest.raises(VocabularyError, match="out of range"):
        vocab.to_global("image", torch.tensor([64]))
    with pytest.raises(VocabularyError, match="out of range"):
        vocab.to_local("image", torch.tensor([3]))  # a special token is not an image code


def test_manifest_round_trip_and_tampering(tmp_path, vocab):
    vocab.save(tmp_path)
    assert Vocabulary.load(tmp_path).hash == vocab.hash
    data = json.loads((tmp_path / "vocabulary.json").read_text())
    data["ranges"][-1]["size"] += 1  # the last range can grow and still tile
    data["ranges"][2]["tokenizer_hash"] = "other"
    (tmp_path / "vocabulary.json").write_text(json.dumps(data))
    with pytest.raises(VocabularyError, match="does not match its content"):
        Vocabulary.load(tmp_path)


def test_position_rows_are_their_own_ranges(vocab):
    """Every position of a span gets the row of its cell, of its block and the first of its
    modality's 2C state rows; the mask row and the read-out row come last; spans larger than the
    layout are refused."""
    rows = vocab.position_rows("image", 3, 4)  # (blocks, N, 3)
    cells, blocks, state = vocab.range("image.cells"), vocab.range("image.blocks"), vocab.range("image.state")
    assert rows.shape == (3, 4, 3)
    assert rows[..., 0].tolist() == [list(range(cells.offset, cells.offset + 4))] * 3
    assert rows[..., 1].tolist() == [[blocks.offset + b] * 4 for b in range(3)]
    assert (rows[..., 2] == state.offset).all() and state.size == 8  # running state and noise, C = 4 each
    assert vocab.mask_id("image") == state.end == vocab.readout_id("image") - 1 == vocab.size - 2
    assert cells.offset >= vocab.range("image").end and vocab.range("image").kind == "media"
    with pytest.raises(VocabularyError, match="at most 5 blocks of 64"):
        vocab.position_rows("image", 6, 4)
    with pytest.raises(VocabularyError, match="at most 5 blocks of 64"):
        vocab.position_rows("image", 1, 65)


def test_other_tokenizer_is_refused(vocab):
    other = Vocabulary.build(40, "texthash", [image_layout("another-image-tokenizer")])
    with pytest.raises(VocabularyError, match="range 'image' differs in tokenizer hash"):
        vocab.require_holds(other, "shard set x")
    vocab.require_holds(Vocabulary.build(40, "texthash", [image_layout()]), "same")


def test_readout_state_rows_extend_the_vocabulary_and_keep_its_shards(vocab):
    patched = vocab.with_state_widths(StreamLayout(readout_patch=3).readout_width)
    rows = patched.range("image.readout_state")
    assert rows.offset == vocab.size and rows.size == (9 + 1) * 4 and rows.kind == "state"  # C = 4
    patched.require_holds(vocab, "shard set x")  # every id of the shards means the same
    with pytest.raises(VocabularyError, match="another vocabulary"):
        vocab.require_holds(patched, "shard set x")  # not the other way round
    one_cell = StreamLayout().readout_width
    assert vocab.with_state_widths(one_cell).ranges == patched.with_state_widths(None).ranges == vocab.ranges
    assert patched.with_state_widths(StreamLayout(readout_patch=3).readout_width).ranges == patched.ranges
    assert vocab.readout_state("image") == vocab.range("image.state"), "patch 1: a code position's state rows"
    pooled = vocab.with_state_widths(StreamLayout(reader=ReaderSpec("conv", pool=2)).readout_width)
    assert pooled.readout_state("image").size == 2 * 2 * 4, "the conv reader: the s_0 of a 2x2 square"


def test_query_state_rows_follow_the_read_out_rows_and_keep_the_shards(vocab):
    layout = StreamLayout(readout_patch=3, query_patch=3)
    patched = vocab.with_state_widths(layout.readout_width, layout.query_width)
    readout, query = patched.range("image.readout_state"), patched.range("image.query_state")
    assert (readout.offset, query.offset, query.size, query.kind) == (vocab.size, readout.end, (9 + 1) * 4, "state")
    assert patched.query_state("image") == query and vocab.query_state("image") == vocab.range("image.state")
    patched.require_holds(vocab, "shard set x")
    assert patched.with_state_widths(layout.readout_width, layout.query_width).ranges == patched.ranges
