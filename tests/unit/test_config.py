"""Typed configs: wrong fields fail at load time with the file, the field path and what was expected."""

import dataclasses

import pytest
import yaml

from tests.helpers import TINY_SPEC, TINY_VIDEO_SPEC, write_tiny_multimodal_recipe, write_tiny_recipe
from unitok.configs import SHIPPED, shipped_recipes
from unitok.core.config import Config, ConfigError, config_hash, from_dict, to_dict
from unitok.core.errors import UnitokError
from unitok.lm.layout import DecodeSchedule, StreamLayout
from unitok.recipe.schema import load_recipe


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
    data["quantizer"]["noise"] = "gaussian"
    spec.write_text(yaml.safe_dump(data))
    expected = (r"tokenizers\.image\.spec: .*tiny-tokenizer.yaml: quantizer.noise: "
                r"expected one of \['quantized', 'subtracted'\]")
    with pytest.raises(ConfigError, match=expected):
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
    assert "lm.caption_dropout: must be in [0, 1), got 1.5" in str(err.value)


def test_shipped_recipes_load_by_name_and_every_shipped_spec_is_used():
    names = shipped_recipes()
    assert {"quickstart", "quickstart-ar", "quickstart-t4", "digits-multimodal"} <= set(names)
    used = set()
    for name in names:
        loaded = load_recipe(name)
        assert loaded.recipe.name == name and loaded.model_spec.hidden_size > 0
        used |= {section.spec for section in loaded.recipe.tokenizers.values()} | {loaded.recipe.model}
    shipped = {str(path.relative_to(SHIPPED)) for kind in ("tokenizers", "models")
               for path in (SHIPPED / kind).glob("*.yaml")}
    assert shipped == used, "a shipped spec that no shipped recipe uses belongs to experiments/"


def test_an_unknown_recipe_name_lists_the_shipped_ones():
    with pytest.raises(ConfigError, match=r"quickstrat: no such recipe file, nor a shipped recipe \(digits-multimodal"):
        load_recipe("quickstrat")


def test_first_step_fraction_outside_zero_one_is_refused_with_its_field(tmp_path):
    path = write_tiny_recipe(tmp_path)
    data = yaml.safe_load(path.read_text())
    data["lm"]["first_step_fraction"] = 1.5
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"lm\.first_step_fraction: must be in \[0, 1\], got 1\.5"):
        load_recipe(path)


def test_groups_must_fit_the_tokenizer_and_name_its_ranges(tmp_path):
    path = write_tiny_recipe(tmp_path, layout={"decode": {"image": {"groups": [2, 1]}}})
    with pytest.raises(ConfigError, match=r"layout\.decode\.image\.groups: expected one entry per generated block "
                                          r"\(4 for T = 4, noisiest first\), got \[2, 1\]"):
        load_recipe(path)
    typo = write_tiny_recipe(tmp_path, layout={"decode": {"imgae": {"groups": [2, 1, 1, 1]}}})
    with pytest.raises(ConfigError, match=r"layout\.decode: \['imgae'\] name no tokenizer of this recipe"):
        load_recipe(typo)
    too_many = write_tiny_recipe(tmp_path, layout={"decode": {"image": {"groups": [17, 1, 1, 1]}}})
    with pytest.raises(ConfigError, match=r"17 groups cannot each hold one of 16 cells"):
        load_recipe(too_many)
    raster = write_tiny_recipe(tmp_path, layout={"media_order": "raster"})
    with pytest.raises(ConfigError, match=r"the raster order draws one code per pass; it takes no decode schedule"):
        load_recipe(raster)


def test_the_decode_schedule_is_stated_once(tmp_path):
    """The groups a model is trained with live in its layout; the sampler and the LM's training
    section cannot state them again, and their fields of unitok 0.2 say where they went."""
    groups = [2, 1, 1, 1]
    for overrides, message in (({"lm": {"rounds": groups}}, r"lm\.rounds: moved to layout\.decode\.<range>\.groups"),
                               ({"lm": {"media_order": "raster"}}, r"lm\.media_order: moved to layout\.media_order"),
                               ({"samplers": {"image": {"rounds": groups}}},
                                r"samplers\.image\.rounds: moved to layout\.decode\.<range>\.groups"),
                               ({"samplers": {"image": {"groups": groups}}},
                                r"samplers\.image\.groups: unknown field")):
        with pytest.raises(ConfigError, match=message):
            load_recipe(write_tiny_recipe(tmp_path, **overrides))


def test_a_layout_fits_its_tokenizers_and_completes_the_schedules_it_leaves_out():
    assert StreamLayout(media_order="raster").problems("image", 4, (4, 4)) == [
        "media_order: raster needs tokenizers with noise_steps = 0; image's has 4"]
    assert StreamLayout().problems("image", 0, (4, 4)) == [
        "media_order: timestep needs tokenizers with noise_steps >= 1 (T = 0 is the raster baseline's); image's has 0"]
    assert StreamLayout(media_order="raster").problems("image", 0, (4, 4)) == []
    fitted = StreamLayout().fitted({"image": (4, (4, 4)), "audio": (1, (4, 6))})
    assert fitted.decode["image"].groups == (1, 1, 1, 1) and fitted.decode["audio"].groups == (1,)
    with pytest.raises(UnitokError, match=r"^layout: decode: 'video' names no media range of this model "
                                          r"\(\['image'\]\)$"):
        StreamLayout(decode={"video": DecodeSchedule((2,))}).fitted({"image": (1, (4, 4))})


def test_an_even_readout_patch_is_refused_with_its_field(tmp_path):
    path = write_tiny_recipe(tmp_path, layout={"readout_patch": 4})
    with pytest.raises(ConfigError, match=r"layout\.readout_patch: must be an odd number, got 4"):
        load_recipe(path)


def test_every_out_of_range_value_is_reported_at_load_time_all_at_once(tmp_path):
    """203dc14 reported two of these three (a negative learning rate passed the check, ran four
    stages and died in the fifth), and took lm.steps: -5 as an untrained run."""
    path = write_tiny_recipe(tmp_path, lm={"learning_rate": -2e-3, "steps": -5, "caption_dropout": 1.5},
                             eval={"num_samples": 0})
    with pytest.raises(ConfigError) as err:
        load_recipe(path)
    lines = str(err.value).splitlines()
    assert [line.split(": ", 1)[1] for line in lines] == [
        "lm.steps: must be >= 1, got -5", "lm.learning_rate: must be > 0, got -0.002",
        "lm.caption_dropout: must be in [0, 1), got 1.5", "eval.num_samples: must be >= 2, got 0"]


@pytest.mark.parametrize("where, value", [("lm.learning_rate", ".nan"), ("samplers.image.temperature", ".inf"),
                                          ("lm.tasks.text_to_image", "-.inf")])
def test_nan_and_infinity_are_refused_wherever_a_number_is_read(tmp_path, where, value):
    path = write_tiny_recipe(tmp_path)
    text = yaml.safe_load(path.read_text())
    section = text
    *parents, key = where.split(".")
    for parent in parents:
        section = section.setdefault(parent, {})
    section[key] = "PLACEHOLDER"
    path.write_text(yaml.safe_dump(text).replace("PLACEHOLDER", value))
    with pytest.raises(ConfigError, match=rf"{where}: expected a finite number, got -?(nan|inf)"):
        load_recipe(path)


def test_tokenizer_specs_that_could_not_build_are_refused_at_load_time():
    from tests.helpers import TINY_SPEC
    from unitok.tokenizer.media_tokenizer import TokenizerSpec

    with pytest.raises(ConfigError, match=r"autoencoder\.channels: every width must be a multiple of 8 \(GroupNorm "
                                          r"of 8 groups\), got \[12, 24\]"):
        from_dict(TokenizerSpec, {**TINY_SPEC, "autoencoder": {**TINY_SPEC["autoencoder"], "channels": [12, 24]}})
    with pytest.raises(ConfigError, match=r"image: the input 30x30 must divide by the autoencoder's downsampling 8x8"):
        from_dict(TokenizerSpec, {**TINY_SPEC, "image": {"size": 30}})


def test_configs_built_in_python_name_every_bad_field():
    from unitok.lm.sampling import SamplerConfig
    from unitok.train.lm import LMTraining

    with pytest.raises(ValueError, match=r"guidance_scale: expected a finite number, got nan; top_p: must be in "
                                         r"\(0, 1\], got 1\.5"):
        SamplerConfig(guidance_scale=float("nan"), top_p=1.5)
    with pytest.raises(ValueError, match=r"^temperature: expected float, got str 'warm'; top_k: expected int, got "
                                         r"float 2\.5$"):
        SamplerConfig(top_k=2.5, temperature="warm")
    assert SamplerConfig(temperature="0.8").temperature == 0.8, "converted as a YAML file's value is"
    with pytest.raises(ValueError, match=r"tasks\.text_to_imag: unknown task"):
        LMTraining(tasks={"text_to_imag": 1.0})


def test_a_bad_query_patch_is_refused_with_its_field(tmp_path):
    for layout, message in (({"query_patch": 2}, r"layout\.query_patch: must be an odd number, got 2"),
                            ({"query_patch": 3, "media_order": "raster"},
                             r"layout\.query_patch: is a neighbourhood of decided cells .* the raster order has none")):
        with pytest.raises(ConfigError, match=message):
            load_recipe(write_tiny_recipe(tmp_path, layout=layout))


def test_a_tokenizer_that_codes_frames_as_images_must_be_the_image_tokenizer_per_frame(tmp_path):
    path = write_tiny_multimodal_recipe(tmp_path)
    recipe = yaml.safe_load(path.read_text())
    frames = {**TINY_VIDEO_SPEC, "autoencoder": {**TINY_SPEC["autoencoder"], "per_frame": True},
              "quantizer": TINY_SPEC["quantizer"]}
    where = r"tokenizers\.video\.frames_from: "
    for spec, source, message in (
            (frames, "image", None),
            (frames, "audio", where + r"must name an image tokenizer listed before video in this recipe, got 'audio'"),
            ({**frames, "autoencoder": TINY_SPEC["autoencoder"]}, "image", where + r"codes every frame as an image: "
             r"the spec needs autoencoder\.per_frame: true"),
            ({**frames, "autoencoder": {**frames["autoencoder"], "channels": [16]}}, "image",
             where + r"the spec's autoencoder and quantizer must be image's")):
        (tmp_path / "frames.yaml").write_text(yaml.safe_dump(spec))
        recipe["tokenizers"]["video"] = {"spec": str(tmp_path / "frames.yaml"), "frames_from": source}
        path.write_text(yaml.safe_dump(recipe))
        if message is None:
            assert load_recipe(path).tokenizer_specs["video"].latent_shape == (4, 4, 4)  # 4 frames of 4x4
        else:
            with pytest.raises(ConfigError, match=message):
                load_recipe(path)


def test_a_setting_added_later_keeps_the_hash_of_configs_made_before_it():
    """`Config.LATER` fields at their defaults stay out of stage keys, so adding a setting re-runs
    nothing that was made before it; set, they count."""
    @dataclasses.dataclass(frozen=True)
    class Before(Config):
        steps: int = 1

    @dataclasses.dataclass(frozen=True)
    class After(Config):
        LATER = frozenset({"extra"})
        steps: int = 1
        extra: dict = dataclasses.field(default_factory=dict)

    assert config_hash(Before(), 3) == config_hash(After(), 3) != config_hash(After(extra={"a": 1}), 3)
    assert to_dict(After()) == {"steps": 1, "extra": {}}, "saved files still hold every field"
