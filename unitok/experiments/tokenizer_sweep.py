"""Rate–distortion sweep: train variants of a recipe's media tokenizer the same way, measure each.

A sweep file names a recipe (its data and tokenizer training settings are the base) and a set of
named variants, each a partial override of the recipe's tokenizer spec and, under ``training``,
of its training settings::

    kind: tokenizer
    recipe: quickstart                  # a shipped recipe's name, or a recipe file
    output_dir: runs/sweeps/tokenizer
    variants:
      plain_vq: {quantizer: {noise_steps: 0}}
      rdpm_T10: {quantizer: {noise_steps: 10}}
      longer: {training: {steps: 1200}}

Every variant is a resumable stage (``<output_dir>/<name>/``); the table of held-out PSNR, codebook
usage, tokens per item and (on digits world) what is read back from reconstructions (digit, direction, DTMF) lands
in ``<output_dir>/results.json`` and ``results.md``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from unitok.benchmarks.digits.classifier import load_or_train_digit_classifier
from unitok.benchmarks.digits.clips import build_clip_world
from unitok.benchmarks.digits.dtmf import dtmf_roundtrip_accuracy
from unitok.benchmarks.digits.scenes import build_digits_world
from unitok.benchmarks.digits.scores import recon_digit_accuracy, video_recon_scores
from unitok.benchmarks.digits.tones import build_tone_world
from unitok.configs import find_recipe
from unitok.core.config import Config, ConfigError, config_hash, from_dict, load_config, merged, to_dict
from unitok.recipe.schema import load_recipe
from unitok.recipe.stages import RecipeRun, run_stage
from unitok.tokenizer.media_tokenizer import MediaTokenizer, TokenizerSpec
from unitok.train.tokenizer import TokenizerTraining, tokenizer_metrics, train_media_tokenizer

METRICS_FILE = "metrics.json"


@dataclass(frozen=True)
class TokenizerSweep(Config):
    kind: Literal["tokenizer"]
    recipe: str  # a shipped recipe's name, or a recipe file (relative to the working directory or the sweep file)
    output_dir: str
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> overrides of the spec
    modality: str = "image"  # which of the recipe's tokenizers to vary

    def rules(self):
        yield bool(self.variants), "variants", "list at least one variant"


def variant(base: TokenizerSpec, base_training: TokenizerTraining, overrides: dict[str, Any],
            source: str) -> tuple[TokenizerSpec, TokenizerTraining]:
    """The base spec and training with ``overrides`` merged in (``training:`` for the training);
    a wrong field is reported under ``source``."""
    spec_overrides = {key: value for key, value in overrides.items() if key != "training"}
    spec = from_dict(TokenizerSpec, merged(to_dict(base), spec_overrides), source=source)
    training = from_dict(TokenizerTraining, merged(to_dict(base_training), overrides.get("training", {})),
                         source=f"{source}: training")
    return spec, training


def plan_tokenizer_sweep(path: str | Path, log=print) -> tuple[TokenizerSweep, RecipeRun, dict]:
    """The sweep, its base recipe's run and every variant's (spec, training), checked before anything trains."""
    path = Path(path)
    sweep = load_config(path, TokenizerSweep)
    run = RecipeRun(load_recipe(find_recipe(sweep.recipe, path)), log)
    modality = sweep.modality
    if modality not in run.loaded.tokenizer_specs:
        raise ConfigError(f"{path}: modality: the recipe has no {modality} tokenizer (it has {run.loaded.modalities})")
    base = run.loaded.tokenizer_specs[modality]
    variants = {name: variant(base, run.recipe.tokenizers[modality].training, overrides, f"{path}: variants.{name}")
                for name, overrides in sweep.variants.items()}
    return sweep, run, variants


def run_tokenizer_sweep(path: str | Path, log=print) -> dict[str, dict]:
    sweep, run, variants = plan_tokenizer_sweep(path, log)
    modality, seed = sweep.modality, run.recipe.seed
    run.stage_data()
    out = Path(sweep.output_dir)
    read_back = _digits_read_back(run, modality, out)
    tensors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # per adapter section: variants may read media otherwise

    def measure(name: str, spec: TokenizerSpec, training: TokenizerTraining) -> None:
        adapter = json.dumps(to_dict(getattr(spec, modality)), sort_keys=True)
        if adapter not in tensors:
            tensors[adapter] = tuple(run.split_tensors(modality, split, MediaTokenizer(spec))
                                     for split in ("train", "heldout"))
        train_x, heldout_x = tensors[adapter]
        start = time.perf_counter()
        tokenizer = train_media_tokenizer(spec, train_x, training, seed, desc=f"sweep:{name}")
        row = {"train_seconds": round(time.perf_counter() - start, 1), "train_steps": training.steps,
               "noise_steps": spec.quantizer.noise_steps, "latent_channels": spec.autoencoder.latent_channels,
               "codebook_size": spec.quantizer.codebook_size,
               "tokens_per_item": tokenizer.num_blocks * tokenizer.num_positions,
               **tokenizer_metrics(tokenizer, heldout_x, seed)}
        if read_back is not None:
            row.update(read_back(tokenizer, seed))
        (out / name / METRICS_FILE).write_text(json.dumps(row, indent=2) + "\n")
        log(f"  {name}: {row}")

    for name, (spec, training) in variants.items():
        run_stage(out / name, config_hash(run.data_key(modality), spec, training, seed),
                  lambda: measure(name, spec, training), log)
    results = {name: json.loads((out / name / METRICS_FILE).read_text()) for name in variants}
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(results_table(results))
    return results


def _digits_read_back(run: RecipeRun, modality: str, out: Path):
    """What the digit classifier reads back from a variant's reconstructions of the held-out
    digits-world images or clips (None for other data): built once, so that every variant is read
    by the same classifier on the same items."""
    source = getattr(run.recipe.data, modality)
    world = source.digits_world if source is not None else None
    if world is None:
        return None
    if modality == "audio":
        tones = build_tone_world(world)["heldout"]
        return lambda tokenizer, seed: {"dtmf_roundtrip_accuracy": dtmf_roundtrip_accuracy(tokenizer, tones, seed)}
    steps = run.recipe.eval.classifier_steps
    if modality == "image":
        items = build_digits_world(world)["heldout"]
        classifier = load_or_train_digit_classifier(out / "classifier", world, steps)
        return lambda tokenizer, seed: {"recon_digit_accuracy": recon_digit_accuracy(tokenizer, items, classifier,
                                                                                     world, seed)}
    items = build_clip_world(world)["heldout"]
    classifier = load_or_train_digit_classifier(out / "classifier", world.image_world(), steps)
    return lambda tokenizer, seed: video_recon_scores(tokenizer, items, classifier, world, seed)


def results_table(results: dict[str, dict]) -> str:
    columns = ["noise_steps", "latent_channels", "codebook_size", "train_steps", "tokens_per_item", "psnr_db",
               "codebook_usage",
               "recon_digit_accuracy", "recon_direction_accuracy", "recon_digit_direction_accuracy",
               "real_digit_direction_accuracy", "dtmf_roundtrip_accuracy", "train_seconds"]
    columns = [c for c in columns if any(c in row for row in results.values())]
    lines = ["| variant | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, row in results.items():
        cells = [f"{row[c]:.3g}" if isinstance(row.get(c), float) else str(row.get(c, "")) for c in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
