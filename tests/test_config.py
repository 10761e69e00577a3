"""Typed configs: wrong fields fail at load time with the file, the field path and what was expected."""

from pathlib import Path

import pytest
import yaml

from unitok.config import ConfigError
from unitok.recipe import load_recipe

from .conftest import write_tiny_recipe


def test_every_problem_is_reported_with_its_path(tmp_path):
    path = write_tiny_recipe(tmp_path, lm={"steps": "ten", "learing_rate": 1e-3},
                             tokenizers={"image": {"spec": str(tmp_path / "tiny-tokenizer.yaml"),
                                                   "training": {"batch_size": 1.5}}})
    with pytest.raises(ConfigError) as err:
        load_recipe(path)
    message = str(err.value)
    assert f"{path}: lm.steps: expected int, got str 'ten'" in message
    assert f"{path}: lm.learing_rate: unknown field" in message
    assert "tokenizers.image.training.batch_size: expected int, got float 1.5" in message


def test_bad_value_in_a_referenced_spec_names_that_file(tmp_path):
    path = write_tiny_recipe(tmp_path)
    spec = tmp_path / "tiny-tokenizer.yaml"
    data = yaml.safe_load(spec.read_text())
    data["quantizer"]["schedule"] = "sigmoid"
    spec.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"tokenizers\.image\.spec: .*tiny-tokenizer.yaml: quantizer.schedule: expected one of \['cosine', 'linear'\]"):
        load_recipe(path)


def test_missing_required_field_and_constraint_violations(tmp_path):
    path = write_tiny_recipe(tmp_path)
    data = yaml.safe_load(path.read_text())
    del data["model"]
    data["lm"]["caption_dropout"] = 1.5
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as err:
        load_recipe(path)
    assert "model: missing required field" in str(err.value)
    assert "lm: caption_dropout must be in [0, 1)" in str(err.value)


def test_shipped_recipes_and_specs_load():
    from pathlib import Path

    for recipe in sorted(Path(__file__).parent.parent.glob("recipes/*.yaml")):
        loaded = load_recipe(recipe)
        assert loaded.recipe.name and loaded.model_spec.hidden_size > 0


def test_first_step_fraction_outside_zero_one_is_refused_with_its_field(tmp_path):
    path = write_tiny_recipe(tmp_path)
    data = yaml.safe_load(path.read_text())
    data["lm"]["first_step_fraction"] = 1.5
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"lm: first_step_fraction must be in \[0, 1\]"):
        load_recipe(path)


def test_groups_must_fit_the_tokenizer_and_the_sampler_must_draw_the_trained_ones(tmp_path):
    path = write_tiny_recipe(tmp_path, lm={"rounds": {"image": [2, 1]}}, samplers={"image": {"rounds": [3, 1, 1, 1]}})
    with pytest.raises(ConfigError) as err:
        load_recipe(path)
    assert "lm.rounds.image: expected one entry per generated block (4 for T = 4 in timestep order), got [2, 1]" in str(err.value)
    assert "samplers.image: rounds [3, 1, 1, 1] (cosine, random order) are not the groups the model trains on" \
        in str(err.value)
    typo = write_tiny_recipe(tmp_path, lm={"rounds": {"imgae": [2, 1, 1, 1]}})
    with pytest.raises(ConfigError, match=r"lm\.rounds: \['imgae'\] name no tokenizer of this recipe \(\['image'\]\)"):
        load_recipe(typo)
    trained = write_tiny_recipe(tmp_path, samplers={"image": {"rounds": [2, 1, 1, 1]}})
    assert load_recipe(trained).recipe.samplers["image"].rounds == (2, 1, 1, 1)
    assert load_recipe(write_tiny_recipe(tmp_path, lm={"cell_order": "lattice"})).recipe.lm.cell_order == "lattice"
    reordered = write_tiny_recipe(tmp_path, samplers={"image": {"rounds": [2, 1, 1, 1], "cell_order": "lattice"}})
    with pytest.raises(ConfigError, match=r"\(cosine, lattice order\) are not the groups the model trains on"):
        load_recipe(reordered)


def test_lattice_cell_order_is_refused_for_latents_that_are_not_square_images(tmp_path):
    multimodal = Path("recipes/digits-multimodal.yaml")
    data = yaml.safe_load(multimodal.read_text())
    for section in data["tokenizers"].values():
        section["spec"] = str(Path(section["spec"]).resolve())
    data["model"], data["lm"]["cell_order"] = str(Path(data["model"]).resolve()), "lattice"
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"tokenizers\.audio: lm\.cell_order: lattice needs square 2-D latents"):
        load_recipe(path)


def test_an_even_readout_patch_is_refused_with_its_field(tmp_path):
    path = write_tiny_recipe(tmp_path, lm={"readout_patch": 4})
    with pytest.raises(ConfigError, match=r"lm: readout_patch must be an odd number >= 1, got 4"):
        load_recipe(path)
