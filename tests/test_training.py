"""LM training: checkpoint + resume equals an uninterrupted run; two-process accelerate keeps replicas in sync."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from unitok.streams import task_document
from unitok.training.lm import DocumentMaker, LMTraining, TokenItems

from .conftest import span_states

SCRIPT = Path(__file__).parent / "scripts" / "ddp_train.py"


def train(out: Path, steps: int, launcher: list[str] | None = None, stop_after: int | None = None) -> None:
    command = (launcher or [sys.executable]) + [str(SCRIPT), str(out), str(steps)]
    command += [str(stop_after)] if stop_after else []
    env = {**os.environ, "ACCELERATE_USE_CPU": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]


def test_resume_after_interruption_matches_uninterrupted_run(tmp_path):
    train(tmp_path / "full", 6)
    train(tmp_path / "cut", 6, stop_after=3)  # interrupted right after its step-3 checkpoint
    assert (tmp_path / "cut" / "checkpoints" / "step-0000003" / "model.safetensors").is_file()
    assert json.loads((tmp_path / "cut" / "rank-0.json").read_text())["step"] == 3
    train(tmp_path / "cut", 6)  # the same command resumes at step 3
    full = json.loads((tmp_path / "full" / "rank-0.json").read_text())
    resumed = json.loads((tmp_path / "cut" / "rank-0.json").read_text())
    assert full["final"] != full["initial"]
    assert resumed["final"] == full["final"]


def test_two_processes_under_accelerate_launch_stay_in_sync(tmp_path):
    accelerate = Path(sys.executable).parent / "accelerate"
    config = Path(__file__).parent.parent / "recipes" / "accelerate" / "cpu-2proc.yaml"
    launcher = [str(accelerate), "launch", "--config_file", str(config)]
    train(tmp_path, 4, launcher)
    ranks = [json.loads((tmp_path / f"rank-{i}.json").read_text()) for i in range(2)]
    assert all(r["world"] == 2 for r in ranks)
    assert ranks[0]["final"] == ranks[1]["final"] != ranks[0]["initial"]


def test_text_to_media_training_documents_stop_after_the_last_block_with_targets(vocab):
    """k_0, <eoi> and <eos> are dropped from text-to-image training documents: the codes of k_1
    still predict k_0, every other target is as in the full stream, and nothing is lost."""
    local = torch.arange(3 * 4).reshape(1, 3, 4)  # one item: 3 blocks of 4 distinct codes
    media = vocab.to_global("image", local)
    items = TokenItems([vocab.to_global("text", torch.tensor([1, 2])).tolist()], media, span_states(vocab, media[0])[None],
                       "image")
    full = task_document(vocab, "timestep", "text_to_image", items.text_ids[0], "image", items.media_ids[0],
                         items.media_states[0])
    for order, expected_length in (("timestep", len(full) - 4 - 2), ("raster", None)):
        cfg = LMTraining(tasks={"text_to_image": 1.0}, media_order=order, caption_dropout=0.0)
        doc = DocumentMaker({"image": items}, vocab, cfg, seed=0).document("text_to_image", "image", 0, None)
        if order == "raster":  # one block, which is also the last: nothing to drop
            assert doc.input_ids[-1] == vocab.special_id("<eos>")
            continue
        assert len(doc) == expected_length
        assert doc.targets == full.targets[:expected_length]
        k1 = slice(len(doc) - 4, len(doc))
        assert doc.input_ids[k1] == items.media_ids[0, 1].tolist()
        assert doc.targets[k1] == items.media_ids[0, 2].tolist()


def test_first_step_documents_end_after_the_noise_block(vocab):
    """With first_step_fraction = 1 a training document is caption + <boi> + k_T, whose targets
    are k_{T-1}; held-out documents (no rng) stay whole so per-block losses stay comparable."""
    import random

    local = torch.arange(3 * 4).reshape(1, 3, 4)
    media = vocab.to_global("image", local)
    items = TokenItems([vocab.to_global("text", torch.tensor([1, 2])).tolist()], media, span_states(vocab, media[0])[None],
                       "image")
    cfg = LMTraining(tasks={"text_to_image": 1.0}, caption_dropout=0.0, first_step_fraction=1.0)
    maker = DocumentMaker({"image": items}, vocab, cfg, seed=0)
    doc = maker.document("text_to_image", "image", 0, random.Random(0))
    assert len(doc) == 1 + 2 + 1 + 4  # <bos>, caption, <boi>, k_T
    assert doc.input_ids[-4:] == items.media_ids[0, 0].tolist()
    assert doc.targets[-4:] == items.media_ids[0, 1].tolist()
    heldout = maker.heldout_documents(1)["text_to_image"][0]
    assert len(heldout) == len(doc) + 4  # whole, less k_0 and the closing tokens
