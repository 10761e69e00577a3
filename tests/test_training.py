"""LM training on shard mixtures: a run killed after a checkpoint resumes with the same items and
losses; two-process accelerate keeps replicas in sync and gives ranks disjoint rows; data positions
are refused for another world size or other shard files; documents."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from safetensors.torch import load_file

from unitok.config import ConfigError
from unitok.model import ModelSpec, StreamModel, build_transformer
from unitok.pipeline import PipelineTokenizers
from unitok.rdpm import QuantizerConfig, RDPMQuantizer
from unitok.recipe import RecipeRun, load_recipe
from unitok.shards import ShardError, read_manifest
from unitok.streams import cell_order
from unitok.training.data import (DocumentRecipe, MixtureBatches, ShardMix, heldout_rows, media_inputs,
                                 resolve_mixture)
from unitok.training.lm import LMTraining, _save_transformer, train_lm

from .conftest import write_tiny_recipe

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
    config = Path(__file__).parent.parent / "recipes" / "accelerate" / "cpu-2proc.yaml"
    train(tmp_path, 4, tiny_run, launcher=[str(accelerate), "launch", "--config_file", str(config)])
    ranks = [json.loads((tmp_path / f"rank-{i}.json").read_text()) for i in range(2)]
    assert all(r["world"] == 2 for r in ranks)
    assert ranks[0]["final"] == ranks[1]["final"] != ranks[0]["initial"]
    train(tmp_path / "one", 4, tiny_run)  # warmup and decay follow optimizer steps, not steps x processes
    learning_rates = [[line["lr"] for line in step_log(out)] for out in (tmp_path, tmp_path / "one")]
    assert learning_rates[0] == learning_rates[1] and len(set(learning_rates[0])) == 4
    assert all(line["grad_norm"] > 0 for line in step_log(tmp_path))
    for task in ("text_to_image", "image_to_text"):  # each task's stream splits the rows between the ranks
        seen = [{item for line in step_log(tmp_path, rank) for item, t in zip(line["items"], line["tasks"]) if t == task}
                for rank in range(2)]
        assert seen[0] and seen[1] and not seen[0] & seen[1]
    one_process = subprocess.run(train_command(tmp_path, 6, tiny_run), capture_output=True, text=True, timeout=600,
                                 env=ENV)  # its rows would differ from the two ranks': refused, not guessed
    assert one_process.returncode != 0 and "written by 2 processes, this run has 1" in one_process.stderr


def test_data_positions_are_refused_for_other_shard_files_and_sets_too_small_to_split(tiny_run):
    tokenizers = PipelineTokenizers.from_pretrained(tiny_run / "model")
    vocab, train_set = tokenizers.vocabulary, tiny_run / "shards" / "image" / "train"
    entries = resolve_mixture([ShardMix(str(train_set))], vocab, tokenizers.media)
    documents = DocumentRecipe(vocab, "timestep", 0.0, 0.0)
    data = MixtureBatches(entries, vocab, tokenizers.media, documents, batch_size=2, seed=0, buffer=4)
    data.batch(0, 0)
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


def test_heldout_caption_rows_come_from_every_modality(tiny_multimodal_run):
    run = RecipeRun(load_recipe(tiny_multimodal_run.parent / "recipe.yaml"), log=lambda _: None)
    tokenizers = run.tokenizers()
    entries = resolve_mixture(run.mixture(), tokenizers.vocabulary, tokenizers.media)
    rows = heldout_rows(entries, tokenizers.vocabulary, count=12 * len({e.task for e in entries if e.mix.heldout}))
    assert Counter(row["media"] for row in rows["text"]) == {"image": 4, "audio": 4, "video": 4}
    assert len(rows["text_to_image"]) == 12


def three_block_tokenizer():
    """What a DocumentRecipe needs of a tokenizer, for the `vocab` fixture's image range: spans of
    k_T and two generated blocks (T = 2) of 4 cells, C = 4."""
    torch.manual_seed(0)
    quantizer = RDPMQuantizer(QuantizerConfig(steps=2, codebook_size=64), latent_channels=4)
    return SimpleNamespace(name="image", num_blocks=3, quantizer=quantizer, device=torch.device("cpu"))


def image_row(vocab, key="heldout-000001"):
    """A shard row of one item: 3 blocks of 4 distinct codes and a two-piece caption."""
    media = vocab.to_global("image", torch.arange(3 * 4).reshape(3, 4))
    return {"key": key, "draw": 0, "media": "image", "media_ids": media.reshape(-1).tolist(),
            "text_ids": vocab.to_global("text", torch.tensor([1, 2])).tolist()}


def test_text_to_media_training_documents_hold_the_generated_blocks_in_their_groups(vocab):
    """A text-to-image training document is caption + <boi> + the generated blocks k_{T-1} … k_0,
    each as its contexts and one query per cell over the groups of `rounds`; the targets are the
    queries' cells' codes, whose state inputs do not hold them, and a context's inputs hold its code."""
    tokenizer, row = three_block_tokenizer(), image_row(vocab)
    media = torch.tensor(row["media_ids"]).reshape(3, 4)
    documents = DocumentRecipe(vocab, "timestep", 0.0, 0.0, rounds={"image": [3, 1]}, round_schedule="linear")
    assert documents.bounds("image", 3, 4) == [[0, 2, 3, 4], [0, 4]]
    span = media_inputs([row], vocab, {"image": tokenizer})[0]
    doc = documents.document("text_to_image", row["text_ids"], "image", span, random.Random(0))
    order = cell_order(4)
    local = vocab.to_local("image", media)[None]
    decided, undecided = (inputs[0] for inputs in tokenizer.quantizer.block_inputs(local))
    assert len(doc) == 1 + 2 + 1 + (3 + 4) + (0 + 4), "contexts of all groups but the last, then 4 queries"
    first, second = slice(4, 11), slice(11, 15)
    assert doc.input_ids[first][:3] == media[1, order[:3]].tolist() and doc.targets[first][:3] == [-100] * 3
    assert doc.targets[first][3:] == media[1, order].tolist() and doc.targets[second] == media[2, order].tolist()
    assert torch.tensor(doc.media_states[first][:3]).allclose(decided[1, order[:3]])
    assert torch.tensor(doc.media_states[first][3:]).allclose(undecided[1, order])
    assert torch.tensor(doc.media_states[second]).allclose(undecided[2, order])
    heldout = documents.document("text_to_image", row["text_ids"], "image", span, random.Random(1), heldout=True)
    assert heldout.input_ids == doc.input_ids
    raster_row = {**row, "media_ids": row["media_ids"][:4]}
    raster_tokenizer = SimpleNamespace(name="image", num_blocks=1, quantizer=RDPMQuantizer(
        QuantizerConfig(steps=0, codebook_size=64), latent_channels=4), device=torch.device("cpu"))
    raster = DocumentRecipe(vocab, "raster", 0.0, 0.0).document(
        "text_to_image", row["text_ids"], "image", media_inputs([raster_row], vocab, {"image": raster_tokenizer})[0],
        random.Random(0))
    assert raster.input_ids[-1] == vocab.special_id("<eos>") and vocab.mask_id("image") not in raster.input_ids


def test_first_step_documents_hold_only_the_first_generated_block(vocab):
    """With first_step_fraction = 1 a training document is caption + <boi> + k_{T-1}; held-out
    documents keep every generated block so per-block losses stay comparable."""
    row = image_row(vocab)
    documents = DocumentRecipe(vocab, "timestep", 0.0, 1.0)
    span = media_inputs([row], vocab, {"image": three_block_tokenizer()})[0]
    doc = documents.document("text_to_image", row["text_ids"], "image", span, random.Random(0))
    assert len(doc) == 1 + 2 + 1 + 4  # <bos>, caption, <boi>, k_{T-1}: one group, 4 queries
    assert doc.targets[-4:] == [row["media_ids"][4:8][c] for c in cell_order(4).tolist()]
    assert set(doc.target_block) <= {-1, 0}
    heldout = documents.document("text_to_image", row["text_ids"], "image", span, random.Random(0), heldout=True)
    assert len(heldout) == len(doc) + 4


def test_tensorboard_gets_the_recipe_and_every_steps_loss_lr_grad_norm_and_tokens_per_s(tiny_run, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tokenizers = PipelineTokenizers.from_pretrained(tiny_run / "model")
    torch.manual_seed(0)
    model = build_transformer(ModelSpec(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64),
                              tokenizers.vocabulary)
    cfg = LMTraining(steps=3, batch_size=4, warmup_steps=1, checkpoint_every=3, eval_every=3, eval_items=8,
                     log_with=["tensorboard"])
    shards = tiny_run / "shards" / "image"
    mixture = [ShardMix(str(shards / "train"), 1.0, "text_to_image", str(shards / "heldout"))]
    train_lm(model, tokenizers.vocabulary, tokenizers.media, mixture, cfg, tmp_path,
             tracker_config={"name": "tiny", "lm": {"steps": 3, "tasks": {"text_to_image": 1.0}}})
    events = EventAccumulator(str(tmp_path / "trackers" / "lm")).Reload()
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "heldout_loss"} <= set(events.Tags()["scalars"])
    assert [event.step for event in events.Scalars("loss")] == [1, 2, 3]
    assert all(event.value > 0 for event in events.Scalars("tokens_per_s"))
    (hparams,) = (tmp_path / "trackers" / "lm").rglob("hparams.yml")
    assert yaml.safe_load(hparams.read_text()) == {"name": "tiny", "lm.steps": 3, "lm.tasks.text_to_image": 1.0}


class GatheringAccelerator:
    """Stands in for an FSDP accelerator: `get_state_dict` is the collective that gathers the
    shards (every rank must call it) and returns the whole weights, which the local module lacks."""

    def __init__(self, is_main_process: bool, whole: dict[str, torch.Tensor]):
        self.is_main_process, self.whole, self.gathered = is_main_process, whole, 0

    def get_state_dict(self, model):
        self.gathered += 1
        return self.whole

    def unwrap_model(self, model):
        return model


def test_kept_weights_are_gathered_on_every_rank_and_saved_whole_by_the_first(vocab, tmp_path):
    """accelerate runs FSDP only on accelerators (`use_cpu` makes it plain multi-CPU DDP), so this
    checks the contract FSDP needs on the CPU: every rank takes part in the gathering, and the
    first saves what it gathered, not its own shard."""
    torch.manual_seed(0)
    model = StreamModel(build_transformer(ModelSpec(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64),
                                          vocab))
    whole = {name: torch.full_like(tensor, 0.5) for name, tensor in model.state_dict().items()}
    for rank in (1, 0):
        accelerator = GatheringAccelerator(is_main_process=rank == 0, whole=whole)
        _save_transformer(accelerator, model, tmp_path / f"rank-{rank}")
        assert accelerator.gathered == 1
    assert not (tmp_path / "rank-1").exists()
    saved = load_file(tmp_path / "rank-0" / "model.safetensors")
    assert saved and all(torch.equal(tensor, torch.full_like(tensor, 0.5)) for tensor in saved.values())
