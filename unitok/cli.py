"""The `unitok` command line: train, tokenize, shards, generate, eval, sweep, bench.

One rule for every command: a failure the user can fix (a `UnitokError`: a wrong file, setting or
prompt; or the environment refusing a file: an `OSError` such as a folder that cannot be written)
ends with one line on stderr (``unitok: error: …``) and exit 1; a bad option value is refused by
the parser before anything runs (exit 2). Anything else is a bug and keeps its traceback;
``--debug`` shows the traceback for every error. Output cut short by its reader (``| head``)
ends quietly.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

from unitok._version import __version__
from unitok.configs import shipped_recipes
from unitok.core.errors import UnitokError
from unitok.core.seeds import MAX_SEED

USER_ERRORS = (UnitokError, OSError)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.command(args) or 0
    except BrokenPipeError:  # the reader stopped reading (`| head`): nothing is wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 141
    except USER_ERRORS as err:
        if args.debug:
            raise
        print(f"unitok: error: {_reason(err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("unitok: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130


def _reason(err: Exception) -> str:
    """One line: a `UnitokError`'s lines joined, an `OSError`'s reason and file."""
    if isinstance(err, OSError) and not isinstance(err, UnitokError) and err.strerror:
        files = " → ".join(str(f) for f in (err.filename, err.filename2) if f is not None)
        return f"{err.strerror}: {files}" if files else err.strerror
    lines = str(err).strip().splitlines()
    return "; ".join(lines)


def _checked(parse, holds, expected: str):
    """An argparse type: `parse` the text and refuse a value for which `holds` is false."""

    def convert(text: str):
        try:
            value = parse(text)
        except ValueError:
            value = None
        if value is None or not holds(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return convert


_seed = _checked(int, lambda seed: 0 <= seed < MAX_SEED, "an integer in [0, 2**63)")
_above_zero = _checked(float, lambda value: 0 < value < math.inf, "a finite number > 0")
_at_least_zero = _checked(float, lambda value: 0 <= value < math.inf, "a finite number >= 0")
_share = _checked(float, lambda value: 0 < value <= 1, "a number in (0, 1]")
_positive = _checked(int, lambda value: value >= 1, "an integer >= 1")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, unless it has none (None, an off flag) or its help already says it."""

    def _get_help_string(self, action):
        if action.default in (None, False) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class SubParser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, formatter_class=HelpFormatter, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unitok",
                                     description="Unified multimodal token models (RDPM media tokens + text BPE).",
                                     formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"unitok {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of every error, not a one-line reason")
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND", parser_class=SubParser)

    train = commands.add_parser("train", help="run a recipe: tokenizers, text BPE, shards, LM, eval (resumable)")
    train.add_argument("recipe", help="a recipe YAML file, or the name of a shipped recipe: "
                                      + ", ".join(shipped_recipes()))
    train.add_argument("--stop-after", choices=["data", "tokenizer", "text_bpe", "shards", "lm", "pipeline", "eval"],
                       help="stop after this stage")
    train.set_defaults(command=cmd_train)

    tokenize = commands.add_parser(
        "tokenize", help="turn media with captions (or a text corpus) into token shards (parquet)",
        description="Tokenize a folder, a datasets dataset or a text corpus into a resumable parquet shard set. "
                    "Bad inputs are skipped and listed in OUT/errors.jsonl. Under `accelerate launch -m unitok "
                    "tokenize …` every rank writes its own shards.")
    tokenize.add_argument("--tokenizer", required=True,
                          help="a saved pipeline folder (e.g. runs/quickstart/model) or a Hub repo id")
    source = tokenize.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", type=Path, help="folder of media files, or a text corpus (.txt, .jsonl, .csv)")
    source.add_argument("--dataset", help="a Hugging Face datasets name or builder, e.g. imagefolder")
    tokenize.add_argument("--captions", type=Path, help="JSONL/CSV with file,caption (default: the folder's "
                                                        "metadata.jsonl, else sidecar .txt files)")
    tokenize.add_argument("--data-dir", help="data_dir for --dataset (e.g. an imagefolder layout)")
    tokenize.add_argument("--data-files", nargs="+", help="data_files for --dataset (e.g. --dataset csv "
                          "--data-dir photos --data-files items.csv; relative to --data-dir)")
    tokenize.add_argument("--split", default="train", help="the --dataset split to tokenize")
    tokenize.add_argument("--media-column", default="image",
                          help="the --dataset column holding the media (or paths to it)")
    tokenize.add_argument("--text-column", default=None, help="caption column (default: caption or text)")
    tokenize.add_argument("--modality", choices=["image", "audio", "video"],
                          help="which of the pipeline's tokenizers to use (needed when it has several)")
    tokenize.add_argument("--task", help="the rows' default training task (default: text_to_<modality>, or text)")
    tokenize.add_argument("--out", type=Path, required=True, help="output shard folder")
    tokenize.add_argument("--items-per-shard", type=_positive, default=1024,
                          help="items per parquet shard (the unit of resuming)")
    tokenize.add_argument("--seed", type=_seed, default=0, help="base seed of the RDPM noise draws")
    tokenize.add_argument("--noise-draws", type=_positive, default=1, help="noise draws (token sequences) per item")
    tokenize.add_argument("--workers", type=_positive, default=1, help="local worker processes (CPU)")
    tokenize.add_argument("--device", default="cpu",
                          help="where the tokenizer runs: cpu, a torch device such as cuda:0, or accelerator "
                               "(each rank's own under accelerate launch); part of the set's identity")
    tokenize.add_argument("--strict", action="store_true", help="fail on the first bad item instead of skipping it")
    tokenize.set_defaults(command=cmd_tokenize)

    shards = commands.add_parser("shards", help="inspect or verify a shard set")
    shard_commands = shards.add_subparsers(title="commands", required=True, metavar="COMMAND", parser_class=SubParser)
    inspect = shard_commands.add_parser("inspect", help="counts, tokenizers, tasks, token lengths, errors")
    inspect.add_argument("dir", type=Path, help="a shard set folder")
    inspect.add_argument("--json", action="store_true", help="print the summary as JSON")
    inspect.set_defaults(command=cmd_shards_inspect)
    verify = shard_commands.add_parser("verify", help="re-read every shard; check counts, hashes and id ranges")
    verify.add_argument("dir", type=Path, help="a shard set folder")
    verify.set_defaults(command=cmd_shards_verify)

    generate = commands.add_parser("generate", help="generate media from text prompts, or text from media files")
    generate.add_argument("model", help="a saved pipeline folder or a Hub repo id")
    generate.add_argument("--modality", choices=["image", "audio", "video", "text"], default="image",
                          help="what to generate: media from --prompt, or text (a caption) from --input")
    generate.add_argument("--prompt", action="append", help="text prompt (repeat for several)")
    generate.add_argument("--input", type=Path, action="append", help="media file to describe, with --modality text "
                                                                      "(repeat for several)")
    generate.add_argument("--out", type=Path, help="output file for media, e.g. x.png or x.wav "
                                                   "(several prompts: NAME-0.ext, …)")
    generate.add_argument("--guidance-scale", type=_at_least_zero,
                          help="classifier-free guidance (text→media; default: the pipeline's saved sampler settings, "
                               "else 3.0)")
    generate.add_argument("--temperature", type=_above_zero, help="default: the pipeline's, else 1.0")
    generate.add_argument("--top-k", type=_positive, help="default: the pipeline's, else none")
    generate.add_argument("--top-p", type=_share, help="default: the pipeline's, else none")
    generate.add_argument("--gumbel-scale", type=_at_least_zero,
                          help="1 = sample, 0 = greedy (default: the pipeline's for media, else 1; 0 for text)")
    generate.add_argument("--refine-temperature", type=_above_zero,
                          help="RDPM: temperature of the blocks after the first generated one (default: the "
                               "pipeline's, else --temperature)")
    generate.add_argument("--max-new-tokens", type=_positive, default=32, help="longest caption (media→text)")
    generate.add_argument("--seed", type=_seed, default=0,
                          help="every item's seed: the same prompt and seed give the same output, whatever else "
                               "is generated beside it")
    generate.add_argument("--device",
                          help="torch device to run on, e.g. cpu or cuda:0 (default: cuda if available, else cpu)")
    generate.set_defaults(command=cmd_generate)

    evaluate = commands.add_parser("eval", help="(re)evaluate a trained recipe and write metrics.json")
    evaluate.add_argument("recipe", help="the recipe the run was trained from (a file or a shipped recipe's name)")
    evaluate.set_defaults(command=cmd_eval)

    sweep = commands.add_parser("sweep", help="train variants of a recipe and compare them: tokenizers "
                                              "(rate-distortion) "
                                              "or generation against LM steps")
    sweep.add_argument("sweep", type=Path, help="sweep YAML (its `kind:` says which), e.g. "
                                                "experiments/sweeps/tokenizer.yaml")
    sweep.set_defaults(command=cmd_sweep)

    bench = commands.add_parser("bench", help="measure sampling and training speed (ratios in one run)")
    bench.add_argument("--out", type=Path, default=Path("bench.json"), help="where the measurements go (JSON)")
    bench.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    bench.set_defaults(command=cmd_bench)
    return parser


def cmd_train(args) -> int:
    from unitok.core.runtime import end_processes
    from unitok.recipe.schema import load_recipe
    from unitok.recipe.stages import RecipeRun

    loaded = load_recipe(args.recipe)
    writable_folder(loaded.out)
    try:
        RecipeRun(loaded).run(stop_after=args.stop_after)
    finally:
        end_processes()
    return 0


def cmd_eval(args) -> int:
    from unitok.recipe.schema import load_recipe
    from unitok.recipe.stages import STAGE_NAME, RecipeRun

    run = RecipeRun(load_recipe(args.recipe))
    if not (run.out / "model" / "model_index.json").is_file():
        raise UnitokError(f"{run.out}: no trained model to evaluate; run `unitok train {args.recipe}` first")
    (run.out / "eval" / STAGE_NAME).unlink(missing_ok=True)
    run.stage_eval()
    return 0


def cmd_tokenize(args) -> int:
    from unitok.core.runtime import end_processes, processes
    from unitok.data.shard_writer import ShardWriter, TokenizeSettings
    from unitok.data.sources import DatasetSource, FolderSource, TextSource
    from unitok.pipeline import PipelineTokenizers

    tokenizers = PipelineTokenizers.from_pretrained(args.tokenizer)
    writable_folder(args.out.parent)
    settings = TokenizeSettings(items_per_shard=args.items_per_shard, seed=args.seed, noise_draws=args.noise_draws)
    media_tokenizer = None
    if args.input and args.input.is_file():
        source = TextSource(args.input, args.text_column)
    else:
        source = (FolderSource(args.input, args.captions) if args.input else
                  DatasetSource(args.dataset, args.split, args.media_column, args.text_column, args.data_dir,
                                args.data_files))
        media_tokenizer = tokenizers.for_modality(args.modality)
    writer = ShardWriter(args.out, media_tokenizer, tokenizers.text, tokenizers.vocabulary, settings,
                         task=args.task, strict=args.strict, device=args.device)
    try:
        totals = writer.write(source, workers=args.workers)
        ranks, is_main = processes().num_processes, processes().is_main_process
    finally:
        end_processes()
    reasons = ", ".join(f"{n} {reason}" for reason, n in totals["error_reasons"].items())
    if is_main:
        print(f"wrote {totals['rows']} rows ({totals['items']} items × "
              f"{args.noise_draws if media_tokenizer else 1} noise draws) in {totals['shards']} shards to {args.out} "
              f"with {ranks} process(es) × {args.workers} worker(s); skipped {totals['errors']} bad inputs"
              + (f" ({reasons}; see {args.out / 'errors.jsonl'})" if reasons else ""))
    return 0


def cmd_shards_inspect(args) -> int:
    from unitok.data.shards import inspect_shards

    summary = inspect_shards(args.dir)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    totals = summary["totals"]
    print(f"{summary['dir']}: {totals['rows']} rows of {totals['items']} items, {totals['tokens']} tokens in "
          f"{totals['shards']} shards from {totals['source_items']} source items ({json.dumps(summary['source'])})")
    print(f"tokenizers: {json.dumps(summary['tokenizers'])}; vocabulary {summary['vocabulary_hash']}")
    print(f"tasks: {json.dumps(summary['tasks'])}; media: {json.dumps(summary['media'])}")
    print("tokens per row:")
    for b in summary["token_length_histogram"]:
        print(f"  {b['from']:>6} – {b['to']:<6} {b['rows']:>8}")
    print(f"errors: {totals['errors']} " + json.dumps(totals["error_reasons"]))
    return 0


def cmd_shards_verify(args) -> int:
    from unitok.data.shards import ShardError, verify_shards

    problems = verify_shards(args.dir)
    for problem in problems:
        print(problem)
    if problems:
        raise ShardError(f"{args.dir}: {len(problems)} problem(s); first: {problems[0]}")
    print(f"{args.dir}: every shard matches its manifest")
    return 0


def cmd_generate(args) -> int:
    import torch

    from unitok.core.runtime import torch_device
    from unitok.pipeline import UniTokPipeline
    from unitok.tokenizer.media_tokenizer import ADAPTERS

    describe = args.modality == "text"
    if describe and (not args.input or args.prompt or args.out):
        raise UnitokError("--modality text describes media: pass --input FILE, without --prompt or --out "
                          "(captions are printed)")
    if not describe and (not args.prompt or not args.out or args.input):
        raise UnitokError(f"--modality {args.modality} generates from text: pass --prompt TEXT and --out FILE, "
                          "without --input")
    if not describe:
        ADAPTERS[args.modality].check_writable(args.out)  # before a model is loaded or an output made
        writable_folder(args.out.parent)
    device = torch_device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    pipe = UniTokPipeline.from_pretrained(args.model, device=device)
    sampler = {"temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p,
               "gumbel_scale": args.gumbel_scale, "seed": args.seed}
    if describe:
        modalities = sorted({pipe.modality_of_file(path) for path in args.input})
        if len(modalities) > 1:
            raise UnitokError(f"--input: files of one modality per call, got {' and '.join(modalities)}")
        captions = pipe.media_to_text(modalities[0], [str(p) for p in args.input],
                                      max_new_tokens=args.max_new_tokens, **sampler)
        for path, caption in zip(args.input, captions):
            print(f"{path}\t{caption}")
        return 0
    out = pipe.text_to_media(args.modality, args.prompt, guidance_scale=args.guidance_scale,
                             refine_temperature=args.refine_temperature, **sampler)
    for path in out.save(args.out):
        print(path)
    return 0


def writable_folder(folder: Path) -> None:
    """Refuse, before any work, a folder that cannot be made or written."""
    file = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
    if file is not None:
        raise UnitokError(f"{folder}: {file} is a file, not a folder; choose another path")
    folder.mkdir(parents=True, exist_ok=True)  # an OSError (not permitted, …) names the folder
    if not os.access(folder, os.W_OK):
        raise UnitokError(f"{folder}: not writable")


def cmd_sweep(args) -> int:
    from unitok.core.config import ConfigError, read_yaml
    from unitok.experiments.generation_sweep import run_generation_sweep
    from unitok.experiments.tokenizer_sweep import run_tokenizer_sweep

    sweeps = {"tokenizer": run_tokenizer_sweep, "generation": run_generation_sweep}
    kind = read_yaml(args.sweep).get("kind")
    if kind not in sweeps:
        raise ConfigError(f"{args.sweep}: kind: expected one of {list(sweeps)}, got {kind!r}")
    sweeps[kind](args.sweep)
    return 0


def cmd_bench(args) -> int:
    from unitok.experiments.bench import run_bench

    writable_folder(args.out.parent)
    results = run_bench(quick=args.quick)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
