"""`unitok bench` smoke test: it measures both sides and writes the documented keys (speed itself is
only ever reported by the benchmark, never asserted here)."""

import json

import pytest

from unitok.cli import main


def test_bench_quick_writes_ratios(tmp_path):
    out = tmp_path / "bench.json"
    assert main(["bench", "--quick", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["sampling"]) >= {"n8_b1_speedup", "n16_b1_speedup", "n16_b2_speedup", "rows"}
    assert len(result["sampling"]["rows"]) == 8  # 2 sizes x 2 batches x guidance on/off
    for row in result["sampling"]["rows"]:
        assert row["rdpm_s_per_image"] > 0 and row["raster_s_per_image"] > 0
        assert row["speedup"] == pytest.approx(row["raster_s_per_image"] / row["rdpm_s_per_image"])
    training = result["training"]
    assert training["unitok_tokens_per_s"] > 0 and training["plain_causal_lm_tokens_per_s"] > 0
    assert set(result["tokenize"]) == {"image", "audio", "video"}
    for tokenize in result["tokenize"].values():
        assert tokenize["items"] == 16 and tokenize["raw_decode_encode_items_per_s"] > 0
        assert tokenize["tokenize_vs_raw_ratio"] == pytest.approx(
            tokenize["tokenize_items_per_s"] / tokenize["raw_decode_encode_items_per_s"])
        assert tokenize["workers_2_vs_1_speedup"] == pytest.approx(
            tokenize["tokenize_2_workers_items_per_s"] / tokenize["tokenize_items_per_s"])
        assert tokenize["workers_2_vs_1_thread_speedup"] == pytest.approx(
            tokenize["tokenize_2_workers_items_per_s"] / tokenize["tokenize_1_thread_items_per_s"])
    assert result["machine"]["device"]
