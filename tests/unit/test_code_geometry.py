"""Code logits tied to the codebook's geometry: zero until trained, a term of the codebook vectors
in the code range only, trained by the loss, saved beside the transformer, refused when missing."""

import pytest
import torch

from tests.helpers import TINY_MODEL, write_tiny_recipe
from unitok.core.config import ConfigError
from unitok.lm.code_geometry import CodeGeometry
from unitok.lm.model import StreamModel, build_transformer
from unitok.recipe.schema import load_recipe


def model_with_head(vocab):
    torch.manual_seed(0)
    codes = vocab.range("image")
    head = CodeGeometry(torch.randn(codes.size, 4), codes.offset, TINY_MODEL.hidden_size)
    return StreamModel(build_transformer(TINY_MODEL, vocab), code_heads={"image": head}), head


def test_the_geometry_term_is_zero_until_trained_then_a_distance_to_the_codebook_in_the_code_range(vocab):
    model, head = model_with_head(vocab)
    hidden = torch.randn(3, TINY_MODEL.hidden_size)
    plain = model.transformer.lm_head(hidden)
    assert torch.equal(model.logits(hidden), plain), "an untrained head adds nothing"
    torch.nn.init.normal_(head.to_latent.weight)
    with torch.no_grad():
        head.norm_scale.fill_(-0.5)
    logits = model.logits(hidden)
    codes = vocab.range("image")
    assert torch.equal(logits[:, :codes.offset], plain[:, :codes.offset])
    assert torch.equal(logits[:, codes.end:], plain[:, codes.end:])
    target = head.to_latent(hidden)  # (3, C): where the hidden state points in the latent space
    distance = torch.cdist(target, head.codebook).square()
    term = logits[:, codes.offset:codes.end] - plain[:, codes.offset:codes.end]
    expected = -0.5 * distance + 0.5 * target.square().sum(-1, keepdim=True)
    torch.testing.assert_close(term, expected, atol=1e-4, rtol=1e-4)
    assert torch.equal(term.argmax(-1), distance.argmin(-1)), "the nearest code gets the largest term"


def test_the_loss_trains_the_head_and_it_is_saved_beside_the_transformer(vocab, tmp_path):
    model, head = model_with_head(vocab)
    hidden = torch.randn(4, TINY_MODEL.hidden_size)
    targets = torch.full((4,), vocab.range("image").offset + 3)
    torch.nn.functional.cross_entropy(model.logits(hidden), targets).backward()
    assert head.to_latent.weight.grad.abs().sum() > 0 and head.norm_scale.grad != 0
    torch.nn.init.normal_(head.to_latent.weight)
    model.save_pretrained(tmp_path / "model")
    loaded = StreamModel.from_pretrained(tmp_path / "model", code_heads={"image": CodeGeometry(
        head.codebook, head.offset, TINY_MODEL.hidden_size)})
    torch.testing.assert_close(loaded.logits(hidden), model.logits(hidden), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"media_modules.safetensors: does not match .*missing \['code_heads"):
        StreamModel.from_pretrained(tmp_path / "model", code_heads={"image": head, "audio": CodeGeometry(
            head.codebook, 0, TINY_MODEL.hidden_size)})
    (tmp_path / "model" / "media_modules.safetensors").unlink()
    with pytest.raises(ValueError, match="media_modules.safetensors: missing"):
        StreamModel.from_pretrained(tmp_path / "model", code_heads={"image": head})


def test_a_bad_code_geometry_setting_is_refused_with_its_field_path(tmp_path):
    with pytest.raises(ConfigError, match=r"layout\.code_geometry"):
        load_recipe(write_tiny_recipe(tmp_path, layout={"code_geometry": "sometimes"}))
