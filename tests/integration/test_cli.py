"""The `unitok` CLI in subprocesses and on a trained run: tokenize with bad inputs, generate, one-line errors."""

import json
import shutil
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from tests.helpers import write_tiny_recipe
from unitok.cli import main


def run_cli(*args):
    """`unitok ARGS` as a user runs it, in its own process (a few seconds of imports each)."""
    return subprocess.run([sys.executable, "-m", "unitok", *map(str, args)], capture_output=True, text=True)


@pytest.fixture
def cli(capsys):
    """`unitok ARGS` through `main` in this process, as a finished process (returncode, stdout,
    stderr): the same code path as `run_cli` without a new interpreter per call; an uncaught
    exception fails the test as a traceback would."""

    def run(*args):
        capsys.readouterr()
        try:
            code = main([str(a) for a in args])
        except SystemExit as exit_info:  # argparse refusals
            code = exit_info.code
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out, err)

    return run


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


def test_generate_writes_png_and_errors_are_one_line(tiny_run, tmp_path, cli):
    out = tmp_path / "seven.png"
    result = cli("generate", tiny_run / "model", "--prompt", "a red 7 on the left", "--out", out, "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert Image.open(out).size == (32, 32)
    missing = cli("generate", tmp_path / "nowhere", "--prompt", "x", "--out", out)
    assert missing.returncode == 1
    assert missing.stderr.startswith("unitok: error:") and "no such folder, and not a Hub repo id" in missing.stderr
    assert missing.stderr.count("\n") == 1
    bad = cli("train", tmp_path / "missing.yaml")
    assert bad.returncode == 1 and "no such recipe file, nor a shipped recipe" in bad.stderr





def one_line_error(result, *fragments):
    """`result` failed with exit 1, its stderr ending in one line ``unitok: error: …`` (after any
    progress bars) that holds every fragment."""
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    last = result.stderr.rstrip("\n").splitlines()[-1]
    assert last.startswith("unitok: error: ") and "Traceback" not in result.stderr, result.stderr
    assert all(f in last for f in fragments), result.stderr


def caption_lines(folder):
    return [json.loads(line) for line in (folder / "captions.jsonl").read_text().splitlines()]


def test_images_without_a_caption_line_and_repeated_lines_all_end_as_rows_or_errors(tiny_run, tmp_path, cli):
    """203dc14 dropped images the manifest had no line for (in neither the shards nor errors.jsonl)
    and wrote a set with a repeated key that its own `verify` rejected."""
    folder, _ = make_folder(tiny_run, tmp_path, n=20)
    for bad in ("truncated.png", "empty.png", "notes.png"):
        (folder / bad).unlink()
    lines = [line for line in caption_lines(folder) if (folder / line["file"]).is_file() and line["caption"]]
    unlisted = [line["file"] for line in lines[:4]]
    kept = lines[4:] + [{**lines[5], "caption": "the same image, said again"}]
    (folder / "captions.jsonl").write_text("".join(json.dumps(line) + "\n" for line in kept))
    out = tmp_path / "shards"
    assert cli("tokenize", "--tokenizer", tiny_run / "model", "--input", folder, "--out", out).returncode == 0
    errors = {e["key"]: e["reason"] for e in map(json.loads, (out / "errors.jsonl").read_text().splitlines())}
    rows = set(pq.read_table(sorted(out.glob("shard-*.parquet")), columns=["key"]).column("key").to_pylist())
    on_disk = {p.name for p in folder.glob("*.png")}
    assert rows | errors.keys() == on_disk | {f"{lines[5]['file']}#2"}, "every image is a row or an error"
    assert {k for k in errors if errors[k] == "missing caption (captions.jsonl has no line for it)"} == set(unlisted)
    assert f"{lines[5]['file']}#2" in rows
    verified = cli("shards", "verify", out)
    assert verified.returncode == 0, verified.stdout


def test_a_refused_tokenize_writes_nothing_into_out(tiny_run, tmp_path, cli):
    """203dc14 refused --workers 0 after writing manifest.json, vocabulary.json and records/."""
    folder, _ = make_folder(tiny_run, tmp_path)
    out = tmp_path / "out"
    command = ["tokenize", "--tokenizer", tiny_run / "model", "--input", folder, "--out", out]
    for option, value in (("--workers", 0), ("--seed", 99999999999999999999), ("--items-per-shard", -1)):
        refused = cli(*command, option, value)
        assert refused.returncode == 2 and f"argument {option}: expected an integer" in refused.stderr
        assert not out.exists()
    line = len(caption_lines(folder)) + 1
    (folder / "captions.jsonl").write_bytes((folder / "captions.jsonl").read_bytes() + b'{"file": "caf\xe9.png"}\n')
    one_line_error(cli(*command), f"{folder / 'captions.jsonl'}:{line}: not UTF-8 text; re-save the file as UTF-8")
    assert not out.exists()


def test_output_paths_that_cannot_be_written_are_one_line_errors(tiny_run, tmp_path, cli):
    """203dc14 showed an 11-frame PermissionError or NotADirectoryError traceback."""
    folder, _ = make_folder(tiny_run, tmp_path)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    one_line_error(cli("tokenize", "--tokenizer", tiny_run / "model", "--input", folder, "--out",
                           blocker / "shards"), f"{blocker} is a file, not a folder")
    one_line_error(cli("generate", tiny_run / "model", "--prompt", "a red 7", "--out", blocker / "x.png"),
                   "is a file, not a folder")
    one_line_error(cli("generate", tiny_run / "model", "--prompt", "a red 7", "--out", "/sys/unitok/x.png"),
                   "/sys/unitok")  # not permitted, even to root
    recipe = yaml.safe_load((tiny_run.parent / "recipe.yaml").read_text())
    (tmp_path / "below-a-file.yaml").write_text(yaml.safe_dump({**recipe, "output_dir": str(blocker / "run")}))
    one_line_error(cli("train", tmp_path / "below-a-file.yaml"), "is a file, not a folder")


def test_generate_refuses_before_generating_a_file_it_cannot_write(tiny_run, tmp_path, cli):
    """203dc14 raised `ValueError: unknown file extension` after generating."""
    for name in ("noext", "x.wav"):
        one_line_error(cli("generate", tiny_run / "model", "--prompt", "a red 7", "--out", tmp_path / name),
                       f"{name}: image saves as .png")
    assert list(tmp_path.iterdir()) == []


def test_generate_refuses_untrained_directions_long_prompts_and_bad_values_in_one_line(tiny_run, tmp_path, cli):
    image = next((tiny_run / "data" / "image" / "heldout").rglob("*.png"))
    model = tiny_run / "model"
    one_line_error(cli("generate", model, "--modality", "text", "--input", image),
                   "this model was not trained for image_to_text (it was trained for text_to_image)")
    one_line_error(cli("generate", model, "--prompt", "a red 7 " * 300, "--out", tmp_path / "x.png"),
                   "positions; this model has 512")
    one_line_error(cli("generate", model, "--prompt", "a red 7", "--input", image, "--out", tmp_path / "x.png"),
                   "without --input")
    one_line_error(cli("generate", model, "--prompt", "a red 7", "--out", tmp_path / "x.png", "--device",
                           "cuda:64"), "device cuda:64: this machine has")
    for option, value, reason in (("--guidance-scale", "nan", "expected a finite number >= 0, got 'nan'"),
                                  ("--temperature", "inf", "expected a finite number > 0, got 'inf'"),
                                  ("--temperature", "0", "expected a finite number > 0, got '0'"),
                                  ("--top-p", "0", "expected a number in (0, 1], got '0'"),
                                  ("--max-new-tokens", "-1", "expected an integer >= 1, got '-1'"),
                                  ("--seed", "99999999999999999999", "expected an integer in [0, 2**63)")):
        refused = cli("generate", model, "--prompt", "a red 7", "--out", tmp_path / "x.png", option, value)
        assert refused.returncode == 2 and f"argument {option}: {reason}" in refused.stderr
    assert list(tmp_path.iterdir()) == []


def test_eval_of_a_run_that_has_not_trained_says_to_train_it(tmp_path, cli):
    recipe = write_tiny_recipe(tmp_path)
    one_line_error(cli("eval", recipe), "no trained model to evaluate; run `unitok train")


def test_output_cut_short_by_its_reader_ends_quietly(tiny_run, tmp_path):
    """`unitok shards inspect --json | head` showed a BrokenPipeError traceback on 203dc14."""
    folder, _ = make_folder(tiny_run, tmp_path)
    assert main(["tokenize", "--tokenizer", str(tiny_run / "model"), "--input", str(folder), "--out",
                 str(tmp_path / "s")]) == 0
    reader_gone = subprocess.Popen([sys.executable, "-m", "unitok", "shards", "inspect", "--json", tmp_path / "s"],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    reader_gone.stdout.close()  # the reader stops before the first line is written
    assert reader_gone.stderr.read() == b"" and reader_gone.wait() == 141


def test_files_and_values_a_command_cannot_use_are_one_line_errors(tiny_run, tmp_path, cli):
    (tmp_path / "unclosed.yaml").write_text("kind: [generation\n")
    one_line_error(cli("sweep", tmp_path / "unclosed.yaml"), "unclosed.yaml: not valid YAML")
    (tmp_path / "list.yaml").write_text("- kind\n- generation\n")
    one_line_error(cli("sweep", tmp_path / "list.yaml"), "list.yaml: expected a mapping of fields, got list")
    (tmp_path / "latin1.yaml").write_bytes(b"name: caf\xe9\n")
    one_line_error(cli("train", tmp_path / "latin1.yaml"), "latin1.yaml:1: not UTF-8 text")
    model = tmp_path / "model"
    shutil.copytree(tiny_run / "model", model)
    (model / "model_index.json").write_text("{")
    one_line_error(cli("generate", model, "--prompt", "a red 7", "--out", tmp_path / "x.png"),
                   "model_index.json: not valid JSON")
    folder, _ = make_folder(tiny_run, tmp_path)
    tokenize = ["tokenize", "--tokenizer", tiny_run / "model", "--input", folder, "--out", tmp_path / "s"]
    one_line_error(cli(*tokenize, "--task", "audio_to_text"),
                   "task audio_to_text: these rows hold image and text, not audio")
    one_line_error(cli(*tokenize, "--task", "caption"), "unknown task 'caption'")
    assert not (tmp_path / "s").exists()
    one_line_error(cli("bench", "--out", folder / "captions.jsonl" / "bench.json"), "is a file, not a folder")


def test_describe_takes_files_of_one_modality_per_call(tiny_multimodal_run, cli):
    heldout = tiny_multimodal_run / "data"
    image, audio = next((heldout / "image").rglob("*.png")), next((heldout / "audio").rglob("*.wav"))
    one_line_error(cli("generate", tiny_multimodal_run / "model", "--modality", "text", "--input", image,
                           "--input", audio), "--input: files of one modality per call, got audio and image")
