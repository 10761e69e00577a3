"""Token shards at scale: bad inputs of every modality, kills at random points, workers, ranks,
sources (sidecar captions, datasets path and bytes columns, text corpora), inspect and verify,
refusals of changed sources and settings."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from unitok.cli import main
from unitok.configs import SHIPPED
from unitok.data.shards import RECORDS_DIR, read_manifest, verify_shards

SCRIPTS = Path(__file__).parent / "scripts"


def tokenize_command(model, source, out, *extra):
    return [sys.executable, "-m", "unitok", "tokenize", "--tokenizer", str(model), "--input", str(source),
            "--out", str(out), *map(str, extra)]


def copy_split(run, modality, split, folder, n):
    """The first `n` items of a digits-world split, copied into `folder`; returns their manifest rows."""
    source = run / "data" / modality / split
    rows = [json.loads(line) for line in (source / "captions.jsonl").read_text().splitlines()][:n]
    for row in rows:
        (folder / row["file"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source / row["file"], folder / row["file"])
    return [{"file": r["file"], "caption": r["caption"]} for r in rows]


def caption_folder(run, modality, folder, n):
    """A folder with the first `n` training items of a digits-world modality and its captions.jsonl."""
    folder.mkdir()
    rows = copy_split(run, modality, "train", folder, n)
    (folder / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def rows_by_item(out):
    """{(key, draw): (text_ids, media_ids)} of every shard in a set, and the row count."""
    table = pq.read_table(sorted(out.glob("shard-*.parquet"))).to_pylist()
    return {(r["key"], r["draw"]): (r["text_ids"], r["media_ids"]) for r in table}, len(table)


@pytest.fixture(scope="module")
def bad_folders(tiny_multimodal_run, tmp_path_factory):
    """One folder per modality: good digits-world items plus about 10 % bad files of 6 kinds."""
    root = tmp_path_factory.mktemp("bad-inputs")
    folders, bad = {}, {}
    for modality, split, n in (("image", "heldout", 24), ("audio", "train", 16), ("video", "train", 16)):
        folder = root / modality
        folder.mkdir()
        rows = copy_split(tiny_multimodal_run, modality, split, folder, n)
        folders[modality] = (folder, rows)
    image_rows, audio_rows, video_rows = (folders[m][1] for m in ("image", "audio", "video"))
    image_dir, audio_dir, video_dir = (folders[m][0] for m in ("image", "audio", "video"))
    good_png = (image_dir / image_rows[0]["file"]).read_bytes()
    (image_dir / "truncated.png").write_bytes(good_png[:60])
    (image_dir / "empty.png").write_bytes(b"")
    Image.new("RGB", (3, 3)).save(image_dir / "tiny.png")
    (audio_dir / "notes.wav").write_text("these are notes, not audio")
    (audio_dir / "silence.flac").write_bytes(b"")
    (video_dir / "cut.mp4").write_bytes((video_dir / video_rows[0]["file"]).read_bytes()[:300])
    (image_dir / "number.png").write_bytes(good_png)
    bad = {"image": {"truncated.png": "not a readable image", "empty.png": "not a readable image",
                     "tiny.png": "smaller than", "number.png": "caption is not text (a int)"},
           "audio": {"notes.wav": "not readable audio", "silence.flac": "not readable audio"},
           "video": {"cut.mp4": "not readable video", video_rows[1]["file"]: "missing caption"}}
    video_rows[1]["caption"] = ""
    for modality, (folder, rows) in folders.items():
        lines = rows[:3] + [{"file": f, "caption": 7 if f == "number.png" else "a bad one"}
                            for f in bad[modality] if f != video_rows[1]["file"]] + rows[3:]
        (folder / "captions.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return {m: (folder, rows, bad[m]) for m, (folder, rows) in folders.items()}


def test_bad_inputs_of_every_modality_are_reported_and_every_good_item_lands(tiny_multimodal_run, bad_folders,
                                                                             tmp_path):
    total_items = sum(len(rows) + sum(f not in {r["file"] for r in rows} for f in bad)
                      for _, rows, bad in bad_folders.values())
    total_bad = sum(len(bad) for _, _, bad in bad_folders.values())
    assert total_bad >= 0.1 * total_items and len({r for _, _, b in bad_folders.values() for r in b.values()}) >= 5
    for modality, (folder, rows, bad) in bad_folders.items():
        out = tmp_path / modality
        result = subprocess.run(tokenize_command(tiny_multimodal_run / "model", folder, out, "--modality", modality,
                                                 "--items-per-shard", 5), capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        good = {r["file"] for r in rows if r["caption"]}
        assert f"wrote {len(good)} rows ({len(good)} items" in result.stdout
        assert f"skipped {len(bad)} bad inputs" in result.stdout
        items, count = rows_by_item(out)
        assert {key for key, _ in items} == good and count == len(good)
        errors = {e["key"]: e["reason"] for e in map(json.loads, (out / "errors.jsonl").read_text().splitlines())}
        assert errors.keys() == bad.keys()
        assert all(expected in errors[key] for key, expected in bad.items()), errors
        assert verify_shards(out) == []


def test_strict_exits_1_naming_the_first_bad_file_also_one_an_earlier_run_recorded(tiny_multimodal_run, bad_folders,
                                                                                     tmp_path, capsys):
    folder, _, _ = bad_folders["image"]
    model = tiny_multimodal_run / "model"
    result = subprocess.run(tokenize_command(model, folder, tmp_path / "s", "--modality", "image", "--strict"),
                            capture_output=True, text=True)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("unitok: error:")]
    assert errors == ["unitok: error: truncated.png: not a readable image (image file is truncated)"]
    lenient = [str(a) for a in tokenize_command(model, folder, tmp_path / "l", "--modality", "image")[3:]]
    assert main(lenient) == 0 and main(lenient) == 0  # a re-run over a finished set skips it
    capsys.readouterr()
    assert main(lenient + ["--strict"]) == 1
    assert "truncated.png: not a readable image (image file is truncated) (recorded by an earlier run)" in \
        capsys.readouterr().err


def test_killed_at_random_points_the_rerun_equals_an_uninterrupted_run(tiny_multimodal_run, tmp_path):
    folder = tmp_path / "images"
    caption_folder(tiny_multimodal_run, "image", folder, 96)
    model = tiny_multimodal_run / "model"
    args = ("--modality", "image", "--items-per-shard", 6, "--noise-draws", 2)
    assert main([str(a) for a in tokenize_command(model, folder, tmp_path / "whole", *args)[3:]]) == 0

    out = tmp_path / "killed"
    rng = random.Random(0)
    for kill_at, workers in ((rng.randint(1, 4), 1), (rng.randint(6, 9), 2), (rng.randint(11, 13), 1)):
        process = subprocess.Popen(tokenize_command(model, folder, out, *args, "--workers", workers),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        while len(list((out / RECORDS_DIR).glob("*.json"))) < kill_at and process.poll() is None:
            time.sleep(0.005)
        os.killpg(process.pid, signal.SIGKILL)  # the command and its workers, mid-shard
        process.wait()
        assert not (out / "manifest.json").is_file() or not json.loads((out / "manifest.json").read_text())["complete"]
    finish = subprocess.run(tokenize_command(model, folder, out, *args), capture_output=True, text=True)
    assert finish.returncode == 0, finish.stderr
    assert rows_by_item(out) == rows_by_item(tmp_path / "whole")
    assert len(list(out.glob("*.tmp"))) == 0 and verify_shards(out) == []
    totals = json.loads((out / "manifest.json").read_text())["totals"]
    assert (totals["items"], totals["rows"]) == (96, 192)


@pytest.mark.slow
def test_workers_and_accelerate_ranks_write_the_same_shards_as_one_process(tiny_multimodal_run, tmp_path):
    folder = tmp_path / "clips"
    caption_folder(tiny_multimodal_run, "video", folder, 20)
    model = tiny_multimodal_run / "model"
    args = ["--modality", "video", "--items-per-shard", "4"]
    assert main(tokenize_command(model, folder, tmp_path / "one", *args)[3:]) == 0
    assert main(tokenize_command(model, folder, tmp_path / "two", *args, "--workers", "2")[3:]) == 0
    launcher = [str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file",
                str(SHIPPED / "accelerate" / "cpu-2proc.yaml")]
    ranks = subprocess.run(launcher + tokenize_command(model, folder, tmp_path / "ranks", *args)[1:],
                           capture_output=True, text=True, env={**os.environ, "ACCELERATE_USE_CPU": "1"})
    assert ranks.returncode == 0, ranks.stderr[-3000:]
    refused = subprocess.run(launcher + tokenize_command(model, folder, tmp_path / "ranks", *args, "--seed", 1)[1:],
                             capture_output=True, text=True, env={**os.environ, "ACCELERATE_USE_CPU": "1"},
                             timeout=300)  # refused under accelerate launch too, with the reason
    assert refused.returncode != 0
    assert "holds shards made with other settings (seed 0 → 1)" in refused.stderr, refused.stderr[-3000:]
    reference = rows_by_item(tmp_path / "one")
    assert reference[1] == 20
    for name in ("two", "ranks"):
        assert rows_by_item(tmp_path / name) == reference
        manifest = json.loads((tmp_path / name / "manifest.json").read_text())
        assert manifest["complete"] and manifest["totals"]["items"] == 20 and len(manifest["shards"]) == 5
    ranks_manifest = json.loads((tmp_path / "ranks" / "manifest.json").read_text())
    assert [r["rank"] for _, r in sorted(ranks_manifest["shards"].items())] == [0, 1, 0, 1, 0]  # split, not repeated


@pytest.mark.slow
def test_ranks_that_see_different_sources_all_stop_before_writing(tiny_run, tmp_path):
    launcher = [str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file",
                str(SHIPPED / "accelerate" / "cpu-2proc.yaml")]
    result = subprocess.run(launcher + [str(SCRIPTS / "rank_sources.py"), str(tiny_run / "model"),
                                        str(tmp_path / "out")], capture_output=True, text=True,
                            env={**os.environ, "ACCELERATE_USE_CPU": "1"}, timeout=300)
    assert result.returncode != 0
    for rank in (0, 1):
        assert f"rank {rank}: the ranks see different sources or settings" in result.stderr, result.stderr[-3000:]
    assert not (tmp_path / "out").exists()


def test_sidecar_captions_dataset_path_columns_and_text_corpora(tiny_run, tmp_path):
    import datasets

    source = tiny_run / "data" / "image" / "heldout"
    rows = [json.loads(line) for line in (source / "captions.jsonl").read_text().splitlines()][:6]
    sidecar = tmp_path / "sidecar"
    sidecar.mkdir()
    for row in rows:
        shutil.copy(source / row["file"], sidecar / f"{row['key']}.png")
        (sidecar / f"{row['key']}.txt").write_text(row["caption"] + "\n")
    (sidecar / f"{rows[0]['key']}.txt").unlink()  # no caption: skipped and reported
    model = str(tiny_run / "model")
    assert main(["tokenize", "--tokenizer", model, "--input", str(sidecar), "--out", str(tmp_path / "a")]) == 0
    a = datasets.load_dataset("parquet", data_files=str(tmp_path / "a" / "shard-*.parquet"), split="train")
    assert sorted(a["caption"]) == sorted(r["caption"] for r in rows[1:])
    assert set(a["task"]) == {"text_to_image"}

    table = tmp_path / "table"
    table.mkdir()
    copy_split(tiny_run, "image", "heldout", table, 6)
    (table / "items.csv").write_text("path,caption\n" + "".join(f"{r['file']},{r['caption']}\n" for r in rows))
    assert main(["tokenize", "--tokenizer", model, "--dataset", "csv", "--data-dir", str(table), "--data-files",
                 "items.csv", "--media-column", "path", "--task", "image_to_text", "--out", str(tmp_path / "b")]) == 0
    b = datasets.load_dataset("parquet", data_files=str(tmp_path / "b" / "shard-*.parquet"), split="train")
    assert b["caption"] == [r["caption"] for r in rows] and set(b["task"]) == {"image_to_text"}

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("a red 7 on the left\n\nthe digit 3 in blue\n")
    assert main(["tokenize", "--tokenizer", model, "--input", str(corpus), "--out", str(tmp_path / "c")]) == 0
    c = datasets.load_dataset("parquet", data_files=str(tmp_path / "c" / "shard-*.parquet"), split="train")
    assert c["caption"] == ["a red 7 on the left", "the digit 3 in blue"]
    assert set(c["task"]) == {"text"} and c["media_ids"] == [[], []] and all(c["text_ids"])


def media_dataset(folder: Path, feature: str, cells: list[bytes]) -> Path:
    """A parquet dataset whose `media` column is a `datasets` Image/Audio feature of in-memory bytes
    (written with pyarrow: encoding audio through `datasets` would need torchcodec)."""
    media = pa.array([{"bytes": b, "path": None} for b in cells], pa.struct([("bytes", pa.binary()),
                                                                           ("path", pa.string())]))
    table = pa.table({"media": media, "caption": [f"item {i}" for i in range(len(cells))]})
    features = {"media": {"_type": feature}, "caption": {"dtype": "string", "_type": "Value"}}
    folder.mkdir()
    pq.write_table(table.replace_schema_metadata({"huggingface": json.dumps({"info": {"features": features}})}),
                   folder / "train.parquet")
    return folder


@pytest.mark.parametrize("modality, feature, suffix, truncate, reason", [
    ("image", "Image", "png", True, "not a readable image (image file is truncated)"),
    ("audio", "Audio", "wav", False,
     "not readable audio (ERROR opening: 1, Invalid data found when processing input)")])
def test_undecodable_bytes_cells_of_a_dataset_are_reported_by_row(modality, feature, suffix, truncate, reason,
                                                                   tiny_multimodal_run, tmp_path):
    good = next((tiny_multimodal_run / "data" / modality / "heldout").glob(f"**/*.{suffix}")).read_bytes()
    bad = good[:80] if truncate else b"these are notes, not audio"  # a cut WAV still holds a few samples
    data = media_dataset(tmp_path / "data", feature, [good, bad, good])
    command = ["tokenize", "--tokenizer", str(tiny_multimodal_run / "model"), "--modality", modality, "--dataset",
               "parquet", "--data-dir", str(data), "--media-column", "media"]
    for run in ("first", "second"):  # the same reasons every run: no object addresses, clock times, temp files
        out = tmp_path / run
        assert main(command + ["--out", str(out)]) == 0
        errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
        assert errors == [{"key": "1", "reason": reason}]
        assert rows_by_item(out)[0].keys() == {("0", 0), ("2", 0)}
    shard = tmp_path / "first" / "shard-00000.parquet"
    written = shard.stat().st_mtime_ns
    assert main(command + ["--out", str(tmp_path / "first")]) == 0  # the same dataset: accepted, nothing redone
    assert shard.stat().st_mtime_ns == written


def test_a_source_of_only_bad_items_finishes_with_no_rows_and_an_empty_source_is_refused(tiny_run, tmp_path, capsys):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"text": ""}\n{"text": 5}\n')
    out = tmp_path / "bad"
    assert main(["tokenize", "--tokenizer", str(tiny_run / "model"), "--input", str(corpus), "--out", str(out)]) == 0
    assert "wrote 0 rows (0 items × 1 noise draws) in 0 shards" in capsys.readouterr().out
    assert [json.loads(line)["reason"] for line in (out / "errors.jsonl").read_text().splitlines()] == [
        "missing caption", "caption is not text (a int)"]
    assert main(["shards", "verify", str(out)]) == 0
    (tmp_path / "empty.txt").write_text("\n")
    assert main(["tokenize", "--tokenizer", str(tiny_run / "model"), "--input", str(tmp_path / "empty.txt"),
                 "--out", str(tmp_path / "e")]) == 1
    assert capsys.readouterr().err.strip() == "unitok: error: the source has no items"


def test_inspect_summarises_and_verify_catches_a_changed_shard(tiny_run, tmp_path, capsys):
    folder = tiny_run / "data" / "image" / "heldout"
    out = tmp_path / "s"
    assert main(["tokenize", "--tokenizer", str(tiny_run / "model"), "--input", str(folder), "--out", str(out),
                 "--items-per-shard", "10"]) == 0
    capsys.readouterr()
    assert main(["shards", "inspect", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["totals"]["items"] == 24 and summary["totals"]["shards"] == 3
    assert summary["tasks"] == {"text_to_image": 24} and summary["media"] == {"image": 24}
    assert sum(b["rows"] for b in summary["token_length_histogram"]) == 24
    assert main(["shards", "verify", str(out)]) == 0

    shard = out / "shard-00001.parquet"
    table = pq.read_table(shard).to_pylist()
    table[0]["media_ids"][0] = 0  # a special-token id where a code belongs
    pq.write_table(pq.read_table(shard).from_pylist(table, schema=pq.read_schema(shard)), shard)
    capsys.readouterr()
    assert main(["shards", "verify", str(out)]) == 1
    err = capsys.readouterr().err
    assert "shard-00001.parquet: sha256 differs" in err and err.count("\n") == 1
    assert any("media_ids outside their vocabulary range" in p for p in verify_shards(out))


def test_tokenize_refuses_changed_sources_and_settings_naming_what_changed_and_a_missing_manifest(tiny_run, tmp_path,
                                                                                                  capsys):
    folder = tmp_path / "imgs"
    rows = caption_folder(tiny_run, "image", folder, 4)
    out = tmp_path / "s"
    command = ["tokenize", "--tokenizer", str(tiny_run / "model"), "--input", str(folder), "--out", str(out)]

    def write_captions(rows):
        (folder / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    def refused() -> str:
        capsys.readouterr()
        assert main(command) == 1
        return capsys.readouterr().err

    assert main(command) == 0
    capsys.readouterr()
    assert main(command + ["--seed", "1"]) == 1
    assert "holds shards made with other settings (seed 0 → 1)" in capsys.readouterr().err
    write_captions(rows + [{**rows[0], "caption": "said again"}])  # a second caption: one item more
    assert "made with other source (items 4 → 5, fingerprint" in refused()
    write_captions([{**rows[0], "caption": "a different caption"}] + rows[1:])  # as many items, other content
    assert "made with other source (fingerprint" in refused()
    write_captions(rows)
    assert main(command) == 0  # the source as it was: the finished set is kept
    image = folder / rows[0]["file"]
    data = bytearray(image.read_bytes())
    data[-1] ^= 0xFF
    image.write_bytes(bytes(data))  # rewritten in place, the same size: its modification time tells
    assert "made with other source (fingerprint" in refused()
    capsys.readouterr()
    assert main(command + ["--device", "meta"]) == 1  # codes of another device are not mixed in
    assert "other settings (device 'cpu' → 'meta'" in capsys.readouterr().err
    assert main(command + ["--device", "meta", "--workers", "2"]) == 1
    assert "--workers > 1 forks CPU processes" in capsys.readouterr().err
    assert main(command + ["--device", "gpu"]) == 1
    assert "unknown device 'gpu'" in capsys.readouterr().err
    assert main(["shards", "inspect", str(tmp_path)]) == 1
    assert "not a unitok shard set" in capsys.readouterr().err


def test_a_shard_folder_opens_by_name_with_datasets(tiny_run):
    folder = tiny_run / "shards" / "image" / "train"  # records/*.json outnumber its parquet files
    rows = datasets.load_dataset(str(folder), split="train")
    assert rows.num_rows == read_manifest(folder)["totals"]["rows"] and "media_ids" in rows.column_names
    stream = datasets.load_dataset(str(folder), split="train", streaming=True)
    assert next(iter(stream))["key"] == rows[0]["key"]
