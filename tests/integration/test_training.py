"""Training on shard mixtures: a run killed after a checkpoint resumes with the same items and
losses; two-process accelerate keeps replicas in sync, gives ranks disjoint rows and learns the
codebook of one process; data positions are refused for another world size or other shard files."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml

from tests.helpers import write_tiny_recipe
from unitok.configs import SHIPPED
from unitok.core.config import ConfigError
from unitok.data.mixture import MixtureRows, ShardMix, heldout_rows, resolve_mixture
from unitok.data.shards import ShardError, read_manifest
from unitok.lm.layout import StreamLayout
from unitok.lm.model import ModelSpec, StreamModel, build_transformer
from unitok.pipeline import PipelineTokenizers
from unitok.recipe.schema import load_recipe
from unitok.recipe.stages import RecipeRun
from unitok.train.lm import LMTraining, train_lm

SCRIPT = Path(__file__).parent / "scripts" / "ddp_train.py"
ENV = {**os.environ, "ACCELERATE_USE_CPU": "1"}


def train_command(out: Path, steps: int, run: Path, launcher: list[str] | None = None) -> list[str]:
    return (launcher or [sys.executable]) + [str(SCRIPT), str(out), str(steps), str(run / "model"),
                                             str(run / "shards" / "image")]


def train(*args, **kwargs) -> None:
    result = subprocess.run(train_command(*args, **kwargs), capture_output=True, text=True, timeout=600, env=ENV)
    assert result.returncode == 0, result.stderr[-3000:]


def step_log(out: Path, rank: int = 0) -> list[dict]:
    return [json.loads(line) for line in (out / "log" / f"rank-{rank}.jsonl").read_text().splitlines()]


def test_training_killed_after_a_checkpoint_resumes_with_the_same_items_and_losses(tiny_run, tmp_path):
    train(tmp_path / "full", 12, tiny_run)
    cut = tmp_path / "cut"
    process = subprocess.Popen(train_command(cut, 12, tiny_run), env=ENV, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    while not (cut / "checkpoints" / "step-0000004").is_dir() and process.poll() is None:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (cut / "rank-0.json").is_file(), "killed before the end"
    train(cut, 12, tiny_run)  # the same command resumes from the newest checkpoint
    full, resumed = (json.loads((out / "rank-0.json").read_text()) for out in (tmp_path / "full", cut))
    assert full["final"] != full["initial"] and resumed["final"] == full["final"]
    assert step_log(cut) == step_log(tmp_path / "full")  # every step's items and loss, exactly
    items = [item for line in step_log(cut) for item in line["items"]]
    assert len(items) == 12 * 4 and len(set(items)) >= 24  # streams of many items, not one repeated


@pytest.mark.slow
def test_two_processes_under_accelerate_launch_stay_in_sync_on_disjoint_rows(tiny_run, tmp_path):
    accelerate = Path(sys.executable).parent / "accelerate"
    config = SHIPPED / "accelerate" / "cpu-2proc.yaml"
    train(tmp_path, 4, tiny_run, launcher=[str(accelerate), "launch", "--config_file", str(config)])
    ranks = [json.loads((tmp_path / f"rank-{i}.json").read_text()) for i in range(2)]
    assert all(r["world"] == 2 for r in ranks)
    assert ranks[0]["final"] == ranks[1]["final"] != ranks[0]["initial"]
    train(tmp_path / "one", 4, tiny_run)  # warmup and decay follow optimizer steps, not steps x processes
    learning_rates = [[line["lr"] for line in step_log(out)] for out in (tmp_path, tmp_path / "one")]
    assert learning_rates[0] == learning_rates[1] and len(set(learning_rates[0])) == 4
    assert all(line["grad_norm"] > 0 for line in step_log(tmp_path))
    for task in ("text_to_image", "image_to_text"):  # each task's stream splits the rows between the ranks
        seen = [{item for line in step_log(tmp_path, rank)
                 for item, t in zip(line["items"], line["tasks"]) if t == task} for rank in range(2)]
        assert seen[0] and seen[1] and not seen[0] & seen[1]
    one_process = subprocess.run(train_command(tmp_path, 6, tiny_run), capture_output=True, text=True, timeout=600,
                                 env=ENV)  # its rows would differ from the two ranks': refused, not guessed
    assert one_process.returncode != 0 and "written by 2 processes, this run has 1" in one_process.stderr


def test_data_positions_are_refused_for_other_shard_files_and_sets_too_small_to_split(tiny_run):
    tokenizers = PipelineTokenizers.from_pretrained(tiny_run / "model")
    vocab, train_set = tokenizers.vocabulary, tiny_run / "shards" / "image" / "train"
    entries = resolve_mixture([ShardMix(str(train_set))], vocab, tokenizers.media)
    data = MixtureRows(entries, vocab, seed=0, buffer=4)
    data.draw(random.Random(0), 2)
    state = data.state_dict()
    assert state["streams"][0]["consumed"] == 2
    state["streams"][0]["set_hash"] = "0" * 16  # as if the shard files were re-tokenized since the checkpoint
    with pytest.raises(ShardError, match="with other files than"):
        data.load_state_dict(state)
    rows = read_manifest(train_set)["totals"]["rows"]
    with pytest.raises(ShardError, match=f"has {rows} rows, fewer than the {rows + 1} processes"):
        resolve_mixture([ShardMix(str(train_set))], vocab, tokenizers.media, world=rows + 1)


def shard_list_recipe(folder: Path, data: list[dict], pipeline: Path | None) -> Path:
    """The tiny recipe, training on `data` (a list of shard sets) with `pipeline`'s tokenizers."""
    path = write_tiny_recipe(folder)
    recipe = yaml.safe_load(path.read_text())
    del recipe["tokenizers"]
    recipe |= {"data": data} | ({"tokenizers_from": str(pipeline)} if pipeline else {})
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_a_recipe_trains_on_a_weighted_list_of_shard_sets(tiny_run, tmp_path):
    shards = tiny_run / "shards" / "image"
    path = shard_list_recipe(tmp_path, [
        {"shards": str(shards / "train"), "weight": 0.7, "task": "text_to_image", "heldout": str(shards / "heldout")},
        {"shards": str(shards / "train"), "weight": 0.3, "task": "image_to_text"}], tiny_run / "model")
    run = RecipeRun(load_recipe(path), log=lambda _: None)
    run.run()
    metrics = json.loads((run.out / "metrics.json").read_text())
    assert metrics["lm"]["heldout_loss"] > 0 and metrics["lm"]["steps_trained"] == 6
    assert [line["step"] for line in step_log(run.out / "lm")] == list(range(1, 7))
    assert (run.out / "model" / "model_index.json").is_file()
    assert not (run.out / "tokenizers").exists() and not (run.out / "shards").exists()


def test_a_shard_list_recipe_without_a_pipeline_or_with_another_vocabulary_is_refused(tiny_run, tiny_multimodal_run,
                                                                                      tmp_path):
    shards = tiny_run / "shards" / "image"
    path = shard_list_recipe(tmp_path, [{"shards": str(shards / "train")}], None)
    with pytest.raises(ConfigError, match="tokenizers_from: a `data` list of shard sets"):
        load_recipe(path)
    path = shard_list_recipe(tmp_path, [{"shards": str(shards / "train"), "wieght": 1}], tiny_run / "model")
    with pytest.raises(ConfigError, match=r"data\[0\]\.wieght: unknown field"):
        load_recipe(path)
    path = shard_list_recipe(tmp_path, [{"shards": str(shards / "train")}], tiny_run / "model")
    recipe = yaml.safe_load(path.read_text())
    recipe["lm"]["tasks"] = {"text_to_image": 1.0}  # even the default: it would be ignored, each set has its task
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(ConfigError, match="lm.tasks: a `data` list gives each shard set its own task"):
        load_recipe(path)
    path = shard_list_recipe(tmp_path, [{"shards": str(shards / "train")}], tiny_multimodal_run / "model")
    with pytest.raises(Exception, match="made with another vocabulary"):
        RecipeRun(load_recipe(path), log=lambda _: None).run()
    path = shard_list_recipe(tmp_path, [{"shards": str(shards / "train")}], tiny_run / "model")
    recipe = yaml.safe_load(path.read_text())
    recipe["layout"] = {"decode": {"image": {"groups": [3, 1]}}}  # the saved tokenizer has T = 4
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(ConfigError, match=rf"{path}: layout: decode\.image\.groups: expected one entry per generated "
                                          r"block \(4 for T = 4"):
        RecipeRun(load_recipe(path), log=lambda _: None).run()


def test_heldout_caption_rows_come_from_every_modality(tiny_multimodal_run):
    run = RecipeRun(load_recipe(tiny_multimodal_run.parent / "recipe.yaml"), log=lambda _: None)
    tokenizers = run.tokenizers()
    entries = resolve_mixture(run.mixture(), tokenizers.vocabulary, tokenizers.media)
    rows = heldout_rows(entries, tokenizers.vocabulary, count=12 * len({e.task for e in entries if e.mix.heldout}))
    assert Counter(row["media"] for row in rows["text"]) == {"image": 4, "audio": 4, "video": 4}
    assert len(rows["text_to_image"]) == 12


def test_tensorboard_gets_the_recipe_and_every_steps_loss_lr_grad_norm_and_tokens_per_s(tiny_run, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tokenizers = PipelineTokenizers.from_pretrained(tiny_run / "model")
    torch.manual_seed(0)
    model = StreamModel(build_transformer(ModelSpec(hidden_size=32, num_layers=1, num_heads=2,
                                                    intermediate_size=64), tokenizers.vocabulary))
    cfg = LMTraining(steps=3, batch_size=4, warmup_steps=1, checkpoint_every=3, eval_every=3, eval_items=8,
                     log_with=["tensorboard"])
    shards = tiny_run / "shards" / "image"
    mixture = [ShardMix(str(shards / "train"), 1.0, "text_to_image", str(shards / "heldout"))]
    layout = StreamLayout().with_default_schedules({"image": 4})
    train_lm(model, tokenizers.vocabulary, tokenizers.media, layout, mixture, cfg, tmp_path,
             tracker_config={"name": "tiny", "lm": {"steps": 3, "tasks": {"text_to_image": 1.0}}})
    events = EventAccumulator(str(tmp_path / "trackers" / "lm")).Reload()
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "heldout_loss"} <= set(events.Tags()["scalars"])
    assert [event.step for event in events.Scalars("loss")] == [1, 2, 3]
    assert all(event.value > 0 for event in events.Scalars("tokens_per_s"))
    (hparams,) = (tmp_path / "trackers" / "lm").rglob("hparams.yml")
    assert yaml.safe_load(hparams.read_text()) == {"name": "tiny", "lm.steps": 3, "lm.tasks.text_to_image": 1.0}


@pytest.mark.slow
def test_two_processes_on_halves_of_a_batch_learn_the_codebook_of_one_process_on_all_of_it(tmp_path):
    script = Path(__file__).parent / "scripts" / "ddp_codebook.py"
    config = SHIPPED / "accelerate" / "cpu-2proc.yaml"
    accelerate = Path(sys.executable).parent / "accelerate"
    env = {**os.environ, "ACCELERATE_USE_CPU": "1"}
    for launcher in ([sys.executable], [str(accelerate), "launch", "--config_file", str(config)]):
        result = subprocess.run([*launcher, str(script), str(tmp_path)], capture_output=True, text=True, timeout=300,
                                env=env)
        assert result.returncode == 0, result.stderr[-3000:]
    names = ("world-1-rank-0.pt", "world-2-rank-0.pt", "world-2-rank-1.pt")
    one, *two = (torch.load(tmp_path / name) for name in names)
    for name in ("codebook", "ema_count", "ema_sum", "step_scale"):  # EMA counts, sums and σ_t of the whole batch
        torch.testing.assert_close(two[0]["exact"][name], one["exact"][name], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(two[0]["restarts"]["codebook"], two[1]["restarts"]["codebook"], rtol=0, atol=0)


@pytest.mark.slow
def test_a_recipe_runs_every_stage_from_an_empty_folder_under_accelerate_launch(tmp_path):
    """203dc14 died in the shards stage on both ranks ("Default process group has not been
    initialized"): the tokenizer stage's accelerator had torn the process group down."""
    recipe = write_tiny_recipe(tmp_path, lm={"steps": 4, "checkpoint_every": 2, "eval_every": 2, "eval_items": 8})
    accelerate = Path(sys.executable).parent / "accelerate"
    result = subprocess.run([str(accelerate), "launch", "--config_file", str(SHIPPED / "accelerate" / "cpu-2proc.yaml"),
                             "-m", "unitok", "train", str(recipe)], capture_output=True, text=True, timeout=900,
                            env=ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "run"
    assert json.loads((run / "metrics.json").read_text())["lm"]["steps_trained"] == 4
    shards = read_manifest(run / "shards" / "image" / "train")["shards"]
    assert sorted({record["rank"] for record in shards.values()}) == [0, 1], "both ranks tokenized"
    assert all((run / "lm" / "log" / f"rank-{rank}.jsonl").is_file() for rank in (0, 1)), "both ranks trained"
    assert result.stdout.count("[run]  ") == len(list(run.rglob("stage.json"))), "one process reports each stage"
