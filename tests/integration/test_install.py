"""unitok from a built wheel, away from the source tree: the shipped recipes and specs are package
data, so `unitok train` of a shipped recipe (shrunk to a few steps) and loading its output work
from another working directory."""

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def run(*command, cwd):
    result = subprocess.run([str(c) for c in command], cwd=cwd, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{command}: {result.stderr[-3000:]}"
    return result.stdout


def test_a_wheel_installed_elsewhere_trains_a_shipped_recipe_and_loads_its_pipeline(tmp_path):
    # the wheel, built offline with this environment's setuptools from a copy of the sources (a build
    # writes build/ and *.egg-info beside them)
    source = tmp_path / "source"
    shutil.copytree(REPO / "unitok", source / "unitok", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", tmp_path / "dist", source,
        cwd=tmp_path)
    (wheel,) = (tmp_path / "dist").glob("unitok_rdpm-*.whl")
    # a fresh venv that sees this environment's dependencies (torch, transformers, …) but not its
    # editable unitok: a path added by a .pth file does not run the .pth files inside it
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    site = run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=tmp_path).strip()
    (Path(site) / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run(python, "-m", "pip", "install", "--no-deps", "--no-index", wheel, cwd=tmp_path)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = run(python, "-c", "import unitok; print(unitok.__file__)", cwd=elsewhere)
    assert where.startswith(site), "unitok is imported from the wheel, not from the source tree"
    assert "usage: unitok bench" in run(venv / "bin" / "unitok", "bench", "--help", cwd=elsewhere)

    shipped = run(python, "-c", "from unitok.configs import SHIPPED; print(SHIPPED)", cwd=elsewhere).strip()
    recipe = yaml.safe_load((Path(shipped) / "recipes" / "quickstart.yaml").read_text())  # the wheel's copy
    recipe["output_dir"] = "run"
    recipe["data"]["image"]["digits_world"] |= {"train_scenes": 96, "heldout_scenes": 8}
    recipe["tokenizers"]["image"]["training"] |= {"steps": 5, "batch_size": 16, "warmup_steps": 1}
    recipe["shards"]["items_per_shard"] = 64
    recipe["lm"] |= {"steps": 2, "batch_size": 4, "warmup_steps": 1, "checkpoint_every": 2, "eval_every": 2,
                     "eval_items": 4}
    recipe["eval"] |= {"num_samples": 4, "batch_size": 4, "grid_samples": 4, "trajectory_samples": 1,
                       "classifier_steps": 5}
    (elsewhere / "small.yaml").write_text(yaml.safe_dump(recipe))  # names its specs as the shipped one does
    run(venv / "bin" / "unitok", "train", "small.yaml", cwd=elsewhere)

    passes = run(python, "-c", "from unitok import UniTokPipeline; "
                 "pipe = UniTokPipeline.from_pretrained('run/model'); "
                 "print(pipe.passes('image'), pipe.text_to_image('a red 7', seed=0).images[0].size)", cwd=elsewhere)
    assert passes.split() == ["12", "(32,", "32)"], passes
