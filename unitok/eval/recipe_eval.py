"""Evaluate a trained recipe run: tokenizers, LM held-out loss, and every trained direction on digits world.

Evaluation reads a run by paths and sections (`EvalRun`), not through the recipe runner, and
writes ``metrics.json`` (keys as documented in docs/BENCHMARKS.md) with ``samples.png`` and
``trajectory.png`` (D(s_t) at every step) for text→image, ``audio_samples/*.wav``,
``audio_samples.png`` and ``audio_trajectory.png`` (spectrograms) for text→audio, and ``video_samples.png``,
``video_samples/*.gif`` and ``video_trajectory.png`` for text→video. Media are generated with the
pipeline's own sampler settings (`UniTokPipeline.samplers`), media→text greedily.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from ..adapters.audio import Audio
from ..adapters.video import Video
from ..digits_world import Item, build_digits_world, digit_pools, image_file, parse_caption, real_renders
from ..digits_world.clips import ClipItem, build_clip_world, parse_clip_caption, render_clip, video_file
from ..digits_world.tones import ToneItem, audio_file, build_tone_world, dtmf_waveform, parse_tone_caption
from ..media_tokenizer import MediaTokenizer
from ..pipeline import MediaPipelineOutput, UniTokPipeline
from ..sampling import SamplerConfig
from ..shards import load_shards
from ..visualize import labelled_grid, trajectory_grid
from .classifier import load_or_train_digit_classifier
from .diagnostics import (caption_loss_matched_vs_shuffled, digit_accuracy_given_first_step,
                          first_step_digit_ce_gain, media_ids_of)
from .dtmf import decode_dtmf, dtmf_roundtrip_accuracy
from .frechet import frechet_distance
from .readers import read_color, read_direction, read_position


@dataclass(frozen=True)
class EvalSection:
    """A recipe's ``eval:`` section."""

    num_samples: int = 500  # held-out items per evaluated direction
    batch_size: int = 100
    grid_samples: int = 40
    trajectory_samples: int = 4
    classifier_steps: int = 500
    text_sampler: SamplerConfig = field(default_factory=SamplerConfig.for_text)  # media→text


@dataclass(frozen=True)
class EvalRun:
    """What evaluation reads, by path and section, and where it writes."""

    out: Path  # metrics.json and pictures land here
    model: Path  # the saved pipeline
    classifier: Path  # where the digit classifier is kept (trained there on first use)
    lm_history: Path  # the LM stage's history.json
    tokenizer_metrics: dict[str, dict]  # modality -> {variant: held-out metrics} of its tokenizer stage
    tokenizer_names: dict[str, str]  # modality -> the name of its main variant in those metrics
    shards: dict[str, dict[str, Path]]  # modality -> {"train", "heldout"} shard sets
    heldout_media: dict[str, Path]  # modality -> the held-out media folder (media→text reads files)
    worlds: dict[str, Any]  # modality -> its digits-world config; other modalities get tokenizer metrics only
    tasks: dict[str, float]  # the LM's tasks and their weights
    evaluation: EvalSection
    seed: int
    log: Callable[[str], None] = print


def evaluate(run: EvalRun) -> dict:
    pipe = UniTokPipeline.from_pretrained(run.model)
    metrics = {"lm": _lm_metrics(run.lm_history)}
    for modality in run.tokenizer_metrics:
        metrics[f"{modality}_tokenizer"] = _tokenizer_metrics(run.tokenizer_metrics[modality],
                                                              run.tokenizer_names[modality])
        if modality in run.worlds:
            WORLD_EVALUATORS[modality](run, pipe, run.worlds[modality], metrics)
    (run.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    run.log(json.dumps(metrics, indent=2))
    return metrics


def _trains(run: EvalRun, task: str) -> bool:
    return run.tasks.get(task, 0) > 0


def _evaluate_images(run: EvalRun, pipe: UniTokPipeline, world, metrics: dict) -> None:
    cfg = run.evaluation
    items = build_digits_world(world)["heldout"][: cfg.num_samples]
    tokenizer = pipe.tokenizer_for("image")
    classifier = load_or_train_digit_classifier(run.classifier, world, cfg.classifier_steps)
    metrics["image_tokenizer"]["recon_digit_accuracy"] = recon_digit_accuracy(tokenizer, items, classifier, world,
                                                                              run.seed)
    if _trains(run, "text_to_image"):
        shards = {split: load_shards(folder, pipe.vocabulary) for split, folder in run.shards["image"].items()}
        ids = _generate(pipe, "image", [it.caption for it in items], cfg, run.seed)
        images = tokenizer.decode(ids)
        metrics["text_to_image"] = {
            **text_to_image_scores(images, items, classifier, world),
            "exact_copy_fraction": exact_copy_fraction(ids, shards["train"], pipe),
            "passes": pipe.passes("image"),
            "sampler": _sampler_summary(pipe, "image"),
            "num_samples": len(items),
        }
        _add_diagnostics(metrics, run, pipe, shards["heldout"], items, classifier)
        n = cfg.grid_samples
        labelled_grid(images[:n], [it.caption for it in items[:n]]).save(run.out / "samples.png")
        _trajectory_picture(tokenizer, ids[: cfg.trajectory_samples], items).save(run.out / "trajectory.png")
    if _trains(run, "image_to_text"):
        metrics["image_to_text"] = _media_to_text_metrics(run, pipe, "image", items, image_file, image_to_text_scores)


def _evaluate_audio(run: EvalRun, pipe: UniTokPipeline, world, metrics: dict) -> None:
    cfg = run.evaluation
    items = build_tone_world(world)["heldout"][: cfg.num_samples]
    tokenizer = pipe.tokenizer_for("audio")
    metrics["audio_tokenizer"]["dtmf_roundtrip_accuracy"] = dtmf_roundtrip_accuracy(tokenizer, items, run.seed)
    if _trains(run, "text_to_audio"):
        ids = _generate(pipe, "audio", [it.caption for it in items], cfg, run.seed)
        clips = tokenizer.decode(ids)
        rate = tokenizer.adapter.config.sample_rate
        real = [Audio(dtmf_waveform(it.clip, rate), rate) for it in items]
        metrics["text_to_audio"] = {**text_to_audio_scores(clips, items),
                                    "real_dtmf_sequence_accuracy": text_to_audio_scores(real, items)["dtmf_sequence_accuracy"],
                                    "passes": pipe.passes("audio"), "sampler": _sampler_summary(pipe, "audio"),
                                    "num_samples": len(items)}
        MediaPipelineOutput(clips[: cfg.grid_samples], ids).save(run.out / "audio_samples" / "sample.wav")
        n = cfg.grid_samples
        labelled_grid(tokenizer.adapter.picture(tokenizer.decode_tensor(ids[:n])), [it.caption for it in items[:n]],
                      columns=4, scale=2).save(run.out / "audio_samples.png")
        _trajectory_picture(tokenizer, ids[: cfg.trajectory_samples], items).save(run.out / "audio_trajectory.png")
    if _trains(run, "audio_to_text"):
        metrics["audio_to_text"] = _media_to_text_metrics(run, pipe, "audio", items, audio_file, audio_to_text_scores)


def _evaluate_video(run: EvalRun, pipe: UniTokPipeline, world, metrics: dict) -> None:
    cfg = run.evaluation
    items = build_clip_world(world)["heldout"][: cfg.num_samples]
    tokenizer = pipe.tokenizer_for("video")
    classifier = load_or_train_digit_classifier(run.classifier, world.image_world(), cfg.classifier_steps)
    metrics["video_tokenizer"].update(video_recon_scores(tokenizer, items, classifier, world, run.seed))
    if _trains(run, "text_to_video"):
        ids = _generate(pipe, "video", [it.caption for it in items], cfg, run.seed)
        clips = tokenizer.decode(ids)
        real = text_to_video_scores([Video(render_clip(it.clip, world), world.fps) for it in items], items, classifier)
        metrics["text_to_video"] = {**text_to_video_scores(clips, items, classifier),
                                    **{f"real_{key}": real[key] for key in ("digit_accuracy", "direction_accuracy",
                                                                            "digit_direction_accuracy")},
                                    "passes": pipe.passes("video"), "sampler": _sampler_summary(pipe, "video"),
                                    "num_samples": len(items)}
        n = cfg.grid_samples
        labelled_grid(tokenizer.adapter.picture(tokenizer.decode_tensor(ids[:n])), [it.caption for it in items[:n]],
                      columns=2, scale=2).save(run.out / "video_samples.png")
        MediaPipelineOutput(clips[: cfg.trajectory_samples], ids).save(run.out / "video_samples" / "sample.gif")
        _video_trajectory(tokenizer, ids[:1], items[0].caption).save(run.out / "video_trajectory.png")
    if _trains(run, "video_to_text"):
        metrics["video_to_text"] = _media_to_text_metrics(run, pipe, "video", items, video_file, video_to_text_scores)


WORLD_EVALUATORS = {"image": _evaluate_images, "audio": _evaluate_audio, "video": _evaluate_video}


def _sampler_summary(pipe: UniTokPipeline, modality: str) -> dict:
    """The sampler settings the samples were drawn with."""
    config = pipe.sampler_for(modality).config
    return {"guidance_scale": config.guidance_scale, "temperature": config.temperature,
            "refine_temperature": config.refine_temperature, "rounds": list(config.rounds) if config.rounds else None,
            "round_schedule": config.round_schedule, "cell_order": config.cell_order}


def _tokenizer_metrics(measured: dict, main_name: str) -> dict:
    main = measured[main_name]
    result = {"psnr_db": main["psnr_db"], "codebook_usage": main["codebook_usage"]}
    if "plain_vq" in measured:
        result["plain_vq_psnr_db"] = measured["plain_vq"]["psnr_db"]
        result["plain_vq_codebook_usage"] = measured["plain_vq"]["codebook_usage"]
    return result


def _lm_metrics(history_path: Path) -> dict:
    history = json.loads(history_path.read_text())
    best = next((e for e in history["evals"] if e["step"] == history["best_step"]), None)
    if best is None:  # a mixture without held-out shard sets
        return {"heldout_loss": None, "steps_trained": history["step"]}
    return {"heldout_loss": best["loss"], "heldout_ce_per_block": best["ce_per_block"],
            "heldout_loss_per_task": best["loss_per_task"], "best_step": best["step"], "steps_trained": history["step"]}


def _add_diagnostics(metrics: dict, run: EvalRun, pipe: UniTokPipeline, heldout, items: list[Item],
                     classifier) -> None:
    """Where text→image fails: does the LM read the digit, and do the refining blocks keep it (diagnostics.py)."""
    media_ids = media_ids_of(heldout, pipe, items)
    metrics["lm"]["first_step_digit_ce_gain"] = first_step_digit_ce_gain(pipe, items, media_ids)
    if pipe.tokenizer_for("image").num_blocks > 2:
        metrics["text_to_image"]["digit_accuracy_given_first_step"] = digit_accuracy_given_first_step(
            pipe, items, media_ids, classifier, run.seed)


def _generate(pipe: UniTokPipeline, modality: str, prompts: list[str], cfg: EvalSection, seed: int) -> torch.Tensor:
    chunks = []
    for start in tqdm(range(0, len(prompts), cfg.batch_size), desc=f"text→{modality}"):
        batch = prompts[start:start + cfg.batch_size]
        chunks.append(pipe.generate_media_ids(modality, batch, seed=seed + start))
    return torch.cat(chunks)


def _media_to_text_metrics(run: EvalRun, pipe: UniTokPipeline, modality: str, items: list, file_of,
                           scores) -> dict:
    """Scores of captions generated for held-out `items` beside the same scorer on the items' own
    captions (``real_*``), and whether captions read the media."""
    heldout = load_shards(run.shards[modality]["heldout"], pipe.vocabulary)
    real = scores([it.caption for it in items], items)
    return {**scores(_describe_heldout(run, pipe, modality, items, file_of), items),
            **{f"real_{key}": value for key, value in real.items() if key != "examples"},
            **caption_loss_matched_vs_shuffled(pipe, modality, heldout, len(items)),
            "num_samples": len(items)}


def _describe_heldout(run: EvalRun, pipe: UniTokPipeline, modality: str, items: list, file_of) -> list[str]:
    """Captions generated for the held-out files of `items` (`file_of(item)`: path in the folder)."""
    cfg = run.evaluation
    files = [run.heldout_media[modality] / file_of(it) for it in items]
    sampler = cfg.text_sampler
    captions = []
    for start in tqdm(range(0, len(files), cfg.batch_size), desc=f"{modality}→text"):
        captions += pipe.media_to_text(modality, files[start:start + cfg.batch_size], temperature=sampler.temperature,
                                       top_k=sampler.top_k, top_p=sampler.top_p, gumbel_scale=sampler.gumbel_scale,
                                       seed=run.seed + start)
    return captions


def image_to_text_scores(captions: list[str], items: list[Item]) -> dict:
    """Digit and colour read from generated captions against the held-out scenes they describe."""
    read = [parse_caption(c) for c in captions]
    digit_ok = np.array([r["digit"] == it.scene.digit for r, it in zip(read, items)])
    color_ok = np.array([r["color"] == it.scene.color for r, it in zip(read, items)])
    return {"digit_color_accuracy": float((digit_ok & color_ok).mean()), "digit_accuracy": float(digit_ok.mean()),
            "color_accuracy": float(color_ok.mean()), "examples": captions[:5]}


def text_to_audio_scores(clips, items: list[ToneItem]) -> dict:
    """Exact dialled sequence read back by the Goertzel decoder, overall and on unseen digit pairs."""
    ok = np.array([decode_dtmf(c.samples, c.sample_rate) == it.clip.digits for c, it in zip(clips, items)])
    unseen = np.array([it.unseen_combo for it in items])
    return {"dtmf_sequence_accuracy": float(ok.mean()),
            "unseen_pair_accuracy": float(ok[unseen].mean()) if unseen.any() else None}


def text_to_video_scores(clips, items: list[ClipItem], classifier) -> dict:
    """Digit by a majority of per-frame classifier reads, direction from the ink centroid's path,
    colour from the middle frame, against what the prompts asked for."""
    digits = np.array([np.bincount(classifier.predict(c.frames), minlength=10).argmax() for c in clips])
    digit_ok = digits == np.array([it.clip.digit for it in items])
    direction_ok = np.array([read_direction(c.frames) == it.clip.direction for c, it in zip(clips, items)])
    color_ok = np.array([read_color(c.frames[len(c.frames) // 2]) == it.clip.color for c, it in zip(clips, items)])
    unseen = np.array([it.unseen_combo for it in items])
    return {"digit_accuracy": float(digit_ok.mean()), "direction_accuracy": float(direction_ok.mean()),
            "digit_direction_accuracy": float((digit_ok & direction_ok).mean()),
            "color_accuracy": float(color_ok.mean()),
            "unseen_combo_direction_accuracy": float(direction_ok[unseen].mean()) if unseen.any() else None}


def video_to_text_scores(captions: list[str], items: list[ClipItem]) -> dict:
    """Digit and direction named by generated captions against the held-out clips they describe."""
    read = [parse_clip_caption(c) for c in captions]
    digit_ok = np.array([r["digit"] == it.clip.digit for r, it in zip(read, items)])
    direction_ok = np.array([r["direction"] == it.clip.direction for r, it in zip(read, items)])
    return {"digit_direction_accuracy": float((digit_ok & direction_ok).mean()), "digit_accuracy": float(digit_ok.mean()),
            "direction_accuracy": float(direction_ok.mean()), "examples": captions[:5]}


def audio_to_text_scores(captions: list[str], items: list[ToneItem]) -> dict:
    """Digit sequence named by generated captions against the held-out clips they describe."""
    ok = np.array([parse_tone_caption(c) == it.clip.digits for c, it in zip(captions, items)])
    return {"digit_accuracy": float(ok.mean()), "examples": captions[:5]}


def recon_digit_accuracy(tokenizer: MediaTokenizer, items: list[Item], classifier, world, seed: int) -> float:
    """Classifier accuracy on encode→decode of the held-out real renders: the ceiling that the
    tokenizer puts on ``text_to_image.digit_accuracy``."""
    real = real_renders(items, world.image_size)
    ids = tokenizer.encode([Image.fromarray(r) for r in real], seed=[seed + i for i in range(len(real))])
    reconstructed = np.stack([np.asarray(im) for im in tokenizer.decode(ids)])
    return float((classifier.predict(reconstructed) == np.array([it.scene.digit for it in items])).mean())


def video_recon_scores(tokenizer: MediaTokenizer, items: list[ClipItem], classifier, world, seed: int) -> dict:
    """Digit and direction read from encode→decode of the held-out real clips (the ceiling that the
    tokenizer puts on text→video), beside the same scorer on the real clips (the scorer's own)."""
    real = [Video(render_clip(it.clip, world), world.fps) for it in items]
    reconstructed = tokenizer.decode(tokenizer.encode(real, seed=[seed + i for i in range(len(real))]))
    recon, ceiling = text_to_video_scores(reconstructed, items, classifier), text_to_video_scores(real, items, classifier)
    return {"recon_digit_accuracy": recon["digit_accuracy"], "recon_direction_accuracy": recon["direction_accuracy"],
            "recon_digit_direction_accuracy": recon["digit_direction_accuracy"],
            "real_digit_direction_accuracy": ceiling["digit_direction_accuracy"]}


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


def _trajectory_picture(tokenizer: MediaTokenizer, ids: torch.Tensor, items: list):
    """D(s_t) for t = T … 0 of a few generated items, as pictures (spectrograms for audio)."""
    states = tokenizer.decode_states(ids)  # T+1 tensors (B, C, …), noisiest first
    rows = [[tokenizer.adapter.picture(s[i : i + 1])[0] for s in states] for i in range(len(ids))]
    steps = tokenizer.num_blocks - 1
    return trajectory_grid(rows, [it.caption for it in items[: len(ids)]], [f"t={steps - b}" for b in range(len(states))])


def _video_trajectory(tokenizer: MediaTokenizer, ids: torch.Tensor, caption: str):
    """One generated clip: a row of frames of D(s_t) for every t, noisiest on top."""
    states = tokenizer.decode_states(ids)  # T+1 tensors (1, 3, F, H, W)
    steps = tokenizer.num_blocks - 1
    rows = [[Image.fromarray(f) for f in tokenizer.adapter.postprocess(s)[0].frames] for s in states]
    frames = len(rows[0])
    return trajectory_grid(rows, [f"t={steps - b}: {caption}" if b == 0 else f"t={steps - b}" for b in range(len(rows))],
                           [f"frame {f}" for f in range(frames)])
