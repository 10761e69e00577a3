"""The tiny recipe end to end: tokenizer -> BPE -> shards -> LM -> pipeline -> generate -> eval."""

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import unitok
from tests.helpers import write_tiny_recipe
from unitok import UniTokPipeline
from unitok.core.errors import UnitokError
from unitok.lm.sampling import SamplerConfig
from unitok.recipe.schema import load_recipe
from unitok.recipe.stages import RecipeRun
from unitok.tokenizer.vocabulary import VocabularyError

SCRIPTS = Path(__file__).parent / "scripts"


def test_every_stage_leaves_its_output(tiny_run):
    for path in ("model/model_index.json", "model/vocabulary.json", "model/transformer/model.safetensors",
                 "model/image_tokenizer/model.safetensors", "model/text_tokenizer/spm.model",
                 "samples.png", "trajectory.png", "loss.png", "model/README.md", "metrics.json",
                 "shards/image/train/manifest.json", "shards/image/train/README.md"):
        assert (tiny_run / path).is_file(), path
    assert not list((tiny_run / "model").rglob("*.bin")) and not list((tiny_run / "model").rglob("*.pkl"))
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    for key in ("psnr_db", "codebook_usage", "plain_vq_psnr_db"):
        assert key in metrics["image_tokenizer"]
    for key in ("digit_accuracy", "color_accuracy", "unseen_combo_digit_accuracy", "real_digit_accuracy",
                "fid", "fid_real_floor", "exact_copy_fraction", "digit_accuracy_given_first_step"):
        assert key in metrics["text_to_image"]
    assert metrics["text_to_image"]["passes"] == 5  # the tiny recipe's layout.decode.image.groups: [2, 1, 1, 1]
    assert len(metrics["lm"]["heldout_ce_per_block"]) == 4  # T = 4 generated blocks, noisiest first
    assert np.isfinite(metrics["lm"]["first_step_digit_ce_gain"])


def test_pipeline_generates_and_round_trips_identically(tiny_run, tmp_path):
    """Its layout (the decode schedule its transformer trained with) and sampler settings are saved
    with it: the same seed gives the same samples after save -> load, and options given to a call
    override the saved sampler settings."""
    pipe = UniTokPipeline.from_pretrained(tiny_run / "model")
    assert pipe.layout.decode["image"].groups == (2, 1, 1, 1) and pipe.passes("image") == 5
    pipe.samplers["image"] = SamplerConfig(guidance_scale=2.0, temperature=0.8)
    prompts = ["a red 7 on the left", "a blue 3"]
    out = pipe.text_to_image(prompts, seed=0)
    assert len(out.images) == 2 and out.images[0].size == (32, 32)
    pipe.save_pretrained(tmp_path / "copy")
    loaded = UniTokPipeline.from_pretrained(tmp_path / "copy")
    assert loaded.samplers == pipe.samplers and loaded.layout == pipe.layout
    again = loaded.text_to_image(prompts, seed=0)
    assert torch.equal(out.token_ids, again.token_ids)
    assert np.array_equal(np.asarray(out.images[1]), np.asarray(again.images[1]))
    assert not torch.equal(out.token_ids, pipe.text_to_image(prompts, seed=1).token_ids)
    greedy = loaded.text_to_image(prompts, seed=0, gumbel_scale=0.0)
    assert not torch.equal(out.token_ids, greedy.token_ids) and loaded.samplers["image"].gumbel_scale == 1.0
    hot = loaded.text_to_image(prompts, seed=0, gumbel_scale=0.0, temperature=2.0)  # greedy: temperature-free
    assert torch.equal(greedy.token_ids, hot.token_ids)


def test_a_saved_layout_must_fit_the_tokenizers_and_samplers_hold_no_schedule(tiny_run, tmp_path):
    shutil.copytree(tiny_run / "model", tmp_path / "copy")
    path = tmp_path / "copy" / "model_index.json"
    index = json.loads(path.read_text())
    assert index["layout"] == {"media_order": "timestep", "readout_patch": 1, "query_patch": 1, "code_geometry": False,
                               "tied_codes": {},
                               "decode": {"image": {"groups": [2, 1, 1, 1], "group_sizes": "cosine"}},
                               "reader": {"kind": "linear", "channels": 64, "pool": 1}}
    for layout, reason in (({**index["layout"], "decode": {"image": {"groups": [2, 1]}}},
                            r"layout: decode\.image\.groups: expected one entry per generated block \(4 for T = 4"),
                           ({**index["layout"], "readout_patch": 3},
                            r"no read-out rows for 'image' read as the layout says .*readout_patch 3"),
                           ({**index["layout"], "query_patch": 3},
                            r"no query rows for 'image' drawn as the layout says \(query_patch 3\)")):
        path.write_text(json.dumps({**index, "layout": layout}))
        with pytest.raises(ValueError, match=reason):
            UniTokPipeline.from_pretrained(tmp_path / "copy")
    path.write_text(json.dumps({**index, "samplers": {"image": {"rounds": [2, 1, 1, 1]}}}))
    with pytest.raises(ValueError, match=r"samplers\.image: rounds: moved to layout\.decode\.<range>\.groups"):
        UniTokPipeline.from_pretrained(tmp_path / "copy")


def test_the_index_names_each_component_and_a_newer_format_is_refused(tiny_run, tmp_path):
    shutil.copytree(tiny_run / "model", tmp_path / "copy")
    path = tmp_path / "copy" / "model_index.json"
    index = json.loads(path.read_text())
    assert index["_class_name"] == "UniTokPipeline" and index["_unitok_version"] == unitok.__version__
    assert index["transformer"] == ["transformers", "LlamaForCausalLM"]
    assert index["text_tokenizer"] == ["unitok", "TextBPE"] and index["image_tokenizer"] == ["unitok", "MediaTokenizer"]
    path.write_text(json.dumps({**index, "format": index["format"] + 1}))
    with pytest.raises(UnitokError, match=f"format {index['format'] + 1} .* upgrade unitok"):
        UniTokPipeline.from_pretrained(tmp_path / "copy")
    path.write_text(json.dumps({**index, "format": 2}))  # unitok 0.2: the decode schedule in the samplers
    with pytest.raises(UnitokError, match="format 2 .* save it again with this unitok"):
        UniTokPipeline.from_pretrained(tmp_path / "copy")
    path.rename(path.with_name("unitok_pipeline.json"))  # how unitok 0.1 saved it
    with pytest.raises(UnitokError, match="saved by unitok 0.1"):
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


def test_a_killed_save_never_leaves_a_pipeline_that_loads_a_mix_of_two(tiny_run, tmp_path):
    """save_forever.py saves two pipelines into one folder by turns until killed (b: every weight
    + 1, sampler temperature 0.25): what a kill leaves loads as all of a, all of b, or not at all."""
    source, target = tiny_run / "model", tmp_path / "pipe"
    a = UniTokPipeline.from_pretrained(source)
    first_weight = lambda pipe: next(pipe.transformer.parameters())  # noqa: E731
    temperature = lambda pipe: pipe.samplers.get("image", SamplerConfig()).temperature  # noqa: E731
    whole = {(temperature(a), 0.0), (0.25, 1.0)}
    for kill_after in (0.05, 0.2, 0.45):
        process = subprocess.Popen([sys.executable, str(SCRIPTS / "save_forever.py"), str(source), str(target)],
                                   stdout=subprocess.PIPE, text=True)
        assert process.stdout.readline().strip() == "saving"
        time.sleep(kill_after)
        process.send_signal(signal.SIGKILL)
        process.wait()
        try:
            pipe = UniTokPipeline.from_pretrained(target)
        except (FileNotFoundError, UnitokError):  # a save cut short refuses to load
            continue
        shift = round((first_weight(pipe) - first_weight(a)).mean().item(), 3)
        assert (temperature(pipe), shift) in whole


def test_a_hub_repo_id_loads_from_the_local_cache_and_missing_ones_are_clear_errors(tiny_run, tmp_path):
    revision = "0123456789abcdef0123456789abcdef01234567"  # huggingface_hub's cache layout, no network
    repo = tmp_path / "cache" / "models--someone--tiny-unitok"
    shutil.copytree(tiny_run / "model", repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    pipe = UniTokPipeline.from_pretrained("someone/tiny-unitok", cache_dir=tmp_path / "cache", local_files_only=True)
    local = UniTokPipeline.from_pretrained(tiny_run / "model")
    same = local.text_to_image(["a red 3"], seed=0).token_ids
    assert torch.equal(pipe.text_to_image(["a red 3"], seed=0).token_ids, same)
    with pytest.raises(UnitokError, match="someone/other: no such folder, and the Hub repo could not be read"):
        UniTokPipeline.from_pretrained("someone/other", cache_dir=tmp_path / "cache", local_files_only=True)
    with pytest.raises(FileNotFoundError, match="no such folder, and not a Hub repo id"):
        UniTokPipeline.from_pretrained(tmp_path / "no" / "such" / "model")


def test_push_to_hub_uploads_a_saved_pipeline_with_its_model_card(tiny_run, tmp_path, monkeypatch):
    uploads = []

    class FakeApi:  # records what would go to the Hub
        def __init__(self, token=None):
            self.token = token

        def create_repo(self, repo_id, private=None, exist_ok=False):
            uploads.append(("create", repo_id, private, exist_ok))

        def upload_folder(self, repo_id, folder_path, commit_message):
            files = sorted(p.relative_to(folder_path).as_posix() for p in Path(folder_path).rglob("*") if p.is_file())
            card = (Path(folder_path) / "README.md").read_text()
            uploads.append(("upload", repo_id, files, card))
            return f"https://huggingface.co/{repo_id}/commit/1"

    monkeypatch.setattr("unitok.hub.HfApi", FakeApi)
    pipe = UniTokPipeline.from_pretrained(tiny_run / "model")
    assert pipe.push_to_hub("someone/tiny-unitok", private=True).endswith("/commit/1")
    pipe.save_pretrained(tmp_path / "saved", push_to_hub=True, repo_id="someone/again")
    (create, upload), (_, again) = uploads[:2], uploads[2:]
    assert create == ("create", "someone/tiny-unitok", True, True) and upload[1] == "someone/tiny-unitok"
    expected = {"model_index.json", "README.md", "transformer/model.safetensors", "image_tokenizer/config.json"}
    assert expected <= set(upload[2])
    assert "library_name: unitok" in upload[3] and again[1] == "someone/again"


def test_the_recipe_writes_a_model_card_with_its_recipe_metrics_and_samples(tiny_run):
    card = (tiny_run / "model" / "README.md").read_text()
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert card.startswith("---\n") and "library_name: unitok" in card and "pipeline_tag: text-to-image" in card
    assert "![samples](samples.png)" in card and (tiny_run / "model" / "samples.png").is_file()
    assert f'"digit_accuracy": {metrics["text_to_image"]["digit_accuracy"]}' in card and "name: tiny" in card
