"""`unitok sweep`: tokenizer variants trained the same way, measured, resumable, bad fields named."""

import pytest
import yaml

from tests.helpers import write_tiny_recipe
from unitok.core.config import ConfigError
from unitok.experiments.tokenizer_sweep import run_tokenizer_sweep


def write_sweep(folder, variants):
    path = folder / "sweep.yaml"
    sweep = {"kind": "tokenizer", "recipe": str(write_tiny_recipe(folder)), "output_dir": str(folder / "sweep"),
             "variants": variants}
    path.write_text(yaml.safe_dump(sweep))
    return path


def test_sweep_measures_every_variant_and_resumes(tmp_path):
    path = write_sweep(tmp_path, {"plain_vq": {"quantizer": {"noise_steps": 0}},
                                  "rdpm_T2": {"quantizer": {"noise_steps": 2}}})
    results = run_tokenizer_sweep(path, log=lambda _: None)
    positions = 16  # the tiny spec: 32x32 pixels, downsampling 8
    assert results["plain_vq"]["tokens_per_item"] == positions
    assert results["rdpm_T2"]["tokens_per_item"] == 3 * positions
    for row in results.values():
        assert 0 < row["psnr_db"] < 60 and 0 < row["codebook_usage"] <= 1 and 0 <= row["recon_digit_accuracy"] <= 1
    table = (tmp_path / "sweep" / "results.md").read_text().splitlines()
    assert table[0].startswith("| variant |")
    assert [line.split("|")[1].strip() for line in table[2:]] == ["plain_vq", "rdpm_T2"]

    logged = []
    again = run_tokenizer_sweep(path, log=logged.append)
    skipped = [line for line in logged if line.startswith("[skip]") and str(tmp_path / "sweep") in line]
    assert again == results and len(skipped) == 2


def test_wrong_variant_field_names_the_variant_and_field(tmp_path):
    path = write_sweep(tmp_path, {"typo": {"quantizer": {"stepz": 3}}})
    with pytest.raises(ConfigError, match=r"variants\.typo: quantizer\.stepz: unknown field"):
        run_tokenizer_sweep(path, log=lambda _: None)
    assert not (tmp_path / "sweep").exists()  # nothing trained before the error
