"""Training documents from shard rows: generated blocks in the groups of the decode schedule,
first-step documents, held-out documents, the raster baseline's."""

import random
from types import SimpleNamespace

import torch

from unitok.lm.documents import DocumentMaker, media_spans
from unitok.lm.layout import DecodeSchedule, StreamLayout, cell_order
from unitok.tokenizer.rdpm import QuantizerConfig, RDPMQuantizer


def three_block_tokenizer():
    """What `media_spans` needs of a tokenizer, for the `vocab` fixture's image range: spans of
    k_T and two generated blocks (T = 2) of 4 cells, C = 4."""
    torch.manual_seed(0)
    quantizer = RDPMQuantizer(QuantizerConfig(noise_steps=2, codebook_size=64), latent_channels=4)
    return SimpleNamespace(name="image", num_blocks=3, quantizer=quantizer, device=torch.device("cpu"),
                           latent_shape=(2, 2))


def image_row(vocab, key="heldout-000001"):
    """A shard row of one item: 3 blocks of 4 distinct codes and a two-piece caption."""
    media = vocab.to_global("image", torch.arange(3 * 4).reshape(3, 4))
    return {"key": key, "draw": 0, "media": "image", "media_ids": media.reshape(-1).tolist(),
            "text_ids": vocab.to_global("text", torch.tensor([1, 2])).tolist()}


def test_text_to_media_training_documents_hold_the_generated_blocks_in_their_groups(vocab):
    """A text-to-image training document is caption + <boi> + the generated blocks k_{T-1} … k_0,
    each as its contexts and one query per cell over the groups of its decode schedule; the targets
    are the queries' cells' codes, whose state inputs do not hold them, and a context's inputs hold
    its code."""
    tokenizer, row = three_block_tokenizer(), image_row(vocab)
    media = torch.tensor(row["media_ids"]).reshape(3, 4)
    schedule = DecodeSchedule((3, 1), "linear")
    documents = DocumentMaker(vocab, StreamLayout(decode={"image": schedule}))
    assert schedule.bounds(4) == [[0, 2, 3, 4], [0, 4]]
    span = media_spans([row], vocab, {"image": tokenizer})[0]
    doc = documents.document("text_to_image", row["text_ids"], span, random.Random(0))
    order = cell_order(4)
    local = vocab.to_local("image", media)[None]
    decided, undecided = (inputs[0] for inputs in tokenizer.quantizer.block_inputs(local))
    assert len(doc) == 1 + 2 + 1 + (3 + 4) + (0 + 4), "contexts of all groups but the last, then 4 queries"
    first, second = slice(4, 11), slice(11, 15)
    assert doc.input_ids[first][:3] == media[1, order[:3]].tolist() and doc.targets[first][:3] == [-100] * 3
    assert doc.targets[first][3:] == media[1, order].tolist() and doc.targets[second] == media[2, order].tolist()
    assert torch.tensor(doc.media_states[first][:3]).allclose(decided[1, order[:3]])
    assert torch.tensor(doc.media_states[first][3:]).allclose(undecided[1, order])
    assert torch.tensor(doc.media_states[second]).allclose(undecided[2, order])
    heldout = documents.document("text_to_image", row["text_ids"], span, random.Random(1), heldout=True)
    assert heldout.input_ids == doc.input_ids
    raster_row = {**row, "media_ids": row["media_ids"][:4]}
    raster_tokenizer = SimpleNamespace(name="image", num_blocks=1, quantizer=RDPMQuantizer(
        QuantizerConfig(noise_steps=0, codebook_size=64), latent_channels=4), device=torch.device("cpu"),
        latent_shape=(2, 2))
    raster_span = media_spans([raster_row], vocab, {"image": raster_tokenizer})[0]
    raster = DocumentMaker(vocab, StreamLayout(media_order="raster")).document(
        "text_to_image", row["text_ids"], raster_span, random.Random(0))
    assert raster.input_ids[-1] == vocab.special_id("<eos>") and vocab.mask_id("image") not in raster.input_ids


def test_first_step_documents_hold_only_the_first_generated_block(vocab):
    """With first_step_fraction = 1 a training document is caption + <boi> + k_{T-1}; held-out
    documents keep every generated block so per-block losses stay comparable."""
    row = image_row(vocab)
    layout = StreamLayout(decode={"image": DecodeSchedule((1, 1))})
    documents = DocumentMaker(vocab, layout, first_step_fraction=1.0)
    span = media_spans([row], vocab, {"image": three_block_tokenizer()})[0]
    doc = documents.document("text_to_image", row["text_ids"], span, random.Random(0))
    assert len(doc) == 1 + 2 + 1 + 4  # <bos>, caption, <boi>, k_{T-1}: one group, 4 queries
    assert doc.targets[-4:] == [row["media_ids"][4:8][c] for c in cell_order(4).tolist()]
    assert set(doc.target_block) <= {-1, 0}
    heldout = documents.heldout("text_to_image", [row], [span])[0]
    assert len(heldout) == len(doc) + 4
