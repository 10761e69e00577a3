"""Every sweep kept in experiments/ still plans on this code (its recipes and variants load), and
the experiment log reports it, so the commands in experiments/LOG.md stay runnable."""

from pathlib import Path

import pytest
import yaml

from unitok.experiments.generation_sweep import plan_generation_sweep
from unitok.experiments.tokenizer_sweep import plan_tokenizer_sweep

REPO = Path(__file__).resolve().parents[2]
SWEEPS = sorted((REPO / "experiments" / "sweeps").glob("*.yaml"))


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_a_sweep_plans_every_point_and_the_log_reports_it(path, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # sweeps name experiment specs relative to the repository
    sweep = yaml.safe_load(path.read_text())
    assert sweep["output_dir"] == f"runs/sweeps/{path.stem}", "each sweep writes into a folder of its own"
    if sweep["kind"] == "generation":
        _, _, plan = plan_generation_sweep(path, log=lambda _: None, output_dir=tmp_path)
        assert [name for name, _, _ in plan] == list(sweep["runs"])
    else:
        _, _, variants = plan_tokenizer_sweep(path, log=lambda _: None)
        assert list(variants) == list(sweep["variants"])
    assert f"unitok sweep experiments/sweeps/{path.name}" in (REPO / "experiments" / "LOG.md").read_text()
