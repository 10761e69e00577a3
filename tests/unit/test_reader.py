"""The conv reader: a read-out block's pooled states, the CNN over the latent they make, its place in the model."""

import pytest
import torch
from einops import rearrange

from tests.helpers import TINY_MODEL, span_inputs, write_tiny_recipe
from unitok.core.config import ConfigError
from unitok.lm.batch import collate
from unitok.lm.documents import MediaSpan, readout_states, task_document
from unitok.lm.layout import StreamLayout
from unitok.lm.model import StreamModel, batch_logits, build_transformer
from unitok.lm.reader import ConvReader, ReaderSpec, latent_grid, pooled_states
from unitok.recipe.schema import load_recipe


def test_pooled_states_hold_each_square_and_the_reader_puts_them_back_in_place():
    latent = torch.arange(2 * 3 * 4 * 6, dtype=torch.float).reshape(2, 3, 4, 6)  # (k, C, H, W)
    cells = rearrange(latent, "k c h w -> k (h w) c")
    pooled = pooled_states(cells, (4, 6), 2)
    assert pooled.shape == (2, 2 * 3, 2 * 2 * 3)
    assert pooled[0, 1].tolist() == [latent[0, c, y, x].item() for y in (0, 1) for x in (2, 3) for c in range(3)]
    assert torch.equal(latent_grid(pooled.reshape(-1, 12), (4, 6), 2).squeeze(2), latent)
    clip = torch.randn(2, 3, 2, 4, 4)  # (k, C, T, H, W)
    pooled = pooled_states(rearrange(clip, "k c t h w -> k (t h w) c"), (2, 4, 4), 2)
    assert torch.equal(latent_grid(pooled.reshape(-1, 12), (2, 4, 4), 2), clip)


def test_a_conv_reader_gives_one_embedding_per_pooled_square_of_whole_blocks_only():
    spec = ReaderSpec("conv", channels=8, pool=2)
    image, clip = ConvReader((4, 4), 3, spec, 16, state_row=0), ConvReader((2, 4, 4), 3, spec, 16, state_row=0)
    assert image(torch.randn(2 * 4, 12)).shape == (8, 16) and clip(torch.randn(3 * 8, 12)).shape == (24, 16)
    with pytest.raises(ValueError, match="whole blocks of 4"):
        image(torch.randn(6, 12))


def test_bad_reader_settings_are_refused_with_their_field_path(tmp_path):
    for settings, message in (({"reader": {"kind": "cnn"}}, r"layout\.reader\.kind"),
                              ({"reader": {"kind": "conv", "channels": 0}}, r"layout\.reader\.channels"),
                              ({"reader": {"pool": 2}}, r"layout\.reader\.pool: pools only the conv reader"),
                              ({"reader": {"kind": "conv"}, "readout_patch": 3}, r"layout\.readout_patch: is the")):
        with pytest.raises(ConfigError, match=message):
            load_recipe(write_tiny_recipe(tmp_path, layout=settings))
    assert StreamLayout(reader=ReaderSpec("conv", pool=3)).problems("image", 1, (8, 8)) == [
        "reader.pool: 3 must divide the last two axes of the latent (8, 8)"]


def test_a_caption_reads_the_media_through_the_conv_reader_and_trains_it(vocab):
    """Two image→text documents that differ only in their media. An untrained reader adds nothing
    (its output layer starts at zero) and the caption loss reaches that layer; once the reader has
    weights, the caption's logits depend on them and on the media, the positions before the span on
    neither."""
    layout = StreamLayout(reader=ReaderSpec("conv", channels=8, pool=2))
    vocab = vocab.with_state_widths(layout.readout_width)
    torch.manual_seed(0)
    reader = ConvReader((8, 8), 4, layout.reader, TINY_MODEL.hidden_size, vocab.readout_state("image").offset)
    model = StreamModel(build_transformer(TINY_MODEL, vocab), {"image": reader})
    docs = []
    for codes in (torch.arange(5 * 64) % 64, torch.arange(5 * 64).flip(0) % 64):
        blocks = vocab.to_global("image", codes.reshape(5, 64))
        inputs = span_inputs(vocab, blocks)
        docs.append(task_document(vocab, layout, "image_to_text", [10, 11, 12],
                                  MediaSpan("image", blocks, inputs, inputs, (8, 8))))
    boi = docs[0].input_ids.index(vocab.special_id("<boi>"))
    assert len(docs[0]) == 1 + 1 + 16 + 1 + 3 + 1, "16 read-out positions: one per 2x2 square of the 8x8 latent"
    assert readout_states(inputs[-1], layout, (8, 8)).shape == (16, 16)
    batch = collate([[d] for d in docs], pad_id=0)
    untrained = batch_logits(model, batch)
    assert torch.equal(untrained, batch_logits(StreamModel(model.transformer), batch)), "zero until trained"
    loss = torch.nn.functional.cross_entropy(untrained.flatten(0, 1), batch.targets.flatten(), ignore_index=-100)
    loss.backward()
    assert reader.to_hidden.weight.grad.abs().sum() > 0, "the caption loss reaches the reader's output layer"

    torch.nn.init.normal_(reader.to_hidden.weight, std=0.1)  # as training leaves it
    logits = batch_logits(model, batch)
    assert torch.equal(logits[:, :boi + 1], untrained[:, :boi + 1])
    assert not torch.allclose(logits[:, -4:], untrained[:, -4:], atol=1e-4), "the caption reads the reader"
    media_change = (logits[0, -4:] - logits[1, -4:]) - (untrained[0, -4:] - untrained[1, -4:])
    assert media_change.abs().max() > 1e-4, "the reader's part of the caption changes with the media"
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch.targets.flatten(), ignore_index=-100)
    model.zero_grad()
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in reader.parameters())


def test_a_model_with_readers_saves_and_reloads_them_beside_its_transformer(vocab, tmp_path):
    layout = StreamLayout(reader=ReaderSpec("conv", channels=8, pool=2))
    vocab = vocab.with_state_widths(layout.readout_width)

    def readers():
        return {"image": ConvReader((8, 8), 4, layout.reader, TINY_MODEL.hidden_size,
                                    vocab.readout_state("image").offset)}

    model = StreamModel(build_transformer(TINY_MODEL, vocab), readers())
    model.save_pretrained(tmp_path / "model")
    loaded = StreamModel.from_pretrained(tmp_path / "model", readers())
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    (tmp_path / "model" / "media_modules.safetensors").unlink()
    with pytest.raises(ValueError, match="media_modules.safetensors: missing"):
        StreamModel.from_pretrained(tmp_path / "model", readers())
