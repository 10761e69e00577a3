"""The README's tour runs as written: its shell commands (generate, tokenize, shards) and Python
snippets (the pipeline, `datasets`, the tokenizer), against the tiny runs standing in for the
demo's models (``runs/quickstart`` and ``runs/digits-multimodal`` link to them). What needs a
network, a GPU or an hour (train, bench, sweep, accelerate, the Hub) is left out by name."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

README = Path(__file__).parents[2] / "README.md"
NOT_RUN = ("unitok train", "unitok bench", "unitok sweep", "accelerate launch", "ACCELERATE_USE_CPU", "make ",
           "push_to_hub", "you/unitok-digits")


def readme_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)


def shell_commands() -> list[str]:
    lines = "\n".join(readme_blocks("bash")).replace("\\\n", " ").splitlines()
    return [line for line in lines if line.startswith("unitok ") and not any(skip in line for skip in NOT_RUN)]


def python_snippets() -> list[str]:
    blocks = readme_blocks("python")
    kept = ["\n".join(line for line in block.splitlines() if not any(skip in line for skip in NOT_RUN))
            for block in blocks]
    left_out = sum(len(block.splitlines()) for block in blocks) - sum(len(block.splitlines()) for block in kept)
    assert left_out == 2, "only the Hub lines (push_to_hub, a repo id) are left out; say here what else is"
    return kept


def heldout(run: Path, modality: str, n: int) -> list[dict]:
    lines = (run / "data" / modality / "heldout" / "captions.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines[:n]]


def copy_items(run: Path, modality: str, folder: Path, n: int) -> list[dict]:
    folder.mkdir()
    rows = heldout(run, modality, n)
    for row in rows:
        shutil.copy(run / "data" / modality / "heldout" / row["file"], folder / Path(row["file"]).name)
    return [{"file": Path(r["file"]).name, "caption": r["caption"]} for r in rows]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def test_the_readme_tour_runs_as_written(tiny_run, tiny_multimodal_run, tmp_path, monkeypatch):
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "quickstart").symlink_to(tiny_run)
    (tmp_path / "runs" / "digits-multimodal").symlink_to(tiny_multimodal_run)
    photos = copy_items(tiny_run, "image", tmp_path / "photos", 6)
    write_jsonl(tmp_path / "captions.jsonl", photos)
    write_jsonl(tmp_path / "photos" / "metadata.jsonl",
                [{"file_name": r["file"], "text": r["caption"]} for r in photos])
    write_jsonl(tmp_path / "calls" / "captions.jsonl", copy_items(tiny_multimodal_run, "audio", tmp_path / "calls", 4))
    (tmp_path / "corpus.txt").write_text("a red 7 on the left\nthe digit 3 in blue\n")
    monkeypatch.chdir(tmp_path)

    snippets, commands = python_snippets(), shell_commands()
    assert len(snippets) >= 4 and {c.split()[1] for c in commands} == {"generate", "tokenize", "shards"}
    namespace: dict = {}
    exec(compile(snippets[0] + "\n" + snippets[1], "README.md (generate)", "exec"), namespace)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for command in commands:
        result = subprocess.run(command, shell=True, capture_output=True, text=True, env=env)
        assert result.returncode == 0, f"{command}\n{result.stderr[-2000:]}"
    for snippet in snippets[2:]:
        exec(compile(snippet, "README.md", "exec"), namespace)

    assert len(namespace["shards"]) == 6, "datasets.load_dataset reads the README's shard set"
    assert namespace["ids"].shape[0] == 1 and namespace["image"].size == (32, 32)
    for name in ("photos", "photos-hf", "calls", "text"):
        assert json.loads((tmp_path / "shards" / name / "manifest.json").read_text())["complete"], name
    assert all((tmp_path / name).is_file() for name in ("seven.png", "dial47.wav", "three.mp4"))
