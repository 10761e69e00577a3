"""Evaluate a trained recipe: tokenizer, LM held-out loss, and text→image scores on digits world.

Writes ``metrics.json`` (keys as documented in docs/BENCHMARKS.md), ``samples.png`` (held-out
prompts) and ``trajectory.png`` (D(s_t) at every step) into the recipe's output folder.
"""

from __future__ import annotations

import json
import random
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from ..digits_world import Item, build_digits_world, digit_pools, parse_caption, real_renders
from ..media_tokenizer import MediaTokenizer
from ..pipeline import UniTokPipeline
from ..shards import load_shards
from ..visualize import labelled_grid, trajectory_grid
from .classifier import load_or_train_digit_classifier
from .diagnostics import (digit_accuracy_factorized_first_step, digit_accuracy_given_first_step,
                          first_step_digit_ce_gain, media_ids_of)
from .frechet import frechet_distance
from .readers import read_color, read_position

if TYPE_CHECKING:
    from ..recipe import RecipeRun


def evaluate_recipe(run: "RecipeRun") -> dict:
    recipe = run.recipe
    pipe = UniTokPipeline.from_pretrained(run.out / "model")
    metrics = {"tokenizer": _tokenizer_metrics(run), "lm": _lm_metrics(run)}
    world = recipe.data.digits_world
    if world is not None:
        splits = build_digits_world(world)
        items = splits["heldout"][: recipe.eval.num_samples]
        shards = {split: load_shards(run.out / "shards" / split, pipe.vocabulary) for split in ("train", "heldout")}
        ids = _generate(pipe, [it.caption for it in items], recipe.eval, recipe.seed)
        images = pipe.tokenizer_for("image").decode(ids)
        classifier = load_or_train_digit_classifier(run.out / "eval" / "classifier", world, recipe.eval.classifier_steps)
        metrics["tokenizer"]["recon_digit_accuracy"] = recon_digit_accuracy(pipe.tokenizer_for("image"), items,
                                                                            classifier, world, recipe.seed)
        metrics["text_to_image"] = {
            **text_to_image_scores(images, items, classifier, world),
            "exact_copy_fraction": exact_copy_fraction(ids, shards["train"], pipe),
            "guidance_scale": recipe.eval.sampler.guidance_scale,
            "num_samples": len(items),
        }
        _add_diagnostics(metrics, run, pipe, shards, items, splits["train"], classifier)
        n = recipe.eval.grid_samples
        labelled_grid(images[:n], [it.caption for it in items[:n]]).save(run.out / "samples.png")
        _trajectory_picture(pipe, ids[: recipe.eval.trajectory_samples], items).save(run.out / "trajectory.png")
    (run.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    run.log(json.dumps(metrics, indent=2))
    return metrics


def _tokenizer_metrics(run: "RecipeRun") -> dict:
    measured = json.loads((run.out / "tokenizers" / "metrics.json").read_text())
    main = measured[run.loaded.tokenizer_spec.name]
    result = {"psnr_db": main["psnr_db"], "codebook_usage": main["codebook_usage"]}
    if "plain_vq" in measured:
        result["plain_vq_psnr_db"] = measured["plain_vq"]["psnr_db"]
        result["plain_vq_codebook_usage"] = measured["plain_vq"]["codebook_usage"]
    return result


def _lm_metrics(run: "RecipeRun") -> dict:
    history = json.loads((run.out / "lm" / "history.json").read_text())
    best = next(e for e in history["evals"] if e["step"] == history["best_step"])
    return {"heldout_loss": best["loss"], "heldout_ce_per_block": best["ce_per_block"], "best_step": best["step"],
            "steps_trained": history["step"]}


def _add_diagnostics(metrics: dict, run: "RecipeRun", pipe: UniTokPipeline, shards: dict, items: list[Item],
                     train_items: list[Item], classifier) -> None:
    """Split a text→image failure into the first generated step and the refining ones (diagnostics.py)."""
    media_ids = media_ids_of(shards["heldout"], pipe, items)
    metrics["lm"]["first_step_digit_ce_gain"] = first_step_digit_ce_gain(pipe, items, media_ids)
    if pipe.tokenizer_for("image").num_blocks > 2:
        sampler, seed = run.recipe.eval.sampler, run.recipe.seed
        metrics["text_to_image"]["digit_accuracy_given_first_step"] = digit_accuracy_given_first_step(
            pipe, items, media_ids, sampler, classifier, seed)
        metrics["text_to_image"]["digit_accuracy_factorized_first_step"] = digit_accuracy_factorized_first_step(
            pipe, items, train_items, media_ids_of(shards["train"], pipe, train_items), sampler, classifier, seed)


def _generate(pipe: UniTokPipeline, prompts: list[str], cfg, seed: int) -> torch.Tensor:
    chunks = []
    for start in tqdm(range(0, len(prompts), cfg.batch_size), desc="generate"):
        batch = prompts[start:start + cfg.batch_size]
        chunks.append(pipe.generate_media_ids("image", batch, cfg.sampler, seed=seed + start))
    return torch.cat(chunks)


def recon_digit_accuracy(tokenizer: MediaTokenizer, items: list[Item], classifier, world, seed: int) -> float:
    """Classifier accuracy on encode→decode of the held-out real renders: the ceiling that the
    tokenizer puts on ``text_to_image.digit_accuracy``."""
    real = real_renders(items, world.image_size)
    ids = tokenizer.encode([Image.fromarray(r) for r in real], seed=[seed + i for i in range(len(real))])
    reconstructed = np.stack([np.asarray(im) for im in tokenizer.decode(ids)])
    return float((classifier.predict(reconstructed) == np.array([it.scene.digit for it in items])).mean())


def text_to_image_scores(images, items: list[Item], classifier, world) -> dict:
    """Digit/colour/position read from generated images against what their prompts asked for."""
    generated = np.stack([np.asarray(im) for im in images])
    real = real_renders(items, world.image_size)
    asked = [parse_caption(it.caption) for it in items]
    digit_ok = classifier.predict(generated) == np.array([it.scene.digit for it in items])
    colors = [(read_color(g), a["color"]) for g, a in zip(generated, asked) if a["color"]]
    positions = [(read_position(g), a["position"]) for g, a in zip(generated, asked) if a["position"]]
    unseen = np.array([it.unseen_combo for it in items])
    real_feats = classifier.image_features(real)
    return {
        "digit_accuracy": float(digit_ok.mean()),
        "color_accuracy": float(np.mean([got == want for got, want in colors])),
        "position_accuracy": float(np.mean([got == want for got, want in positions])) if positions else None,
        "unseen_combo_digit_accuracy": float(digit_ok[unseen].mean()) if unseen.any() else None,
        "real_digit_accuracy": float((classifier.predict(real) == np.array([it.scene.digit for it in items])).mean()),
        "fid": frechet_distance(classifier.image_features(generated), real_feats),
        "fid_real_floor": frechet_distance(classifier.image_features(_other_real_renders(items, world)), real_feats),
    }


def _other_real_renders(items: list[Item], world) -> np.ndarray:
    """The same scenes drawn with other held-out digit images: the real-vs-real Fréchet floor."""
    pools = digit_pools(world)["heldout"]
    rng = random.Random(world.seed + 1)
    scenes = []
    for it in items:
        choices = [i for i in pools[it.scene.digit] if i != it.scene.digit_index] or pools[it.scene.digit]
        scenes.append(type(it.scene)(**{**vars(it.scene), "digit_index": rng.choice(choices)}))
    return real_renders(scenes, world.image_size)


def exact_copy_fraction(ids: torch.Tensor, train, pipe: UniTokPipeline) -> float:
    """Share of generated clean blocks (k_0, local ids) identical to a clean block of `train` (shards)."""
    tokenizer = pipe.tokenizer_for("image")
    offset = pipe.vocabulary.range(tokenizer.name).offset
    seen = {tuple(row[-tokenizer.num_positions:]) for row in train["media_ids"]}
    clean = (ids[:, -1] + offset).tolist()
    return float(np.mean([tuple(c) in seen for c in clean]))


def _trajectory_picture(pipe: UniTokPipeline, ids: torch.Tensor, items: list[Item]):
    tokenizer = pipe.tokenizer_for("image")
    states = tokenizer.decode_states(ids)  # T+1 tensors (B, 3, H, W), noisiest first
    rows = [[tokenizer.adapter.postprocess(s[i : i + 1])[0] for s in states] for i in range(len(ids))]
    steps = tokenizer.num_blocks - 1
    return trajectory_grid(rows, [it.caption for it in items[: len(ids)]], [f"t={steps - b}" for b in range(len(states))])
