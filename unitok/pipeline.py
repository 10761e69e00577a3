"""`UniTokPipeline`: the transformer, text BPE, media tokenizers and vocabulary as one object.

Saved like a diffusers pipeline: an index file plus one subfolder per component::

    model/
      model_index.json         each component's [library, class], the unitok version and format,
                               the transformer's stream layout (media order, reader,
                               each modality's decode schedule) and each modality's sampler settings
      vocabulary.json          the shared vocabulary manifest
      transformer/             transformers `save_pretrained` (config.json + model.safetensors), and
                               media_modules.safetensors for a layout with conv readers or code
                               geometry (`lm.model.media_modules`)
      text_tokenizer/          sentencepiece model + config.json
      image_tokenizer/         config.json + model.safetensors (one folder per media tokenizer)
      audio_tokenizer/
      video_tokenizer/
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import torch
from transformers import LlamaForCausalLM

from unitok._version import __version__
from unitok.core.atomic import write_text_atomic
from unitok.core.config import from_dict, to_dict
from unitok.core.errors import UnitokError
from unitok.core.seeds import item_generators, item_seeds
from unitok.data.tasks import task_modality
from unitok.hub import local_folder, push_folder, write_model_card
from unitok.lm.code_geometry import CodeGeometry
from unitok.lm.documents import readout_states
from unitok.lm.layout import StreamLayout
from unitok.lm.model import StreamModel, media_modules, tied_code_ranges
from unitok.lm.reader import ConvReader
from unitok.lm.sampling import MediaSampler, SamplerConfig, media_sampler, sample_text
from unitok.lm.streams import StreamBuilder
from unitok.tokenizer.adapters import MediaAdapter
from unitok.tokenizer.media_tokenizer import MediaTokenizer, block_sizes
from unitok.tokenizer.text_bpe import TextBPE
from unitok.tokenizer.vocabulary import Vocabulary, VocabularyError

INDEX_NAME = "model_index.json"
# format 3 did not record the trained tasks; 2 (unitok 0.2) kept the decode schedule in the samplers;
# 1 was unitok_pipeline.json
INDEX_FORMAT = 4
Seed = int | Sequence[int]  # one seed for every item, or one per item (`core.seeds.item_seeds`)


@dataclass
class MediaPipelineOutput:
    """Generated media (PIL images, `Audio` or `Video` clips), one per prompt, and their code ids."""

    media: list[Any]
    token_ids: torch.Tensor  # (B, num_blocks, N) local code ids, blocks [k_T … k_0]
    adapter: MediaAdapter | None = None  # the modality's: which file names `save` takes

    @property
    def images(self) -> list[Any]:
        return self.media

    @property
    def audios(self) -> list[Any]:
        return self.media

    @property
    def videos(self) -> list[Any]:
        return self.media

    def save(self, path: str | Path) -> list[Path]:
        """Save to `path` (one item) or to NAME-0.ext, NAME-1.ext, … (several); returns the paths."""
        path = Path(path)
        if self.adapter is not None:
            self.adapter.check_writable(path)
        paths = [path] if len(self.media) == 1 else [path.with_name(f"{path.stem}-{i}{path.suffix}")
                                                     for i in range(len(self.media))]
        for item, target in zip(self.media, paths):
            target.parent.mkdir(parents=True, exist_ok=True)
            item.save(target)
        return paths


class UniTokPipeline:
    """`layout` is the transformer's stream layout (`lm.layout.StreamLayout`: media order, reader
    and each modality's decode schedule, which it was trained with); `readers` and `code_heads` the
    media modules the layout asks for (`lm.model.media_modules`, trained with it); `tasks` the
    directions it was trained for (`text_to_image`, `image_to_text`, …; None: any its tokenizers
    allow); `samplers` holds each modality's free sampler settings (`SamplerConfig`: guidance,
    temperatures, …), saved with the pipeline; a call's own options override them for that call.

    Seeds: a call's `seed` is every item's seed, or a list of one per item. Each item has its own
    generator: its noise ε, then its samples, are drawn from it in that order, so an item's output
    depends on its prompt (or media), its seed and the settings only, whatever else is in its batch."""

    def __init__(self, transformer: LlamaForCausalLM, text_tokenizer: TextBPE,
                 media_tokenizers: dict[str, MediaTokenizer], vocabulary: Vocabulary, layout: StreamLayout,
                 samplers: dict[str, SamplerConfig] | None = None, tasks: Sequence[str] | None = None,
                 readers: dict[str, ConvReader] | None = None, code_heads: dict[str, CodeGeometry] | None = None):
        self.layout = layout.fitted(block_sizes(media_tokenizers))
        tied = tied_code_ranges(self.layout, vocabulary, media_tokenizers)
        self.model = StreamModel(transformer, readers, code_heads, tied).eval()
        self.transformer = self.model.transformer
        self.text_tokenizer = text_tokenizer
        self.media_tokenizers = media_tokenizers
        self.vocabulary = vocabulary
        self.samplers = dict(samplers or {})
        self.tasks = None if tasks is None else tuple(tasks)
        self._check_components()

    def _check_components(self) -> None:
        """Every tokenizer must be the one the vocabulary was made with, fit the embedding, and fit
        the layout (a decode schedule per generated block, read-out and query rows of its neighbourhoods)."""
        text_range = self.vocabulary.range("text")
        if text_range.tokenizer_hash != self.text_tokenizer.content_hash():
            raise VocabularyError("text tokenizer does not match the vocabulary manifest")
        for name, tokenizer in self.media_tokenizers.items():
            r = self.vocabulary.range(name)
            if r.tokenizer_hash != tokenizer.content_hash() or r.size != tokenizer.codebook_size:
                raise VocabularyError(f"media tokenizer {name!r} does not match the vocabulary manifest")
            channels = tokenizer.spec.autoencoder.latent_channels
            if self.vocabulary.readout_state(name).size != self.layout.readout_width(channels):
                raise VocabularyError(f"the vocabulary has no read-out rows for {name!r} read as the layout says "
                                      f"(reader {to_dict(self.layout.reader)}, "
                                      f"readout_patch {self.layout.readout_patch})")
            if self.vocabulary.query_state(name).size != self.layout.query_width(channels):
                raise VocabularyError(f"the vocabulary has no query rows for {name!r} drawn as the layout says "
                                      f"(query_patch {self.layout.query_patch})")
        needed = set(self.media_tokenizers) if self.layout.reader.kind == "conv" else set()
        if set(self.model.readers) != needed:
            raise UnitokError(f"readers: a {self.layout.reader.kind} layout needs conv readers for {sorted(needed)}, "
                              f"got {sorted(self.model.readers)}")
        needed = set(self.media_tokenizers) - set(self.layout.tied_codes) if self.layout.code_geometry else set()
        if set(self.model.code_heads) != needed:
            raise UnitokError(f"code_heads: a layout with code_geometry {self.layout.code_geometry} needs code "
                              f"geometry heads for {sorted(needed)}, got {sorted(self.model.code_heads)}")
        if self.transformer.config.vocab_size < self.vocabulary.size:
            raise VocabularyError(
                f"transformer has {self.transformer.config.vocab_size} embeddings, "
                f"vocabulary needs {self.vocabulary.size}"
            )
        for modality in self.samplers:
            self.tokenizer_for(modality)  # refuses settings of a modality the pipeline lacks
        for task in self.tasks or ():
            if task_modality(task) is not None:
                self.tokenizer_for(task_modality(task))

    def require_task(self, task: str) -> None:
        """Refuse a direction the transformer was not trained for: it would produce nonsense."""
        if self.tasks is not None and task not in self.tasks:
            trained = ", ".join(t for t in self.tasks if t != "text") or "no direction"
            raise UnitokError(f"this model was not trained for {task} (it was trained for {trained})")

    @property
    def max_positions(self) -> int:
        return self.transformer.config.max_position_embeddings

    def _require_positions(self, needed: int, what: str) -> None:
        if needed > self.max_positions:
            raise UnitokError(f"{what} needs {needed} positions; this model has {self.max_positions}")

    # --- devices -------------------------------------------------------------------------------
    def to(self, device: str | torch.device) -> "UniTokPipeline":
        self.model.to(device)
        for tokenizer in self.media_tokenizers.values():
            tokenizer.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return self.transformer.device

    # --- generation ----------------------------------------------------------------------------
    def tokenizer_for(self, modality: str) -> MediaTokenizer:
        return find_tokenizer(self.media_tokenizers, modality)

    def modality_of_file(self, path: str | Path) -> str:
        """The modality of this pipeline's tokenizer that reads files like `path` (by extension)."""
        suffix = Path(path).suffix.lower()
        for tokenizer in self.media_tokenizers.values():
            if suffix in tokenizer.adapter.file_extensions:
                return tokenizer.modality
        known = sorted({e for t in self.media_tokenizers.values() for e in t.adapter.file_extensions})
        raise UnitokError(f"{path}: no tokenizer of this pipeline reads {suffix or 'extension-less'} files ({known})")

    def encode_prompt(self, prompt: str) -> list[int]:
        local = torch.tensor(self.text_tokenizer.encode(prompt), dtype=torch.long)
        return self.vocabulary.to_global("text", local).tolist()

    def sampler_for(self, modality: str, **options) -> MediaSampler:
        """The sampler of this pipeline's layout for `modality`, with its saved settings and
        `options` (`SamplerConfig` fields; None keeps the saved value) on top."""
        config = self.samplers.get(modality, SamplerConfig())
        tokenizer = self.tokenizer_for(modality)
        return media_sampler(self.layout, tokenizer.name, config, tokenizer.latent_shape).with_options(**options)

    def passes(self, modality: str) -> int:
        """Transformer passes per generated item of `modality`."""
        tokenizer = self.tokenizer_for(modality)
        return self.sampler_for(modality).passes(tokenizer.num_blocks, tokenizer.num_positions)

    @torch.no_grad()
    def generate_media_ids(self, modality: str, prompts: str | Sequence[str], seed: Seed = 0,
                           **options) -> torch.Tensor:
        """Local code ids (B, num_blocks, N) for each prompt; item i's noise ε and draws come from
        its own seed (see the class docstring)."""
        self.require_task(f"text_to_{modality}")
        prompts = _check_prompts(prompts)
        tokenizer = self.tokenizer_for(modality)
        sampler = self.sampler_for(modality, **options)
        generators = item_generators(item_seeds(seed, len(prompts)))
        encoded = [self.encode_prompt(p) for p in prompts]
        span = self.vocabulary.range(f"{tokenizer.name}.cells").size
        self._require_positions(max(map(len, encoded)) + 2 + span, f"a prompt of {max(map(len, encoded))} tokens "
                                f"and its {modality}'s {span} positions")
        first_blocks = None
        if self.layout.media_order == "timestep":
            noise = tokenizer.draw_noise(len(prompts), generators)
            first_blocks = tokenizer.quantizer.quantize_noise(noise).unsqueeze(1)  # k_T from ε, (B, 1, N)
        return sampler.sample(self.model, self.vocabulary, tokenizer.name, tokenizer.quantizer,
                              encoded, first_blocks, generators)

    def text_to_media(self, modality: str, prompt: str | Sequence[str], guidance_scale: float | None = None,
                      temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
                      gumbel_scale: float | None = None, refine_temperature: float | None = None,
                      seed: Seed = 0) -> MediaPipelineOutput:
        """Generate one item of `modality` per prompt. Options left at None take the pipeline's
        saved sampler settings (`samplers`, else `SamplerConfig()`'s defaults). Same seed, same
        prompts, same options -> the same items."""
        ids = self.generate_media_ids(modality, prompt, seed, guidance_scale=guidance_scale, temperature=temperature,
                                      top_k=top_k, top_p=top_p, gumbel_scale=gumbel_scale,
                                      refine_temperature=refine_temperature)
        tokenizer = self.tokenizer_for(modality)
        return MediaPipelineOutput(tokenizer.decode(ids), ids.cpu(), tokenizer.adapter)

    def text_to_image(self, prompt: str | Sequence[str], **sampler) -> MediaPipelineOutput:
        """Images for prompts; sampler options as in `text_to_media`."""
        return self.text_to_media("image", prompt, **sampler)

    def text_to_audio(self, prompt: str | Sequence[str], **sampler) -> MediaPipelineOutput:
        """Audio clips for prompts (save as WAV); sampler options as in `text_to_media`."""
        return self.text_to_media("audio", prompt, **sampler)

    def text_to_video(self, prompt: str | Sequence[str], **sampler) -> MediaPipelineOutput:
        """Video clips for prompts (save as MP4 or GIF); sampler options as in `text_to_media`."""
        return self.text_to_media("video", prompt, **sampler)

    @torch.no_grad()
    def media_to_text(self, modality: str, media: Any | Sequence[Any], max_new_tokens: int = 32,
                      temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
                      gumbel_scale: float | None = None, seed: Seed = 0) -> str | list[str]:
        """Describe media (objects or file paths) in text: each item is tokenized with its own
        seed's noise, then text is sampled after its span, which the text reads through its
        read-out block (greedy by default: `gumbel_scale=0`). One item in, one string out; a list
        in, a list out."""
        self.require_task(f"{modality}_to_text")
        _check_max_new_tokens(max_new_tokens)
        items = list(media) if isinstance(media, (list, tuple)) else [media]
        if not items:
            raise UnitokError("media: expected an item or a non-empty list of items")
        generators = item_generators(item_seeds(seed, len(items)))
        tokenizer = self.tokenizer_for(modality)
        prefixes = [self._document().read_out(tokenizer.name, states).build()
                    for states in self._readout_states(tokenizer, items, generators)]
        texts = self._sample_text(prefixes, max_new_tokens, generators, temperature=temperature, top_k=top_k,
                                  top_p=top_p, gumbel_scale=gumbel_scale)
        return texts if isinstance(media, (list, tuple)) else texts[0]

    @torch.no_grad()
    def continue_text(self, prompt: Sequence[Any], max_new_tokens: int = 32, temperature: float | None = None,
                      top_k: int | None = None, top_p: float | None = None, gumbel_scale: float | None = None,
                      seed: int = 0) -> str:
        """Continue an interleaved prompt, a list of strings and media (PIL images, `Audio`, `Video`
        or file paths), e.g. ``["a red 3", image, "in other words:"]``, with text. The call's one
        generator (`seed`) draws each media item's noise in order, then the text; each media item is
        read through its read-out block, as the model trained to read media; sampling options as in
        `media_to_text`."""
        parts = list(prompt) if isinstance(prompt, (list, tuple)) else [prompt]
        if not parts:
            raise UnitokError("prompt: expected a non-empty list of strings and media")
        generators = item_generators(item_seeds(seed, 1))
        _check_max_new_tokens(max_new_tokens)
        builder = self._document()
        for part in parts:
            if isinstance(part, str) and self._is_text(part):
                builder.text(self.encode_prompt(part))
            else:
                modality = self.modality_of(part)
                self.require_task(f"{modality}_to_text")
                tokenizer = self.tokenizer_for(modality)
                builder.read_out(tokenizer.name, self._readout_states(tokenizer, [part], generators)[0])
        return self._sample_text([builder.build()], max_new_tokens, generators, temperature=temperature, top_k=top_k,
                                 top_p=top_p, gumbel_scale=gumbel_scale)[0]

    def modality_of(self, item: Any) -> str:
        """The modality of a media object or file that one of this pipeline's tokenizers reads."""
        if isinstance(item, (str, Path)):
            return self.modality_of_file(item)
        for tokenizer in self.media_tokenizers.values():
            if tokenizer.adapter.accepts(item):
                return tokenizer.modality
        raise UnitokError(f"no tokenizer of this pipeline reads a {type(item).__name__} "
                         f"(it has {', '.join(t.modality for t in self.media_tokenizers.values())})")

    def _is_text(self, part: str) -> bool:
        """A string part of an interleaved prompt is text unless it names an existing media file."""
        path = Path(part)
        return not (path.suffix and path.is_file())

    def _document(self) -> StreamBuilder:
        """A new document of this model's layout, after its ``<bos>``."""
        return StreamBuilder(self.vocabulary, self.layout.media_order).special("<bos>")

    def _readout_states(self, tokenizer: MediaTokenizer, items: Sequence[Any],
                        generators: Sequence[torch.Generator]) -> torch.Tensor:
        """The state inputs (B, N, S) of the read-out blocks of items tokenized with noise from
        their `generators` (`documents.readout_states`), as the model trained to read media."""
        ids = tokenizer.encode_tensor(tokenizer.to_batch(list(items)), generators)
        clean = tokenizer.quantizer.block_inputs(ids)[0][:, -1].cpu()
        return readout_states(clean, self.layout, tokenizer.latent_shape)

    def _sample_text(self, prefixes: Sequence, max_new_tokens: int, generators: Sequence[torch.Generator],
                     **options) -> list[str]:
        self._require_positions(max(map(len, prefixes)) + max_new_tokens,
                                f"a prefix of {max(map(len, prefixes))} positions and {max_new_tokens} new tokens")
        given = {k: v for k, v in options.items() if v is not None}
        sampler = replace(SamplerConfig.for_text(), **given)
        texts = sample_text(self.model, self.vocabulary, prefixes, max_new_tokens, sampler,
                            generators)
        return [self.text_tokenizer.decode(t) for t in texts]

    def image_to_text(self, image: Any | Sequence[Any], **sampler) -> str | list[str]:
        """Captions for images (PIL images or paths); options as in `media_to_text`."""
        return self.media_to_text("image", image, **sampler)

    def audio_to_text(self, audio: Any | Sequence[Any], **sampler) -> str | list[str]:
        """Captions for audio clips (`Audio` objects or paths to any file decord reads)."""
        return self.media_to_text("audio", audio, **sampler)

    def video_to_text(self, video: Any | Sequence[Any], **sampler) -> str | list[str]:
        """Captions for video clips (`Video` objects or paths to any file decord reads)."""
        return self.media_to_text("video", video, **sampler)

    # --- persistence ---------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path, push_to_hub: bool = False, repo_id: str | None = None,
                        private: bool | None = None, token: str | None = None) -> None:
        """Save every component and `model_index.json` (last: a killed save leaves a folder that
        refuses to load) with a model card; `push_to_hub` then uploads the folder to `repo_id`
        (default: the folder's name)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / INDEX_NAME).unlink(missing_ok=True)  # written last: a killed save does not load
        self.vocabulary.save(directory)
        self.model.save_pretrained(directory / "transformer")
        self.text_tokenizer.save_pretrained(directory / "text_tokenizer")
        media = {name: f"{name}_tokenizer" for name in self.media_tokenizers}
        for name, tokenizer in self.media_tokenizers.items():
            tokenizer.save_pretrained(directory / media[name])
        components = {"transformer": self.transformer, "text_tokenizer": self.text_tokenizer,
                      **{media[name]: tokenizer for name, tokenizer in self.media_tokenizers.items()}}
        index = {"_class_name": type(self).__name__, "_unitok_version": __version__, "format": INDEX_FORMAT,
                 **{folder: [type(c).__module__.split(".")[0], type(c).__name__] for folder, c in components.items()},
                 "media_tokenizers": media, "layout": to_dict(self.layout),
                 "tasks": None if self.tasks is None else list(self.tasks),
                 "samplers": {modality: to_dict(config) for modality, config in self.samplers.items()}}
        write_model_card(directory, index)
        write_text_atomic(directory / INDEX_NAME, json.dumps(index, indent=2) + "\n")
        if push_to_hub:
            push_folder(directory, repo_id or directory.name, private=private, token=token)

    def push_to_hub(self, repo_id: str, private: bool | None = None, token: str | None = None) -> str:
        """Save to a temporary folder and upload it to the Hub repo `repo_id`; returns the commit URL."""
        with tempfile.TemporaryDirectory() as folder:
            self.save_pretrained(folder)
            return push_folder(Path(folder), repo_id, private=private, token=token)

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device | None = None,
                        revision: str | None = None, **hub_kwargs) -> "UniTokPipeline":
        """Load a saved pipeline from a folder or a Hub repo id (`revision`, and `hub_kwargs` such as
        `token` or `local_files_only`, go to `huggingface_hub.snapshot_download`)."""
        directory = local_folder(directory, revision, **hub_kwargs)
        index = _read_index(directory)
        tokenizers = PipelineTokenizers.from_pretrained(directory)
        layout = from_dict(StreamLayout, index["layout"], source=f"{directory}/{INDEX_NAME}: layout"
                           ).fitted(block_sizes(tokenizers.media))
        transformer = LlamaForCausalLM.from_pretrained(Path(directory) / "transformer", use_safetensors=True)
        pipe = cls(
            transformer=transformer, text_tokenizer=tokenizers.text, media_tokenizers=tokenizers.media,
            vocabulary=tokenizers.vocabulary, layout=layout,
            **media_modules(layout, tokenizers.vocabulary, tokenizers.media, transformer.config.hidden_size),
            samplers={modality: from_dict(SamplerConfig, config,
                                          source=f"{directory}/{INDEX_NAME}: samplers.{modality}")
                      for modality, config in index.get("samplers", {}).items()},
            tasks=index["tasks"],
        )
        pipe.model.load_media_modules(Path(directory) / "transformer")
        return pipe.to(device) if device is not None else pipe


@dataclass
class PipelineTokenizers:
    """A saved pipeline's tokenizers and vocabulary without its transformer: what `unitok tokenize` needs."""

    text: TextBPE
    media: dict[str, MediaTokenizer]  # range name -> tokenizer
    vocabulary: Vocabulary

    @classmethod
    def from_pretrained(cls, directory: str | Path, revision: str | None = None, **hub_kwargs) -> "PipelineTokenizers":
        directory = local_folder(directory, revision, **hub_kwargs)
        index = _read_index(directory)
        return cls(TextBPE.from_pretrained(directory / "text_tokenizer"),
                   {n: MediaTokenizer.from_pretrained(directory / f) for n, f in index["media_tokenizers"].items()},
                   Vocabulary.load(directory))

    def for_modality(self, modality: str | None) -> MediaTokenizer:
        """The tokenizer of `modality`; None is allowed when there is only one."""
        if modality is None:
            if len(self.media) > 1:
                raise UnitokError(f"this pipeline has {', '.join(t.modality for t in self.media.values())} "
                                 "tokenizers: pass --modality")
            return next(iter(self.media.values()))
        return find_tokenizer(self.media, modality)


def find_tokenizer(tokenizers: dict[str, MediaTokenizer], modality: str) -> MediaTokenizer:
    for tokenizer in tokenizers.values():
        if tokenizer.modality == modality:
            return tokenizer
    raise UnitokError(f"this pipeline has no {modality} tokenizer (it has {list(tokenizers)})")


def _read_index(directory: str | Path) -> dict:
    index_path = Path(directory) / INDEX_NAME
    if (Path(directory) / "unitok_pipeline.json").is_file() and not index_path.is_file():
        raise UnitokError(f"{directory}: saved by unitok 0.1 (unitok_pipeline.json); save it again with this "
                          "unitok (`unitok train RECIPE` redoes the pipeline stage)")
    if not index_path.is_file():
        raise FileNotFoundError(f"{directory}: no {INDEX_NAME}; not a saved UniTokPipeline")
    try:
        index = json.loads(index_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UnitokError(f"{index_path}: not valid JSON ({err}); save the pipeline again") from None
    if index.get("format", 0) != INDEX_FORMAT:
        remedy = ("upgrade unitok to load it" if index.get("format", 0) > INDEX_FORMAT else
                  "save it again with this unitok (`unitok train RECIPE` redoes the stages that changed)")
        raise UnitokError(f"{index_path}: format {index.get('format')} (unitok {index.get('_unitok_version')}); this "
                          f"unitok {__version__} reads format {INDEX_FORMAT}: {remedy}")
    return index


def _check_prompts(prompt: str | Sequence[str]) -> list[str]:
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise UnitokError("prompt: expected a string or a non-empty list of strings")
    return prompts


def _check_max_new_tokens(max_new_tokens: Any) -> None:
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise UnitokError(f"max_new_tokens: expected an integer >= 1, got {max_new_tokens!r}")
