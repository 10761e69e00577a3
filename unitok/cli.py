"""The `unitok` command line: train, tokenize, generate, eval, sweep, bench.

Every failure the user can fix ends with one line on stderr (``unitok: error: …``) and exit 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .adapters import MediaError
from .config import ConfigError
from .shards import ShardError
from .sources import SourceError
from .vocabulary import VocabularyError

USER_ERRORS = (ConfigError, VocabularyError, ShardError, SourceError, MediaError, FileNotFoundError, ValueError)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.command(args) or 0
    except USER_ERRORS as err:
        reason = str(err).strip().splitlines()
        print(f"unitok: error: {reason[0] if len(reason) == 1 else '; '.join(reason)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("unitok: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unitok", description="Unified multimodal token models (RDPM media tokens + text BPE).")
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="run a recipe: tokenizers, text BPE, shards, LM, eval (resumable)")
    train.add_argument("recipe", type=Path, help="recipe YAML, e.g. recipes/quickstart.yaml")
    train.add_argument("--stop-after", choices=["data", "tokenizer", "text_bpe", "shards", "lm", "eval"],
                       help="stop after this stage")
    train.set_defaults(command=cmd_train)

    tokenize = commands.add_parser("tokenize", help="turn media with captions into token shards (parquet)")
    tokenize.add_argument("--tokenizer", type=Path, required=True, help="a saved pipeline folder (e.g. runs/quickstart/model)")
    source = tokenize.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", type=Path, help="folder of media files")
    source.add_argument("--dataset", help="a Hugging Face datasets name or builder, e.g. imagefolder")
    tokenize.add_argument("--captions", type=Path, help="JSONL/CSV with file,caption (default: the folder's metadata.jsonl)")
    tokenize.add_argument("--data-dir", help="data_dir for --dataset (e.g. an imagefolder layout)")
    tokenize.add_argument("--split", default="train")
    tokenize.add_argument("--media-column", default="image")
    tokenize.add_argument("--text-column", default=None, help="caption column (default: caption or text)")
    tokenize.add_argument("--modality", choices=["image", "audio", "video"],
                          help="which of the pipeline's tokenizers to use (needed when it has several)")
    tokenize.add_argument("--out", type=Path, required=True, help="output shard folder")
    tokenize.add_argument("--items-per-shard", type=int, default=1024)
    tokenize.add_argument("--seed", type=int, default=0, help="base seed of the RDPM noise draws")
    tokenize.add_argument("--noise-draws", type=int, default=1, help="noise draws (token sequences) per item")
    tokenize.add_argument("--strict", action="store_true", help="fail on the first bad item instead of skipping it")
    tokenize.set_defaults(command=cmd_tokenize)

    generate = commands.add_parser("generate", help="generate media from text prompts, or text from media files")
    generate.add_argument("model", type=Path, help="a saved pipeline folder")
    generate.add_argument("--modality", choices=["image", "audio", "video", "text"], default="image",
                          help="what to generate: media from --prompt, or text (a caption) from --input")
    generate.add_argument("--prompt", action="append", help="text prompt (repeat for several)")
    generate.add_argument("--input", type=Path, action="append", help="media file to describe, with --modality text "
                                                                      "(repeat for several)")
    generate.add_argument("--out", type=Path, help="output file for media, e.g. x.png or x.wav "
                                                   "(several prompts: NAME-0.ext, …)")
    generate.add_argument("--guidance-scale", type=float, default=3.0, help="classifier-free guidance (text→media)")
    generate.add_argument("--temperature", type=float, default=1.0)
    generate.add_argument("--top-k", type=int, default=None)
    generate.add_argument("--top-p", type=float, default=None)
    generate.add_argument("--gumbel-scale", type=float, default=None,
                          help="1 = sample, 0 = greedy (default: 1 for media, 0 for text)")
    generate.add_argument("--max-new-tokens", type=int, default=32, help="longest caption (media→text)")
    generate.add_argument("--seed", type=int, default=0)
    generate.set_defaults(command=cmd_generate)

    evaluate = commands.add_parser("eval", help="(re)evaluate a trained recipe and write metrics.json")
    evaluate.add_argument("recipe", type=Path)
    evaluate.set_defaults(command=cmd_eval)

    sweep = commands.add_parser("sweep", help="rate-distortion sweep: train tokenizer variants of a recipe, compare")
    sweep.add_argument("sweep", type=Path, help="sweep YAML, e.g. recipes/sweeps/tokenizer.yaml")
    sweep.set_defaults(command=cmd_sweep)

    bench = commands.add_parser("bench", help="measure sampling and training speed (ratios in one run)")
    bench.add_argument("--out", type=Path, default=Path("bench.json"))
    bench.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    bench.set_defaults(command=cmd_bench)
    return parser


def cmd_train(args) -> int:
    from .recipe import RecipeRun, load_recipe

    RecipeRun(load_recipe(args.recipe)).run(stop_after=args.stop_after)
    return 0


def cmd_eval(args) -> int:
    from .recipe import STAGE_NAME, RecipeRun, load_recipe

    run = RecipeRun(load_recipe(args.recipe))
    (run.out / "eval" / STAGE_NAME).unlink(missing_ok=True)
    run.stage_eval()
    return 0


def cmd_tokenize(args) -> int:
    from .pipeline import UniTokPipeline
    from .shards import ShardWriter, TokenizeSettings
    from .sources import dataset_items, folder_items

    pipe = UniTokPipeline.from_pretrained(args.tokenizer)
    settings = TokenizeSettings(items_per_shard=args.items_per_shard, seed=args.seed, noise_draws=args.noise_draws)
    if args.input:
        items = folder_items(args.input, args.captions)
    else:
        items = dataset_items(args.dataset, args.data_dir, args.split, args.media_column, args.text_column)
    modalities = [t.modality for t in pipe.media_tokenizers.values()]
    if args.modality is None and len(modalities) > 1:
        raise ValueError(f"this pipeline has {', '.join(modalities)} tokenizers: pass --modality")
    writer = ShardWriter(args.out, pipe.tokenizer_for(args.modality or modalities[0]), pipe.text_tokenizer,
                         pipe.vocabulary, settings, strict=args.strict)
    totals = writer.write(items)
    print(f"wrote {totals['items']} items in {totals['shards']} shards to {args.out}; "
          f"skipped {totals['errors']} bad inputs (see {args.out / 'errors.jsonl'})")
    return 0


def cmd_generate(args) -> int:
    from .pipeline import UniTokPipeline

    sampler = {"temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p, "seed": args.seed}
    describe = args.modality == "text"
    if describe and (not args.input or args.prompt):
        raise ValueError("--modality text describes media: pass --input FILE (and no --prompt)")
    if not describe and (not args.prompt or not args.out or args.input):
        raise ValueError(f"--modality {args.modality} generates from text: pass --prompt TEXT and --out FILE")
    pipe = UniTokPipeline.from_pretrained(args.model)
    if describe:
        captions = pipe.media_to_text(pipe.modality_of_file(args.input[0]), [str(p) for p in args.input],
                                      max_new_tokens=args.max_new_tokens, gumbel_scale=args.gumbel_scale or 0.0,
                                      **sampler)
        for path, caption in zip(args.input, captions):
            print(f"{path}\t{caption}")
        return 0
    gumbel = 1.0 if args.gumbel_scale is None else args.gumbel_scale
    out = pipe.text_to_media(args.modality, args.prompt, guidance_scale=args.guidance_scale, gumbel_scale=gumbel,
                             **sampler)
    for path in out.save(args.out):
        print(path)
    return 0


def cmd_sweep(args) -> int:
    from .eval.tokenizer_sweep import run_tokenizer_sweep

    run_tokenizer_sweep(args.sweep)
    return 0


def cmd_bench(args) -> int:
    from .bench import run_bench

    results = run_bench(quick=args.quick)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
