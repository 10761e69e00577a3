"""A media tokenizer: adapter + autoencoder + RDPM quantizer, with named conversions.

    encode(media, seed)  -> ids (B, T+1, N) local code ids, blocks [k_T … k_0]
    decode(ids)          -> media objects (PIL images, …)
    decode_states(ids)   -> D(s_t) for every t, noise to clean (trajectory pictures)

Saved like a diffusers component: ``config.json`` + ``model.safetensors``.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import torch
from einops import rearrange
from safetensors.torch import load_file, save_file
from torch import nn

from unitok.core.atomic import write_text_atomic
from unitok.core.config import Config, from_dict, load_config, to_dict
from unitok.core.errors import UnitokError
from unitok.core.seeds import item_generators, item_seeds
from unitok.tokenizer.adapters import (
    AudioAdapter,
    AudioConfig,
    ImageAdapter,
    ImageConfig,
    MediaAdapter,
    VideoAdapter,
    VideoConfig,
)
from unitok.tokenizer.autoencoder import Autoencoder, AutoencoderConfig
from unitok.tokenizer.rdpm import QuantizerConfig, QuantizerOutput, RDPMQuantizer
from unitok.tokenizer.vocabulary import MediaLayout

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT = 2  # of config.json and the weights; format 1 (unitok 0.2) named T `steps` and kept a codebook per step


# A modality is an adapter class plus a TokenizerSpec section named after it.
ADAPTERS: dict[str, type[MediaAdapter]] = {"image": ImageAdapter, "audio": AudioAdapter, "video": VideoAdapter}


@dataclass(frozen=True)
class TokenizerSpec(Config):
    """A media tokenizer's architecture (``tokenizers/*.yaml``)."""

    modality: Literal["image", "audio", "video"]
    name: str = "image"  # its range name in the vocabulary
    image: ImageConfig | None = None
    audio: AudioConfig | None = None
    video: VideoConfig | None = None
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)

    def rules(self):
        adapter = ADAPTERS[self.modality]
        yield (getattr(self, self.modality) is not None, self.modality,
               f"the {self.modality} tokenizer needs this section")
        yield (self.autoencoder.in_channels == adapter.channels, "autoencoder.in_channels",
               f"{self.modality} tensors have {adapter.channels} channel(s), got {self.autoencoder.in_channels}")
        time_axis = self.autoencoder.temporal_levels or self.autoencoder.temporal_patch_size > 1
        yield (not time_axis or adapter.dims == 3, "autoencoder.temporal_levels",
               f"temporal_levels and temporal_patch_size need frames; {self.modality} tensors have none")
        yield (not self.autoencoder.per_frame or adapter.dims == 3, "autoencoder.per_frame",
               f"codes the frames of a clip; {self.modality} tensors have none")
        if getattr(self, self.modality) is not None and (not time_axis or adapter.dims == 3):
            shape = build_adapter(self).input_shape[1:]
            factors = self.autoencoder.downsample_factors(adapter.dims)
            yield (all(size % f == 0 for size, f in zip(shape, factors)), self.modality,
                   f"the input {'x'.join(map(str, shape))} must divide by the autoencoder's downsampling "
                   f"{'x'.join(map(str, factors))} (patch_size · 2^levels)")

    @property
    def latent_shape(self) -> tuple[int, ...]:
        """The latent grid of one item: (H, W) of cells, or (frames, H, W) for video."""
        adapter = build_adapter(self)
        factors = self.autoencoder.downsample_factors(adapter.dims)
        return tuple(size // f for size, f in zip(adapter.input_shape[1:], factors))  # `rules`: they divide

    @property
    def num_positions(self) -> int:
        """N: latent cells per block."""
        return math.prod(self.latent_shape)

    @classmethod
    def load(cls, path: str | Path) -> "TokenizerSpec":
        return load_config(path, cls)


def build_adapter(spec: TokenizerSpec) -> MediaAdapter:
    """The spec's adapter, configured by its section of the same name (``image:``, ``audio:``)."""
    return ADAPTERS[spec.modality](getattr(spec, spec.modality))


def block_sizes(tokenizers: dict[str, "MediaTokenizer"]) -> dict[str, tuple[int, tuple[int, ...]]]:
    """Each media range's (T, latent shape): noise steps and the shape of a block's cells (what a
    stream layout must fit)."""
    return {name: (t.quantizer.noise_steps, tuple(t.latent_shape)) for name, t in tokenizers.items()}


def frames_tokenizer(spec: TokenizerSpec, image: "MediaTokenizer") -> "MediaTokenizer":
    """The video tokenizer of `spec` (a per-frame autoencoder) that codes every frame with the
    weights of the trained `image` tokenizer: a frame's codes are that image's codes, so what a
    model learns of either serves both (`recipe.schema.TokenizerSection.frames_from`)."""
    tokenizer = MediaTokenizer(spec)
    missing, unexpected = tokenizer.load_state_dict(image.state_dict(), strict=False)
    if missing or unexpected:
        raise UnitokError(f"the {image.name} tokenizer's weights do not fit the frames of {spec.name} "
                          f"(missing {missing}, unexpected {unexpected})")
    return tokenizer.eval()


class MediaTokenizer(nn.Module):
    def __init__(self, spec: TokenizerSpec):
        super().__init__()
        self.spec = spec
        self.adapter = build_adapter(spec)
        dims = self.adapter.dims
        self.autoencoder = Autoencoder(spec.autoencoder, dims)
        self.quantizer = RDPMQuantizer(spec.quantizer, spec.autoencoder.latent_channels)
        self.latent_shape, self.num_positions = spec.latent_shape, spec.num_positions  # N: latent cells per block

    # --- sizes ---------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def modality(self) -> str:
        return self.spec.modality

    @property
    def num_blocks(self) -> int:
        """T + 1 blocks per item."""
        return self.quantizer.num_blocks

    @property
    def codebook_size(self) -> int:
        return self.spec.quantizer.codebook_size

    @property
    def device(self) -> torch.device:
        return self.quantizer.codebook.device

    def layout(self) -> MediaLayout:
        """What the shared vocabulary records of this tokenizer."""
        return MediaLayout(self.name, self.modality, self.codebook_size, self.content_hash(),
                           self.num_blocks, self.num_positions, self.spec.autoencoder.latent_channels)

    # --- tensors -------------------------------------------------------------------------------
    def latent(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, *spatial) -> z (B, C, N)."""
        return rearrange(self.autoencoder.encode(x), "b c ... -> b c (...)")

    def draw_noise(self, batch: int, seeds: Sequence[int | torch.Generator] | None = None) -> torch.Tensor:
        """ε of shape (B, C, N): item i's from `seeds[i]` (a seed, or a generator that goes on from
        where it stands; `core.seeds`), so an item's tokens depend only on the item and its seed,
        never on what else is in the batch. Without seeds (training), from torch's global RNG."""
        shape = (self.spec.autoencoder.latent_channels, self.num_positions)
        if seeds is None:
            return torch.randn(batch, *shape, device=self.device)
        if len(seeds) != batch:
            raise UnitokError(f"got {len(seeds)} seeds for a batch of {batch}")
        return torch.stack([torch.randn(shape, generator=g) for g in item_generators(seeds)]).to(self.device)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, QuantizerOutput]:
        """Training pass: reconstruction through the straight-through s_0, and the quantizer output."""
        z = self.latent(x)
        out = self.quantizer(z, self.draw_noise(x.shape[0]))
        z_q = z + (out.s0_BCN - z).detach()  # straight-through: D sees s_0, gradients reach E
        return self.decode_latent(z_q), out

    def decode_latent(self, z_BCN: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.decode(z_BCN.reshape(*z_BCN.shape[:2], *self.latent_shape))

    @torch.no_grad()
    def encode_tensor(self, x: torch.Tensor, seeds: Sequence[int | torch.Generator]) -> torch.Tensor:
        """Preprocessed batch (B, C_in, …) -> ids (B, T+1, N); deterministic given the seeds (one
        per item, as `draw_noise` takes them)."""
        z = self.latent(x.to(self.device))
        return self.quantizer(z, self.draw_noise(x.shape[0], seeds)).ids_BTN

    @torch.no_grad()
    def decode_tensor(self, ids_BTN: torch.Tensor) -> torch.Tensor:
        return self.decode_latent(self.quantizer.dequantize(ids_BTN.to(self.device)))

    @torch.no_grad()
    def decode_states(self, ids_BTN: torch.Tensor) -> list[torch.Tensor]:
        """D(s_t) for t = T … 0: the item at every noise level, noisiest first."""
        return [self.decode_latent(s) for s in self.quantizer.states(ids_BTN.to(self.device))]

    # --- media ---------------------------------------------------------------------------------
    def encode(self, media: Any | Sequence[Any], seed: int | Sequence[int] = 0) -> torch.Tensor:
        """Media object(s) or file path(s) -> local ids (B, T+1, N); `seed` is every item's noise
        seed, or a list of one per item."""
        items = list(media) if isinstance(media, (list, tuple)) else [media]
        return self.encode_tensor(self.to_batch(items), item_seeds(seed, len(items)))

    def to_batch(self, media: Sequence[Any]) -> torch.Tensor:
        """Media objects or file paths -> the autoencoder's input batch (B, C_in, …)."""
        if not media:
            raise UnitokError("media: expected at least one item")
        return torch.stack([self.adapter.to_tensor(m) for m in media])

    def decode(self, ids_BTN: torch.Tensor) -> list[Any]:
        """Local ids (B, T+1, N) -> media objects."""
        if ids_BTN.dim() == 2:
            ids_BTN = ids_BTN.unsqueeze(0)
        return self.adapter.postprocess(self.decode_tensor(ids_BTN))

    # --- persistence ---------------------------------------------------------------------------
    def hashed_spec(self) -> dict:
        """The spec as `content_hash` takes it: without absent modality sections (None) and without
        settings added later that hold their defaults (`core.config.to_dict`), so that a new
        modality or setting keeps every saved tokenizer's hash."""
        return {key: value for key, value in to_dict(self.spec, stable=True).items() if value is not None}

    def content_hash(self) -> str:
        """Hash of config and weights: shards and vocabularies record it to detect a swapped tokenizer."""
        h = hashlib.sha256(json.dumps(self.hashed_spec(), sort_keys=True).encode())
        for key, tensor in sorted(self.state_dict().items()):
            h.update(key.encode())
            h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    def save_pretrained(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CONFIG_NAME).unlink(missing_ok=True)  # written last: a killed save does not load
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(directory / WEIGHTS_NAME))
        config = {"unitok_class": type(self).__name__, "format": FORMAT, "content_hash": self.content_hash(),
                  **to_dict(self.spec)}
        write_text_atomic(directory / CONFIG_NAME, json.dumps(config, indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "MediaTokenizer":
        directory = Path(directory)
        config_path = directory / CONFIG_NAME
        if not config_path.is_file():
            raise FileNotFoundError(f"{directory}: no {CONFIG_NAME}; not a saved MediaTokenizer")
        config = json.loads(config_path.read_text())
        config.pop("unitok_class", None)
        saved_format = config.pop("format", 1)
        if saved_format != FORMAT:
            remedy = "upgrade unitok" if saved_format > FORMAT else "train it again with this unitok"
            raise UnitokError(f"{config_path}: a tokenizer of format {saved_format}; this unitok reads format "
                              f"{FORMAT}: {remedy}")
        expected_hash = config.pop("content_hash", None)
        tokenizer = cls(from_dict(TokenizerSpec, config, source=str(config_path)))
        tokenizer.load_state_dict(load_file(str(directory / WEIGHTS_NAME)))
        tokenizer.eval()
        if expected_hash is not None and tokenizer.content_hash() != expected_hash:
            raise UnitokError(f"{directory}: weights do not match the content hash in {CONFIG_NAME}")
        return tokenizer
