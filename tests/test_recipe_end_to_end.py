"""The tiny recipe end to end: tokenizer -> BPE -> shards -> LM -> pipeline -> generate -> eval."""

import json
import shutil

import numpy as np
import pytest
import torch

from unitok import UniTokPipeline
from unitok.recipe import RecipeRun, load_recipe
from unitok.sampling import SamplerConfig
from unitok.vocabulary import VocabularyError

from .conftest import write_tiny_recipe


def test_every_stage_leaves_its_output(tiny_run):
    for path in ("model/unitok_pipeline.json", "model/vocabulary.json", "model/transformer/model.safetensors",
                 "model/image_tokenizer/model.safetensors", "model/text_tokenizer/spm.model",
                 "samples.png", "trajectory.png", "metrics.json", "shards/image/train/manifest.json"):
        assert (tiny_run / path).is_file(), path
    assert not list((tiny_run / "model").rglob("*.bin")) and not list((tiny_run / "model").rglob("*.pkl"))
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    for key in ("psnr_db", "codebook_usage", "plain_vq_psnr_db"):
        assert key in metrics["image_tokenizer"]
    for key in ("digit_accuracy", "color_accuracy", "unseen_combo_digit_accuracy", "real_digit_accuracy",
                "fid", "fid_real_floor", "exact_copy_fraction", "digit_accuracy_given_first_step"):
        assert key in metrics["text_to_image"]
    assert metrics["text_to_image"]["passes"] == 5  # the tiny recipe's lm.rounds: [2, 1, 1, 1]
    assert len(metrics["lm"]["heldout_ce_per_block"]) == 4  # T = 4 generated blocks, noisiest first
    assert np.isfinite(metrics["lm"]["first_step_digit_ce_gain"])


def test_pipeline_generates_and_round_trips_identically(tiny_run, tmp_path):
    """Its sampler settings (rounds per block) are saved with it: the same seed gives the same
    samples after save -> load, and options given to a call override the saved ones."""
    pipe = UniTokPipeline.from_pretrained(tiny_run / "model")
    pipe.samplers["image"] = SamplerConfig(guidance_scale=2.0, rounds=(3, 2, 1, 1), round_schedule="quadratic")
    prompts = ["a red 7 on the left", "a blue 3"]
    out = pipe.text_to_image(prompts, seed=0)
    assert len(out.images) == 2 and out.images[0].size == (32, 32) and pipe.passes("image") == 7
    pipe.save_pretrained(tmp_path / "copy")
    loaded = UniTokPipeline.from_pretrained(tmp_path / "copy")
    assert loaded.samplers == pipe.samplers
    again = loaded.text_to_image(prompts, seed=0)
    assert torch.equal(out.token_ids, again.token_ids)
    assert np.array_equal(np.asarray(out.images[1]), np.asarray(again.images[1]))
    assert not torch.equal(out.token_ids, pipe.text_to_image(prompts, seed=1).token_ids)
    one_pass = loaded.text_to_image(prompts, seed=0, rounds=[1, 1, 1, 1])
    assert loaded.passes("image", rounds=[1, 1, 1, 1]) == 4 and not torch.equal(out.token_ids, one_pass.token_ids)
    assert torch.equal(one_pass.token_ids, pipe.text_to_image(prompts, seed=0, rounds=[1, 1, 1, 1]).token_ids)
    with pytest.raises(ValueError, match="rounds lists 2 blocks"):
        pipe.text_to_image(prompts, rounds=[2, 1])
    index = json.loads((tmp_path / "copy" / "unitok_pipeline.json").read_text())
    index["samplers"]["image"]["rounds"] = [2, 1]
    (tmp_path / "copy" / "unitok_pipeline.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="samplers.image: rounds lists 2 blocks, but this tokenizer draws 4"):
        UniTokPipeline.from_pretrained(tmp_path / "copy")


def test_pipeline_refuses_a_tokenizer_from_another_vocabulary(tiny_run, tmp_path):
    pipe = UniTokPipeline.from_pretrained(tiny_run / "model")
    with torch.no_grad():
        pipe.media_tokenizers["image"].quantizer.codebook.add_(1.0)
    pipe.save_pretrained(tmp_path / "tampered")  # the tokenizer's hash no longer matches the manifest
    with pytest.raises(VocabularyError, match="media tokenizer 'image' does not match"):
        UniTokPipeline.from_pretrained(tmp_path / "tampered")


def test_rerun_skips_finished_stages(tiny_run):
    logs = []
    recipe = tiny_run.parent / "recipe.yaml"
    RecipeRun(load_recipe(recipe), log=logs.append).run()
    assert sum(line.startswith("[skip]") for line in logs) == 7, logs
    assert not any(line.startswith("[run]") for line in logs)


def test_changed_lm_config_redoes_only_downstream_stages(tmp_path):
    recipe = write_tiny_recipe(tmp_path, lm={"steps": 2, "checkpoint_every": 1, "eval_every": 1},
                               eval={"num_samples": 2, "batch_size": 2, "grid_samples": 2, "trajectory_samples": 1,
                                     "classifier_steps": 5})
    RecipeRun(load_recipe(recipe), log=lambda _: None).run(stop_after="lm")
    changed = write_tiny_recipe(tmp_path, lm={"steps": 3, "checkpoint_every": 1, "eval_every": 1})
    logs = []
    RecipeRun(load_recipe(changed), log=logs.append).run(stop_after="lm")
    assert [line.split()[0] for line in logs] == ["[skip]"] * 4 + ["[redo]", "[run]"]
    history = json.loads((tmp_path / "run" / "lm" / "history.json").read_text())
    assert history["step"] == 3


def test_lm_stage_starts_from_the_same_weights_whatever_ran_before(tmp_path):
    """Redoing only the LM stage (after a kill, or with earlier stages reused) trains the same
    model as a run of every stage: its initial weights depend on the recipe's seed alone."""
    from safetensors.torch import load_file

    recipe = write_tiny_recipe(tmp_path, lm={"steps": 2, "checkpoint_every": 1, "eval_every": 1})
    RecipeRun(load_recipe(recipe), log=lambda _: None).run(stop_after="lm")
    weights = tmp_path / "run" / "lm" / "transformer" / "model.safetensors"
    first = load_file(str(weights))
    shutil.rmtree(tmp_path / "run" / "lm")
    torch.manual_seed(123)  # whatever the process did before
    RecipeRun(load_recipe(recipe), log=lambda _: None).run(stop_after="lm")
    second = load_file(str(weights))
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
