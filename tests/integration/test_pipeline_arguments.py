"""An item's output depends on its prompt (or media), its seed and the settings only; the Python
API refuses wrong arguments, untrained directions and over-long prompts naming what to change."""

import math

import pytest
import torch
from PIL import Image

from unitok.core.errors import UnitokError
from unitok.pipeline import UniTokPipeline

PROMPT, OTHERS = "a red 7 on the left", ["a big blue 1 at the top", "dial 4 7 9"]
SUFFIX = {"image": "png", "audio": "wav", "video": "mp4"}
BLANK = Image.new("RGB", (32, 32))


@pytest.fixture(scope="module")
def pipe(tiny_multimodal_run):
    return UniTokPipeline.from_pretrained(tiny_multimodal_run / "model")


@pytest.fixture(scope="module")
def image_only(tiny_run):
    return UniTokPipeline.from_pretrained(tiny_run / "model")


@pytest.mark.parametrize("modality", ["image", "audio", "video"])
def test_an_items_media_codes_do_not_depend_on_its_batch_or_its_place_in_it(pipe, modality):
    """203dc14 drew a batch from one generator: 92 % of ids matched alone against a batch of 2."""
    alone = pipe.generate_media_ids(modality, [PROMPT], seed=3)[0]
    first = pipe.generate_media_ids(modality, [PROMPT, OTHERS[0]], seed=3)[0]
    second = pipe.generate_media_ids(modality, [OTHERS[0], PROMPT, OTHERS[1]], seed=3)[1]
    listed = pipe.generate_media_ids(modality, [OTHERS[1], PROMPT], seed=[11, 3])[1]
    assert torch.equal(alone, first) and torch.equal(alone, second) and torch.equal(alone, listed)
    assert not torch.equal(alone, pipe.generate_media_ids(modality, [PROMPT], seed=4)[0]), "the seed matters"


@pytest.mark.parametrize("modality", ["image", "audio", "video"])
def test_an_items_caption_does_not_depend_on_its_batch_or_its_place_in_it(pipe, tiny_multimodal_run, modality):
    """203dc14 tokenized item i with seed + i and sampled the batch from one generator."""
    files = [str(f) for f in sorted((tiny_multimodal_run / "data" / modality / "heldout").rglob(
        f"*.{SUFFIX[modality]}"))[:3]]
    sampled = {"gumbel_scale": 1.0, "max_new_tokens": 6}  # drawn, not greedy: the draws are what is at stake
    alone = pipe.media_to_text(modality, files[0], seed=5, **sampled)
    assert pipe.media_to_text(modality, [files[1], files[0], files[2]], seed=5, **sampled)[1] == alone
    assert pipe.media_to_text(modality, [files[2], files[0]], seed=[9, 5], **sampled)[1] == alone


@pytest.mark.parametrize("seed", ["0", None, 1.5, -1, 2**63, True, [1]])
def test_a_seed_that_is_not_one_integer_or_one_per_item_is_refused_naming_the_seed(pipe, seed):
    with pytest.raises(UnitokError, match=r"^seed: expected an integer in \[0, 2\*\*63\) or a list of 2 such"):
        pipe.text_to_image([PROMPT, OTHERS[0]], seed=seed)
    with pytest.raises(UnitokError, match=r"^seed: expected"):
        pipe.image_to_text([BLANK] * 2, seed=seed)


@pytest.mark.parametrize("option, message", [
    ({"temperature": math.inf}, "temperature: expected a finite number, got inf"),
    ({"guidance_scale": math.nan}, "guidance_scale: expected a finite number, got nan"),
    ({"top_k": 2.5}, "top_k: expected int, got float 2.5"),
    ({"top_p": 1.5}, r"top_p: must be in \(0, 1\], got 1.5"),
    ({"top_k": 0}, "top_k: must be >= 1, got 0")])
def test_sampler_options_out_of_range_or_not_finite_are_refused_naming_them(pipe, option, message):
    with pytest.raises(UnitokError, match=message):
        pipe.text_to_image(PROMPT, **option)


@pytest.mark.parametrize("max_new_tokens", [-1, 0, 2.5, True])
def test_max_new_tokens_must_be_a_positive_integer(pipe, max_new_tokens):
    with pytest.raises(UnitokError, match=rf"^max_new_tokens: expected an integer >= 1, got {max_new_tokens}"):
        pipe.image_to_text(BLANK, max_new_tokens=max_new_tokens)


def test_a_direction_the_model_was_not_trained_for_is_refused_naming_what_it_was(image_only):
    """203dc14 captioned with a model trained only to draw: ``in in in … the the …``, exit 0."""
    with pytest.raises(UnitokError, match=r"^this model was not trained for image_to_text \(it was trained for "
                                          r"text_to_image\)$"):
        image_only.image_to_text(BLANK)
    with pytest.raises(UnitokError, match="not trained for image_to_text"):
        image_only.continue_text(["a red 3", BLANK, "in other words:"])


def test_a_prompt_longer_than_the_models_positions_is_refused(image_only):
    positions = image_only.max_positions
    with pytest.raises(UnitokError, match=rf"^a prompt of \d+ tokens and its image's \d+ positions needs \d+ "
                                          rf"positions; this model has {positions}$"):
        image_only.text_to_image("a red 7 on the left " * 200)
    with pytest.raises(UnitokError, match=rf"needs \d+ positions; this model has {positions}$"):
        image_only.continue_text("a red 7 on the left " * 200)


def test_empty_inputs_and_bad_seeds_of_the_lower_level_calls_are_refused_naming_them(pipe):
    with pytest.raises(UnitokError, match="^prompt: expected a string or a non-empty list of strings$"):
        pipe.generate_media_ids("image", [])
    tokenizer = pipe.tokenizer_for("image")
    with pytest.raises(UnitokError, match="^media: expected at least one item$"):
        tokenizer.encode([])
    with pytest.raises(UnitokError, match=r"^seed: expected an integer"):
        tokenizer.encode([BLANK], seed=1.5)
    assert pipe.generate_media_ids("image", PROMPT).shape[0] == 1, "a string is one prompt, not one per character"
