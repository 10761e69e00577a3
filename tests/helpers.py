"""What both test tiers build on: tiny specs, vocabularies, quantizers and recipes."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from unitok.core.config import from_dict
from unitok.lm.model import ModelSpec
from unitok.tokenizer.media_tokenizer import TokenizerSpec
from unitok.tokenizer.rdpm import QuantizerConfig, RDPMQuantizer
from unitok.tokenizer.vocabulary import MediaLayout, Vocabulary

TINY_SPEC = {
    "modality": "image",
    "name": "image",
    "image": {"size": 32},
    "autoencoder": {"patch_size": 2, "channels": [16, 32], "latent_channels": 8},
    "quantizer": {"noise_steps": 4, "codebook_size": 64},
}
TINY_AUDIO_SPEC = {
    "modality": "audio",
    "name": "audio",
    "audio": {"sample_rate": 8000, "frames": 32, "n_fft": 256, "hop_length": 128, "n_mels": 16,
              "f_min": 500.0, "f_max": 1700.0, "griffin_lim_iters": 4},
    "autoencoder": {"in_channels": 1, "patch_size": 2, "channels": [16], "latent_channels": 4},
    "quantizer": {"noise_steps": 2, "codebook_size": 32},
}
TINY_VIDEO_SPEC = {
    "modality": "video",
    "name": "video",
    "video": {"frames": 4, "size": 32},
    "autoencoder": {"patch_size": 2, "channels": [16, 16], "temporal_levels": 1, "latent_channels": 4},
    "quantizer": {"noise_steps": 2, "codebook_size": 32},
}
TINY_MODEL = ModelSpec(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128, max_position_embeddings=512)


def image_layout(tokenizer_hash: str = "imagehash") -> MediaLayout:
    """An image range of 64 codes, for spans of up to 5 blocks of 64 positions, C = 4."""
    return MediaLayout("image", "image", 64, tokenizer_hash, num_blocks=5, num_positions=64, latent_channels=4)


def _image_quantizer() -> RDPMQuantizer:
    """A random quantizer matching `image_layout`, for the running states of its codes."""
    torch.manual_seed(1234)
    return RDPMQuantizer(QuantizerConfig(noise_steps=4, codebook_size=64), latent_channels=4)


IMAGE_QUANTIZER = _image_quantizer()


def span_inputs(vocab: Vocabulary, blocks: torch.Tensor, name: str = "image", decided: bool = True) -> torch.Tensor:
    """State inputs (b, N, 8) of a span's global ids (b, N) of range `name` (C = 4) from
    `IMAGE_QUANTIZER`, every cell decided (a context or a condition) or every cell undecided (a query)."""
    local = vocab.to_local(name, blocks)[None]
    return IMAGE_QUANTIZER.block_inputs(local)[0 if decided else 1][0]


def tiny_tokenizer_spec(**quantizer) -> TokenizerSpec:
    return from_dict(TokenizerSpec, {**TINY_SPEC, "quantizer": {**TINY_SPEC["quantizer"], **quantizer}})


def write_tiny_recipe(folder: Path, **overrides) -> Path:
    """A recipe small enough to run every stage in about a minute on 2 CPU cores."""
    spec_path = folder / "tiny-tokenizer.yaml"
    spec_path.write_text(yaml.safe_dump(TINY_SPEC))
    model_path = folder / "tiny-model.yaml"
    model_path.write_text(yaml.safe_dump({"hidden_size": 64, "num_layers": 2, "num_heads": 2,
                                          "intermediate_size": 128, "max_position_embeddings": 512}))
    recipe = {
        "name": "tiny",
        "output_dir": str(folder / "run"),
        "data": {"image": {"digits_world": {"train_scenes": 160, "heldout_scenes": 24}}},
        "tokenizers": {"image": {"spec": str(spec_path),
                                 "training": {"steps": 30, "batch_size": 32, "warmup_steps": 5}}},
        "text_bpe": {"vocab_size": 300},
        "shards": {"items_per_shard": 64},
        "model": str(model_path),
        "layout": {"decode": {"image": {"groups": [2, 1, 1, 1]}}},
        "lm": {"steps": 6, "batch_size": 8, "warmup_steps": 2, "checkpoint_every": 3, "eval_every": 3, "eval_items": 8},
        "eval": {"num_samples": 8, "batch_size": 8, "grid_samples": 8, "trajectory_samples": 2, "classifier_steps": 30},
    }
    for key, value in overrides.items():
        recipe[key] = {**recipe.get(key, {}), **value} if isinstance(value, dict) else value
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def write_tiny_multimodal_recipe(folder: Path, **overrides) -> Path:
    """The tiny recipe with audio and video tokenizers and both directions for every modality."""
    path = write_tiny_recipe(folder)
    recipe = yaml.safe_load(path.read_text())
    for modality, spec, world in (("audio", TINY_AUDIO_SPEC, {"train_clips": 64, "heldout_clips": 8}),
                                  ("video", TINY_VIDEO_SPEC, {"train_clips": 64, "heldout_clips": 8, "frames": 4})):
        spec_path = folder / f"tiny-{modality}.yaml"
        spec_path.write_text(yaml.safe_dump(spec))
        recipe["data"][modality] = {"digits_world": world}
        recipe["tokenizers"][modality] = {"spec": str(spec_path), "plain_vq_baseline": False,
                                          "training": {"steps": 20, "batch_size": 16, "warmup_steps": 5}}
    recipe["lm"]["tasks"] = {"text_to_image": 1.0, "image_to_text": 0.5, "text_to_audio": 1.0, "audio_to_text": 0.5,
                             "text_to_video": 1.0, "video_to_text": 0.5, "text": 0.2}
    recipe["lm"]["loss_weights"] = {"audio": 2.0}
    recipe["layout"]["readout_patch"] = 3
    recipe["samplers"] = {"audio": {"guidance_scale": 2.0, "top_k": 8}}
    for key, value in overrides.items():
        recipe[key] = {**recipe.get(key, {}), **value} if isinstance(value, dict) else value
    path.write_text(yaml.safe_dump(recipe))
    return path


