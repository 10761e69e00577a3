"""The `unitok` CLI in subprocesses and on a trained run: tokenize with bad inputs, generate, one-line errors."""

import json
import shutil
import subprocess
import sys

from PIL import Image

from unitok.cli import main


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "unitok", *map(str, args)], capture_output=True, text=True)


def make_folder(tiny_run, tmp_path, n=6):
    """A caption folder copied from the tiny run's held-out images, plus bad files."""
    folder = tmp_path / "photos"
    folder.mkdir()
    source = tiny_run / "data" / "image" / "heldout"
    rows = [json.loads(line) for line in (source / "captions.jsonl").read_text().splitlines()][:n]
    for row in rows:
        shutil.copy(source / row["file"], folder / f"{row['key']}.png")
    lines = [{"file": f"{r['key']}.png", "caption": r["caption"]} for r in rows]
    (folder / "truncated.png").write_bytes((folder / lines[0]["file"]).read_bytes()[:60])
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.png").write_text("this is not an image")
    lines.insert(2, {"file": "truncated.png", "caption": "a red 1"})
    lines.insert(4, {"file": "empty.png", "caption": "a red 2"})
    lines.append({"file": "notes.png", "caption": "a red 3"})
    lines.append({"file": "missing.png", "caption": "a red 4"})
    lines.append({"file": lines[0]["file"], "caption": ""})
    (folder / "captions.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return folder, len(rows)


def test_tokenize_skips_and_reports_bad_files_while_good_ones_land(tiny_run, tmp_path):
    import datasets

    folder, good = make_folder(tiny_run, tmp_path)
    out = tmp_path / "shards"
    result = run_cli("tokenize", "--tokenizer", tiny_run / "model", "--input", folder, "--captions",
                     folder / "captions.jsonl", "--out", out, "--items-per-shard", 4)
    assert result.returncode == 0, result.stderr
    wrote = f"wrote {good} rows ({good} items × 1 noise draws)"
    assert wrote in result.stdout and "skipped 5 bad inputs" in result.stdout
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert {e["key"] for e in errors} >= {"truncated.png", "empty.png", "notes.png", "missing.png"}
    assert any(e["reason"] == "missing caption" for e in errors)
    rows = datasets.load_dataset("parquet", data_files=str(out / "shard-*.parquet"), split="train")
    assert len(rows) == good and len(set(rows["key"])) == good

    again = run_cli("tokenize", "--tokenizer", tiny_run / "model", "--input", folder, "--captions",
                    folder / "captions.jsonl", "--out", out, "--items-per-shard", 4)
    assert again.returncode == 0 and wrote in again.stdout, "a re-run adds no duplicates"


def test_strict_stops_at_the_first_bad_file(tiny_run, tmp_path):
    folder, _ = make_folder(tiny_run, tmp_path)
    out = tmp_path / "s"
    result = run_cli("tokenize", "--tokenizer", tiny_run / "model", "--input", folder, "--out", out, "--strict")
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("unitok: error:")]
    assert len(errors) == 1 and errors[0].startswith("unitok: error: truncated.png:")
    assert "not a readable image" in errors[0]


def test_tokenize_imagefolder_through_datasets(tiny_run, tmp_path):
    import datasets

    folder, good = make_folder(tiny_run, tmp_path)
    (folder / "captions.jsonl").rename(folder / "metadata.jsonl")
    lines = [json.loads(x) for x in (folder / "metadata.jsonl").read_text().splitlines()]
    keep = [{"file_name": x["file"], "caption": x["caption"]} for x in lines
            if x["file"] not in ("missing.png", "notes.png", "empty.png", "truncated.png") and x["caption"]]
    (folder / "metadata.jsonl").write_text("".join(json.dumps(x) + "\n" for x in keep))
    for name in ("missing.png", "notes.png", "empty.png", "truncated.png"):
        (folder / name).unlink(missing_ok=True)
    out = tmp_path / "hf"
    assert main(["tokenize", "--tokenizer", str(tiny_run / "model"), "--dataset", "imagefolder",
                 "--data-dir", str(folder), "--out", str(out)]) == 0
    rows = datasets.load_dataset("parquet", data_files=str(out / "shard-*.parquet"), split="train")
    assert len(rows) == good and set(rows["caption"]) == {x["caption"] for x in keep}


def test_other_tokenizer_against_existing_shards_is_refused(tiny_run, tmp_path, capsys):
    folder, _ = make_folder(tiny_run, tmp_path)
    out = tmp_path / "shards"
    assert main(["tokenize", "--tokenizer", str(tiny_run / "model"), "--input", str(folder), "--out", str(out)]) == 0
    assert main(["tokenize", "--tokenizer", str(tiny_run / "model"), "--input", str(folder), "--out", str(out),
                 "--seed", "5"]) == 1
    assert "holds shards made with other settings" in capsys.readouterr().err


def test_generate_writes_png_and_errors_are_one_line(tiny_run, tmp_path):
    out = tmp_path / "seven.png"
    result = run_cli("generate", tiny_run / "model", "--prompt", "a red 7 on the left", "--out", out, "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert Image.open(out).size == (32, 32)
    missing = run_cli("generate", tmp_path / "nowhere", "--prompt", "x", "--out", out)
    assert missing.returncode == 1
    assert missing.stderr.startswith("unitok: error:") and "no such folder, and not a Hub repo id" in missing.stderr
    assert missing.stderr.count("\n") == 1
    bad = run_cli("train", tmp_path / "missing.yaml")
    assert bad.returncode == 1 and "no such recipe file, nor a shipped recipe" in bad.stderr



