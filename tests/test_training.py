"""LM training: checkpoint + resume equals an uninterrupted run; two-process accelerate keeps replicas in sync."""

import json
import os
import subprocess
import sys
from pathlib import Path

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
