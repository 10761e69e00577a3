"""RDPM quantizer and image tokenizer: round trips, determinism, the trajectory, bad ids."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from tests.helpers import tiny_tokenizer_spec
from unitok.benchmarks.digits.images import real_renders
from unitok.benchmarks.digits.scenes import DigitsWorldConfig, build_digits_world
from unitok.tokenizer.media_tokenizer import MediaTokenizer, TokenizerSpec
from unitok.tokenizer.rdpm import alpha_bar_schedule
from unitok.train.common import TrainingDiverged
from unitok.train.tokenizer import TokenizerTraining, tokenizer_metrics, train_media_tokenizer

REPO = Path(__file__).resolve().parents[2]


def digit_images(n: int) -> torch.Tensor:
    items = build_digits_world(DigitsWorldConfig(train_scenes=n, heldout_scenes=0))["train"]
    return torch.from_numpy(real_renders(items, 32)).permute(0, 3, 1, 2).float() / 127.5 - 1


@pytest.fixture(scope="module")
def trained_tokenizer() -> MediaTokenizer:
    spec = tiny_tokenizer_spec(noise_steps=6)
    return train_media_tokenizer(spec, digit_images(256), TokenizerTraining(steps=60, batch_size=32, warmup_steps=5))


def test_schedule_runs_from_clean_to_pure_noise():
    a = alpha_bar_schedule(10)
    assert a[0] == 1 and a[-1] == 0 and (a[1:] < a[:-1]).all()


def test_encode_decode_shapes_and_determinism(tiny_tokenizer):
    images = digit_images(3)
    ids = tiny_tokenizer.encode_tensor(images, seeds=[1, 2, 3])
    assert ids.shape == (3, tiny_tokenizer.num_blocks, 16) and ids.dtype == torch.long
    assert torch.equal(ids, tiny_tokenizer.encode_tensor(images, seeds=[1, 2, 3]))
    assert not torch.equal(ids[:, 0], tiny_tokenizer.encode_tensor(images, seeds=[4, 5, 6])[:, 0]), "the seed fixes ε"
    alone = tiny_tokenizer.encode_tensor(images[1:2], seeds=[2])
    assert torch.equal(alone[0], ids[1]), "an item's tokens do not depend on its batch"
    assert tiny_tokenizer.decode_tensor(ids).shape == images.shape
    pil = tiny_tokenizer.decode(ids)
    assert len(pil) == 3 and pil[0].size == (32, 32)


def test_state_approaches_clean_latent_as_t_goes_to_zero(trained_tokenizer):
    x = digit_images(64)
    with torch.no_grad():
        z = trained_tokenizer.latent(x)
        ids = trained_tokenizer.encode_tensor(x, seeds=list(range(64)))
        states = trained_tokenizer.quantizer.states(ids)  # s_T … s_0
    distances = [(s - z).pow(2).mean().item() for s in states]
    assert all(later < earlier for earlier, later in zip(distances, distances[1:])), distances
    assert distances[-1] < 0.25 * distances[0]


def test_training_reconstructs_and_uses_the_codebook(trained_tokenizer):
    metrics = tokenizer_metrics(trained_tokenizer, digit_images(128))
    assert metrics["psnr_db"] > 15
    assert metrics["codebook_usage"] > 0.5


def test_training_stops_at_the_first_non_finite_loss():
    images = digit_images(32)
    images[5, 0, 3, 3] = float("nan")  # one bad pixel makes the first batch's loss NaN
    with pytest.raises(TrainingDiverged, match="loss is nan at step 1"):
        train_media_tokenizer(tiny_tokenizer_spec(noise_steps=2), images,
                              TokenizerTraining(steps=3, batch_size=32, warmup_steps=1))


def test_decode_rejects_out_of_range_and_misshapen_ids(tiny_tokenizer):
    ids = torch.zeros(1, tiny_tokenizer.num_blocks, 16, dtype=torch.long)
    ids[0, 2, 5] = tiny_tokenizer.codebook_size  # one past the end
    with pytest.raises(ValueError, match="out of range"):
        tiny_tokenizer.decode(ids)
    with pytest.raises(ValueError, match="expected ids of shape"):
        tiny_tokenizer.decode(torch.zeros(1, 2, 16, dtype=torch.long))


def test_nearest_code_is_the_code_at_the_smallest_euclidean_distance(trained_tokenizer):
    quantizer = trained_tokenizer.quantizer
    residual = torch.randn(3, quantizer.codebook.shape[-1], 16) * quantizer.step_scale[1]
    ids = quantizer.nearest_code(residual, 1)
    points = (residual / quantizer.step_scale[1]).transpose(1, 2)  # (B, N, C)
    distances = torch.cdist(points, quantizer.codebook.expand(3, -1, -1))
    assert torch.equal(ids, distances.argmin(-1))


def test_save_and_load_round_trip(tmp_path, trained_tokenizer):
    trained_tokenizer.save_pretrained(tmp_path / "tok")
    loaded = MediaTokenizer.from_pretrained(tmp_path / "tok")
    x = digit_images(4)
    assert torch.equal(loaded.encode_tensor(x, [0, 1, 2, 3]), trained_tokenizer.encode_tensor(x, [0, 1, 2, 3]))
    assert loaded.content_hash() == trained_tokenizer.content_hash()


def test_a_tokenizer_of_another_format_is_refused_naming_what_to_do(tmp_path, tiny_tokenizer):
    tiny_tokenizer.save_pretrained(tmp_path / "tok")
    config_path = tmp_path / "tok" / "config.json"
    for saved_format, remedy in ((1, "train it again with this unitok"), (3, "upgrade unitok")):
        config = json.loads(config_path.read_text())
        config_path.write_text(json.dumps({**config, "format": saved_format}))
        expected = f"a tokenizer of format {saved_format}; this unitok reads format 2: {remedy}"
        with pytest.raises(ValueError, match=expected):
            MediaTokenizer.from_pretrained(tmp_path / "tok")


def test_a_new_modality_section_keeps_saved_content_hashes(tiny_tokenizer):
    """A spec that gains an (absent) modality section must hash as before, or every saved
    tokenizer, vocabulary and shard set would be refused after the upgrade."""
    extended = dataclasses.make_dataclass("ExtendedSpec", [("video", object, None)], bases=(TokenizerSpec,),
                                          frozen=True)
    before = tiny_tokenizer.content_hash()
    spec = tiny_tokenizer.spec
    try:
        tiny_tokenizer.spec = extended(**{f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)})
        assert tiny_tokenizer.content_hash() == before
    finally:
        tiny_tokenizer.spec = spec


def test_a_setting_added_later_keeps_saved_content_hashes_at_its_default(tiny_tokenizer):
    """`autoencoder.per_frame` (false for every tokenizer saved before it existed) stays out of the
    hash at its default, and enters it when set."""
    assert "per_frame" not in tiny_tokenizer.hashed_spec()["autoencoder"]
    assert "channels" in tiny_tokenizer.hashed_spec()["autoencoder"]
    frames = MediaTokenizer(TokenizerSpec.load(REPO / "experiments" / "tokenizers" / "video-frames-32.yaml"))
    assert frames.hashed_spec()["autoencoder"]["per_frame"] is True


def test_encode_accepts_images_and_paths(tmp_path, tiny_tokenizer):
    images = tiny_tokenizer.decode(tiny_tokenizer.encode_tensor(digit_images(2), [0, 1]))
    images[0].save(tmp_path / "a.png")
    from_objects = tiny_tokenizer.encode(images[0], seed=7)
    from_path = tiny_tokenizer.encode(tmp_path / "a.png", seed=7)
    assert torch.equal(from_objects, from_path)


def test_tokens_depend_on_the_noise_only_through_k_T():
    """The trajectory uses ε̂ = σ_T·c[k_T], not ε: feeding ε̂ itself as the noise gives the same
    tokens, whether each step quantizes the noisy residual or only the clean latent's share."""
    x = digit_images(4)
    for mode in ("quantized", "subtracted"):
        tokenizer = MediaTokenizer(tiny_tokenizer_spec(noise=mode)).eval()
        with torch.no_grad():
            z = tokenizer.latent(x)
            noise = tokenizer.draw_noise(4, seeds=[0, 1, 2, 3])
            ids = tokenizer.quantizer(z, noise).ids_BTN
            ids_from_codes = tokenizer.quantizer(z, tokenizer.quantizer.quantized_noise(noise)).ids_BTN
        assert torch.equal(ids, ids_from_codes), mode


def test_running_states_of_a_trajectory_prefix_are_its_states(tiny_tokenizer):
    """`running_states` of the first b blocks (what the LM's media inputs carry, also while
    sampling block by block) equals the decoder's states s_T … s_{T−b+1}; bad ids are refused."""
    ids = tiny_tokenizer.encode_tensor(torch.rand(2, 3, 32, 32), seeds=[0, 1])
    full = torch.stack(tiny_tokenizer.quantizer.states(ids), dim=1).transpose(2, 3)  # (B, T+1, N, C)
    torch.testing.assert_close(tiny_tokenizer.quantizer.running_states(ids), full)
    torch.testing.assert_close(tiny_tokenizer.quantizer.running_states(ids[:, :2]), full[:, :2])
    with pytest.raises(ValueError, match="out of range"):
        tiny_tokenizer.quantizer.running_states(ids[:, :2] + 64)
    with pytest.raises(ValueError, match="b ≤ 5"):
        tiny_tokenizer.quantizer.running_states(torch.cat([ids, ids], dim=1))


def test_block_inputs_are_the_state_at_each_cell_and_the_noise(tiny_tokenizer):
    """A query's inputs are the running state before its block and ε̂ = s_T, and never depend on
    its own code; a context's state holds its own step too."""
    quantizer = tiny_tokenizer.quantizer
    ids = tiny_tokenizer.encode_tensor(torch.rand(2, 3, 32, 32), seeds=[0, 1])
    states = quantizer.running_states(ids)  # (B, T+1, N, C): s_T … s_0
    C = states.shape[-1]
    before = torch.cat([torch.zeros_like(states[:, :1]), states[:, :-1]], dim=1)
    context, query = quantizer.block_inputs(ids)  # each (B, T+1, N, 2C)
    torch.testing.assert_close(query[..., :C], before)
    torch.testing.assert_close(context[..., :C], states)
    for inputs in (context, query):
        torch.testing.assert_close(inputs[..., C:], states[:, :1].expand_as(states))
    other = ids.clone()
    other[:, 2] = (ids[:, 2] + 1) % 64
    other_context, other_query = quantizer.block_inputs(other)
    assert torch.equal(other_query[:, 2], query[:, 2]), "a query never holds its own code"
    assert ((other_context[:, 2] - context[:, 2]).abs().amax(-1) > 0).all(), "a context does"
    assert (other_query[:, 3] != query[:, 3]).any(), "and the next block's queries see it"
