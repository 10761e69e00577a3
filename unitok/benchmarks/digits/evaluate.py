"""Evaluate a trained model on the digits world: for each modality, what its tokenizer keeps of
held-out items and every direction the model trained, with sample grids and trajectories.

Writes into the run's metrics (`recipe.evaluate`) and, in `WorldEval.out`, ``samples.png`` and
``trajectory.png`` (D(s_t) at every step) for text→image, ``audio_samples/*.wav``,
``audio_samples.png`` and ``audio_trajectory.png`` (spectrograms) for text→audio, and
``video_samples.png``, ``video_samples/*.gif`` and ``video_trajectory.png`` for text→video. Media
are generated with the pipeline's own sampler settings, media→text greedily.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from tqdm.auto import tqdm

from unitok.benchmarks.digits.classifier import load_or_train_digit_classifier
from unitok.benchmarks.digits.clips import build_clip_world, render_clip, video_file
from unitok.benchmarks.digits.diagnostics import (
    caption_loss_matched_vs_shuffled,
    digit_accuracy_given_first_step,
    first_step_digit_ce_gain,
    media_ids_of,
)
from unitok.benchmarks.digits.dtmf import dtmf_roundtrip_accuracy
from unitok.benchmarks.digits.images import image_file
from unitok.benchmarks.digits.scenes import Item, build_digits_world
from unitok.benchmarks.digits.scores import (
    audio_to_text_scores,
    exact_copy_fraction,
    image_to_text_scores,
    recon_digit_accuracy,
    text_to_audio_scores,
    text_to_image_scores,
    text_to_video_scores,
    video_recon_scores,
    video_to_text_scores,
)
from unitok.benchmarks.digits.tones import audio_file, build_tone_world, dtmf_waveform
from unitok.core.config import Config, bounded
from unitok.data.shards import load_shards
from unitok.lm.sampling import SamplerConfig
from unitok.pipeline import MediaPipelineOutput, UniTokPipeline
from unitok.tokenizer.adapters.audio import Audio
from unitok.tokenizer.adapters.video import Video
from unitok.tokenizer.media_tokenizer import MediaTokenizer
from unitok.visualize import labelled_grid, trajectory_grid


@dataclass(frozen=True)
class EvalSection(Config):
    """A recipe's ``eval:`` section."""

    num_samples: int = bounded(500, ge=2)  # held-out items per evaluated direction (a Fréchet distance needs 2)
    batch_size: int = bounded(100, ge=1)
    grid_samples: int = bounded(40, ge=1)
    trajectory_samples: int = bounded(4, ge=1)
    classifier_steps: int = bounded(500, ge=1)
    text_sampler: SamplerConfig = field(default_factory=SamplerConfig.for_text)  # media→text


@dataclass(frozen=True)
class WorldEval:
    """What the digits-world evaluation of a trained model reads, by path, and where it writes."""

    out: Path  # pictures land here
    classifier: Path  # where the digit classifier is kept (trained there on first use)
    shards: dict[str, dict[str, Path]]  # modality -> {"train", "heldout"} shard sets
    heldout_media: dict[str, Path]  # modality -> the held-out media folder (media→text reads files)
    tasks: dict[str, float]  # the model's training tasks and their weights
    evaluation: EvalSection
    seed: int


def evaluate_world(run: WorldEval, pipe: UniTokPipeline, modality: str, world: Any, metrics: dict) -> None:
    """Add `modality`'s digits-world scores to `metrics` (its ``<modality>_tokenizer`` entry and
    one entry per direction the model trained)."""
    WORLD_EVALUATORS[modality](run, pipe, world, metrics)


def _trains(run: WorldEval, task: str) -> bool:
    return run.tasks.get(task, 0) > 0


def _evaluate_images(run: WorldEval, pipe: UniTokPipeline, world, metrics: dict) -> None:
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


def _evaluate_audio(run: WorldEval, pipe: UniTokPipeline, world, metrics: dict) -> None:
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
                                    "real_dtmf_sequence_accuracy":
                                        text_to_audio_scores(real, items)["dtmf_sequence_accuracy"],
                                    "passes": pipe.passes("audio"), "sampler": _sampler_summary(pipe, "audio"),
                                    "num_samples": len(items)}
        MediaPipelineOutput(clips[: cfg.grid_samples], ids).save(run.out / "audio_samples" / "sample.wav")
        n = cfg.grid_samples
        labelled_grid(tokenizer.adapter.picture(tokenizer.decode_tensor(ids[:n])), [it.caption for it in items[:n]],
                      columns=4, scale=2).save(run.out / "audio_samples.png")
        _trajectory_picture(tokenizer, ids[: cfg.trajectory_samples], items).save(run.out / "audio_trajectory.png")
    if _trains(run, "audio_to_text"):
        metrics["audio_to_text"] = _media_to_text_metrics(run, pipe, "audio", items, audio_file, audio_to_text_scores)


def _evaluate_video(run: WorldEval, pipe: UniTokPipeline, world, metrics: dict) -> None:
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
    summary = {"guidance_scale": config.guidance_scale, "temperature": config.temperature,
               "refine_temperature": config.refine_temperature}
    name = pipe.tokenizer_for(modality).name
    if name in pipe.layout.decode:
        schedule = pipe.layout.decode[name]
        summary |= {"groups": list(schedule.groups), "group_sizes": schedule.group_sizes}
    return summary


def _add_diagnostics(metrics: dict, run: WorldEval, pipe: UniTokPipeline, heldout, items: list[Item],
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
        chunks.append(pipe.generate_media_ids(modality, batch, seed=[seed + start + i for i in range(len(batch))]))
    return torch.cat(chunks)


def _media_to_text_metrics(run: WorldEval, pipe: UniTokPipeline, modality: str, items: list, file_of,
                           scores) -> dict:
    """Scores of captions generated for held-out `items` beside the same scorer on the items' own
    captions (``real_*``), and whether captions read the media."""
    heldout = load_shards(run.shards[modality]["heldout"], pipe.vocabulary)
    real = scores([it.caption for it in items], items)
    return {**scores(_describe_heldout(run, pipe, modality, items, file_of), items),
            **{f"real_{key}": value for key, value in real.items() if key != "examples"},
            **caption_loss_matched_vs_shuffled(pipe, modality, heldout, len(items)),
            "num_samples": len(items)}


def _describe_heldout(run: WorldEval, pipe: UniTokPipeline, modality: str, items: list, file_of) -> list[str]:
    """Captions generated for the held-out files of `items` (`file_of(item)`: path in the folder)."""
    cfg = run.evaluation
    files = [run.heldout_media[modality] / file_of(it) for it in items]
    sampler = cfg.text_sampler
    captions = []
    for start in tqdm(range(0, len(files), cfg.batch_size), desc=f"{modality}→text"):
        batch = files[start:start + cfg.batch_size]
        captions += pipe.media_to_text(modality, batch, temperature=sampler.temperature, top_k=sampler.top_k,
                                       top_p=sampler.top_p, gumbel_scale=sampler.gumbel_scale,
                                       seed=[run.seed + start + i for i in range(len(batch))])
    return captions


def _trajectory_picture(tokenizer: MediaTokenizer, ids: torch.Tensor, items: list):
    """D(s_t) for t = T … 0 of a few generated items, as pictures (spectrograms for audio)."""
    states = tokenizer.decode_states(ids)  # T+1 tensors (B, C, …), noisiest first
    rows = [[tokenizer.adapter.picture(s[i : i + 1])[0] for s in states] for i in range(len(ids))]
    steps = tokenizer.num_blocks - 1
    captions = [it.caption for it in items[: len(ids)]]
    return trajectory_grid(rows, captions, [f"t={steps - b}" for b in range(len(states))])


def _video_trajectory(tokenizer: MediaTokenizer, ids: torch.Tensor, caption: str):
    """One generated clip: a row of frames of D(s_t) for every t, noisiest on top."""
    states = tokenizer.decode_states(ids)  # T+1 tensors (1, 3, F, H, W)
    steps = tokenizer.num_blocks - 1
    rows = [[Image.fromarray(f) for f in tokenizer.adapter.postprocess(s)[0].frames] for s in states]
    frames = len(rows[0])
    labels = [f"t={steps - b}: {caption}" if b == 0 else f"t={steps - b}" for b in range(len(rows))]
    return trajectory_grid(rows, labels,
                           [f"frame {f}" for f in range(frames)])
