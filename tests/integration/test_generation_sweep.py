"""`unitok sweep` of kind generation at a tiny size: every point trained and evaluated once,
LMs shared between samplers and upstream stages between runs, resumable, bad points named first."""

import json

import pytest
import yaml

from tests.helpers import TINY_SPEC, write_tiny_recipe
from unitok.core.config import ConfigError
from unitok.experiments.generation_sweep import run_generation_sweep


def write_sweep(folder, runs, lm_steps=(3, 6)):
    recipe = write_tiny_recipe(folder, layout={"decode": {}}, lm={"eval_every": 3, "checkpoint_every": 3},
                               samplers={"image": {"temperature": 0.9}},
                               eval={"num_samples": 6, "batch_size": 6, "grid_samples": 2, "trajectory_samples": 1,
                                     "classifier_steps": 10})
    raster_spec = folder / "tiny-raster.yaml"
    raster_spec.write_text(yaml.safe_dump({**TINY_SPEC, "quantizer": {"noise_steps": 0, "codebook_size": 64}}))
    runs = {name: run for name, run in runs.items()}
    if "raster_ar" in runs:
        raster = {"spec": str(raster_spec), "plain_vq_baseline": False}
        runs["raster_ar"] = {"overrides": {"tokenizers": {"image": raster}, "layout": {"media_order": "raster"}},
                             **runs["raster_ar"]}
    path = folder / "sweep.yaml"
    sweep = {"kind": "generation", "recipe": str(recipe), "output_dir": str(folder / "sweep"),
             "lm_steps": list(lm_steps), "eval": {"num_samples": 4}, "runs": runs}
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    return path


def test_generation_sweep_trains_each_lm_once_and_evaluates_each_sampler(tmp_path):
    path = write_sweep(tmp_path, {
        "groups": {"overrides": {"layout": {"decode": {"image": {"groups": [3, 1, 1, 1], "group_sizes": "linear"}}}},
                   "samplers": {"sampled": {}, "greedy": {"gumbel_scale": 0.0}}},
        "T2": {"overrides": {"layout": {"decode": {"image": {"groups": [2, 1]}}}},
               "spec_overrides": {"image": {"quantizer": {"noise_steps": 2}}}},
        "raster_ar": {"lm_steps": [6]},
    })
    logs = []
    results = run_generation_sweep(path, log=logs.append)
    assert set(results) == {f"{run}/{steps}/{sampler}" for steps in (3, 6) for run, sampler in
                            (("groups", "sampled"), ("groups", "greedy"), ("T2", "recipe"))} | {"raster_ar/6/recipe"}
    for key, row in results.items():
        assert row["lm_steps"] == int(key.split("/")[1]) and row["documents"] == 8 * row["lm_steps"]  # batch 8
        assert 0 <= row["digit_accuracy"] <= 1 and row["fid"] > 0 and row["lm_seconds"] >= 0
        assert row["passes"] == {"groups": 6, "T2": 3, "raster_ar": 16}[row["run"]]  # raster: N = 16 codes
    out = tmp_path / "sweep"
    trained = [line for line in logs if line.startswith("[run]") and line.endswith("/lm")]
    assert len(trained) == 2 * 2 + 1, "one LM per run and step count, shared by its samplers"
    assert len([line for line in logs if line.startswith("[run]") and "tokenizers" in line]) == 3, \
        "one tokenizer per spec: T = 4, T = 2 and the raster baseline's"
    for sampler, gumbel in (("sampled", 1.0), ("greedy", 0.0)):
        point = out / "groups" / "steps-000003"
        assert (point / sampler / "lm").resolve() == (point / "lm").resolve()
        recipe = yaml.safe_load((point / sampler / "recipe.yaml").read_text())
        assert recipe["lm"]["steps"] == 3 and recipe["eval"]["num_samples"] == 4
        saved = json.loads((point / sampler / "model" / "model_index.json").read_text())
        assert saved["layout"]["decode"]["image"] == {"groups": [3, 1, 1, 1], "group_sizes": "linear"}, \
            "the groups the LM trained on"
        image = saved["samplers"]["image"]
        assert image["gumbel_scale"] == gumbel and image["temperature"] == 0.9, \
            "a sampler is its settings over the recipe's, nothing from the run's other samplers"
    table = (out / "results.md").read_text().splitlines()
    assert table[0].startswith("| run | sampler | lm_steps |") and len(table) == 2 + len(results)
    assert json.loads((out / "results.json").read_text()) == results

    again = []
    assert run_generation_sweep(path, log=again.append) == results
    assert not any(line.startswith("[run]") for line in again), "a finished sweep is skipped"


def test_a_bad_point_is_named_before_anything_trains(tmp_path):
    five_blocks = {"layout": {"decode": {"image": {"groups": [2, 1, 1, 1, 1]}}}}
    path = write_sweep(tmp_path, {"rdpm": {"overrides": five_blocks}})
    with pytest.raises(ConfigError, match=r"layout\.decode\.image\.groups: expected one entry per generated block"):
        run_generation_sweep(path, log=lambda _: None)
    assert not list((tmp_path / "sweep").rglob("stage.json"))
    path = write_sweep(tmp_path, {"rdpm": {"overrides": {"lm": {"stepz": 3}}}})
    with pytest.raises(ConfigError, match=r"lm\.stepz: unknown field"):
        run_generation_sweep(path, log=lambda _: None)


def test_a_media_to_text_sweep_scores_captions_and_switches_tasks_off(tmp_path):
    """direction: image_to_text with the recipe's text_to_image switched off (weight 0): the table
    holds caption scores, and each run's read-out neighbourhood reaches its saved pipeline."""
    only_captions = {"lm": {"tasks": {"text_to_image": 0, "image_to_text": 1}}}
    path = write_sweep(tmp_path, {"patch_1": {"overrides": only_captions},  # the default read-out
                                  "patch_3": {"overrides": {**only_captions, "layout": {"readout_patch": 3}}}},
                       lm_steps=(3,))
    sweep = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**sweep, "direction": "image_to_text"}, sort_keys=False))
    results = run_generation_sweep(path, log=lambda _: None)
    assert set(results) == {"patch_1/3/recipe", "patch_3/3/recipe"}
    for key, row in results.items():
        assert 0 <= row["digit_accuracy"] <= 1 and row["caption_loss_matched"] > 0 and "passes" not in row
        point = tmp_path / "sweep" / row["run"] / "steps-000003" / "recipe"
        metrics = json.loads((point / "metrics.json").read_text())
        assert "text_to_image" not in metrics and set(metrics["lm"]["heldout_loss_per_task"]) == {"image_to_text"}
        layout = json.loads((point / "model" / "model_index.json").read_text())["layout"]
        assert layout["readout_patch"] == int(row["run"][-1])
    table = (tmp_path / "sweep" / "results.md").read_text()
    assert table.startswith("| run | sampler | lm_steps | documents | digit_accuracy |")
    path.write_text(yaml.safe_dump({**sweep, "direction": "text"}, sort_keys=False))
    with pytest.raises(ValueError, match="direction: expected a text-to-media or media-to-text task"):
        run_generation_sweep(path, log=lambda _: None)
