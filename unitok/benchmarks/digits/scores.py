"""Scores of each direction on the digits world: what generated media and captions are read as,
against what their prompts asked for or their items hold, and what a tokenizer keeps of real items."""

from __future__ import annotations

import random

import numpy as np
import torch
from PIL import Image

from unitok.benchmarks.digits.clips import ClipItem, parse_clip_caption, render_clip
from unitok.benchmarks.digits.dtmf import decode_dtmf
from unitok.benchmarks.digits.frechet import frechet_distance
from unitok.benchmarks.digits.images import real_renders
from unitok.benchmarks.digits.readers import read_color, read_direction, read_position
from unitok.benchmarks.digits.scenes import Item, digit_pools, parse_caption
from unitok.benchmarks.digits.tones import ToneItem, parse_tone_caption
from unitok.pipeline import UniTokPipeline
from unitok.tokenizer.adapters.video import Video
from unitok.tokenizer.media_tokenizer import MediaTokenizer


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


def recon_digit_accuracy(tokenizer: MediaTokenizer, items: list[Item], classifier, world, seed: int) -> float:
    """Classifier accuracy on encode→decode of the held-out real renders: the ceiling that the
    tokenizer puts on ``text_to_image.digit_accuracy``."""
    real = real_renders(items, world.image_size)
    ids = tokenizer.encode([Image.fromarray(r) for r in real], seed=[seed + i for i in range(len(real))])
    reconstructed = np.stack([np.asarray(im) for im in tokenizer.decode(ids)])
    return float((classifier.predict(reconstructed) == np.array([it.scene.digit for it in items])).mean())


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


def audio_to_text_scores(captions: list[str], items: list[ToneItem]) -> dict:
    """Digit sequence named by generated captions against the held-out clips they describe."""
    ok = np.array([parse_tone_caption(c) == it.clip.digits for c, it in zip(captions, items)])
    return {"digit_accuracy": float(ok.mean()), "examples": captions[:5]}


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
    return {"digit_direction_accuracy": float((digit_ok & direction_ok).mean()),
            "digit_accuracy": float(digit_ok.mean()),
            "direction_accuracy": float(direction_ok.mean()), "examples": captions[:5]}


def video_recon_scores(tokenizer: MediaTokenizer, items: list[ClipItem], classifier, world, seed: int) -> dict:
    """Digit and direction read from encode→decode of the held-out real clips (the ceiling that the
    tokenizer puts on text→video), beside the same scorer on the real clips (the scorer's own)."""
    real = [Video(render_clip(it.clip, world), world.fps) for it in items]
    reconstructed = tokenizer.decode(tokenizer.encode(real, seed=[seed + i for i in range(len(real))]))
    recon = text_to_video_scores(reconstructed, items, classifier)
    ceiling = text_to_video_scores(real, items, classifier)
    return {"recon_digit_accuracy": recon["digit_accuracy"], "recon_direction_accuracy": recon["direction_accuracy"],
            "recon_digit_direction_accuracy": recon["digit_direction_accuracy"],
            "real_digit_direction_accuracy": ceiling["digit_direction_accuracy"]}
