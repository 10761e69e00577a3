"""The recipe format: one YAML file -> data, tokenizers, text BPE, shards, transformer, evaluation.

`load_recipe` reads a recipe and the specs it names and reports every problem at once, each
with its file and field, so that a wrong setting fails at load time rather than an hour in.
Shipped recipes (``unitok/configs/recipes/``) load by name: ``unitok train quickstart``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from unitok.benchmarks.digits.clips import ClipWorldConfig
from unitok.benchmarks.digits.evaluate import EvalSection
from unitok.benchmarks.digits.scenes import DigitsWorldConfig
from unitok.benchmarks.digits.tones import ToneWorldConfig
from unitok.configs import find_recipe, find_spec
from unitok.core.config import Config, ConfigError, bounded, load_config
from unitok.core.seeds import MAX_SEED
from unitok.data.mixture import ShardMix
from unitok.data.shard_writer import TokenizeSettings
from unitok.data.tasks import task_modality
from unitok.lm.layout import StreamLayout
from unitok.lm.model import ModelSpec
from unitok.lm.sampling import SamplerConfig
from unitok.tokenizer.media_tokenizer import TokenizerSpec
from unitok.tokenizer.text_bpe import TextBPEConfig
from unitok.train.lm import LMTraining
from unitok.train.tokenizer import TokenizerTraining


@dataclass(frozen=True)
class FolderData(Config):
    """A folder of media with a caption manifest (JSONL/CSV `file,caption`)."""

    dir: str
    captions: str | None = None


@dataclass(frozen=True)
class _MediaData(Config):
    """A modality's data: the embedded digits world (the subclass says which part), or both a
    train and a held-out folder."""

    train: FolderData | None = None
    heldout: FolderData | None = None

    def rules(self):
        yield ((self.digits_world is None) != (self.train is None or self.heldout is None), None,
               "set either `digits_world` or both `train` and `heldout` folders")


@dataclass(frozen=True)
class ImageData(_MediaData):
    digits_world: DigitsWorldConfig | None = None


@dataclass(frozen=True)
class AudioData(_MediaData):
    digits_world: ToneWorldConfig | None = None


@dataclass(frozen=True)
class VideoData(_MediaData):
    digits_world: ClipWorldConfig | None = None


@dataclass(frozen=True)
class DataSection(Config):
    """Items per modality; every modality with a tokenizer needs its section."""

    image: ImageData | None = None
    audio: AudioData | None = None
    video: VideoData | None = None


@dataclass(frozen=True)
class TokenizerSection(Config):
    LATER = frozenset({"frames_from"})

    spec: str  # path to a tokenizer spec (tokenizers/*.yaml)
    training: TokenizerTraining = field(default_factory=TokenizerTraining)
    plain_vq_baseline: bool = True  # also train a T = 0 tokenizer the same way, for the rate-distortion report
    # video: trained by none of the above; its frames are coded by the recipe's tokenizer of this
    # modality (image), whose weights it takes (its spec: that one's, `per_frame`, a video section)
    frames_from: str | None = None


@dataclass(frozen=True)
class Recipe(Config):
    """Either a whole run from media (`data` by modality, `tokenizers` trained here) or a
    transformer trained on a weighted list of existing shard sets (`data` a list of `ShardMix`,
    tokenizers and vocabulary from the saved pipeline `tokenizers_from`)."""

    name: str
    output_dir: str
    data: DataSection | list[ShardMix]
    model: str  # path to a transformer size spec (models/*.yaml)
    lm: LMTraining
    # the transformer's stream layout (media order, read-out neighbourhood, each modality's decode
    # schedule), saved with the pipeline; modalities without a schedule draw each block in one group
    layout: StreamLayout = field(default_factory=StreamLayout)
    # modality -> its tokenizer, in vocabulary order
    tokenizers: dict[str, TokenizerSection] = field(default_factory=dict)
    tokenizers_from: str | None = None  # a saved pipeline folder, for a `data` list of shard sets
    seed: int = bounded(0, ge=0, lt=MAX_SEED)
    text_bpe: TextBPEConfig = field(default_factory=TextBPEConfig)
    shards: TokenizeSettings = field(default_factory=TokenizeSettings)
    # modality -> the saved pipeline's free sampler settings (guidance, temperature, …); unset fields
    # and modalities take `SamplerConfig`'s defaults
    samplers: dict[str, SamplerConfig] = field(default_factory=dict)
    eval: EvalSection = field(default_factory=EvalSection)


@dataclass
class LoadedRecipe:
    recipe: Recipe
    path: Path
    tokenizer_specs: dict[str, TokenizerSpec]  # modality -> spec
    model_spec: ModelSpec

    @property
    def out(self) -> Path:
        return Path(self.recipe.output_dir)

    @property
    def modalities(self) -> list[str]:
        return list(self.recipe.tokenizers)

    @property
    def from_shards(self) -> bool:
        """The recipe trains on a list of existing shard sets (no data, tokenizer or shard stages)."""
        return isinstance(self.recipe.data, list)


def load_recipe(ref: str | Path) -> LoadedRecipe:
    """Read a recipe (a path, or a shipped recipe's name) and the specs it names; every problem is
    reported with its file and field."""
    path = find_recipe(ref)
    recipe = load_config(path, Recipe)
    errors, specs = [], {}
    for modality, section in recipe.tokenizers.items():
        try:
            specs[modality] = load_config(find_spec(section.spec, path), TokenizerSpec)
        except ConfigError as err:
            errors.append(f"{path}: tokenizers.{modality}.spec: {err}")
            continue
        errors += _tokenizer_errors(path, recipe, modality, specs[modality])
    errors += [f"{path}: tokenizers.{m}.frames_from: {problem}" for m, section in recipe.tokenizers.items()
               if section.frames_from and m in specs for problem in _frames_problems(recipe, specs, m)]
    names = {spec.name for spec in specs.values()}
    if specs and set(recipe.layout.decode) - names:
        errors.append(f"{path}: layout.decode: {sorted(set(recipe.layout.decode) - names)} name no tokenizer of this "
                      f"recipe ({sorted(names)}; a schedule is keyed by its tokenizer's range name)")
    errors += _data_errors(path, recipe)
    errors += [f"{path}: samplers.{m}: the recipe has no {m} tokenizer" for m in recipe.samplers
               if not isinstance(recipe.data, list) and m not in recipe.tokenizers]
    model_spec = None
    try:
        model_spec = load_config(find_spec(recipe.model, path), ModelSpec)
    except ConfigError as err:
        errors.append(f"{path}: model: {err}")
    if errors:
        raise ConfigError("\n".join(errors))
    return LoadedRecipe(recipe, path, specs, model_spec)


def _tokenizer_errors(path: Path, recipe: Recipe, modality: str, spec: TokenizerSpec) -> list[str]:
    """A tokenizer that is not of its modality, has no data, or does not fit the layout."""
    where = f"{path}: tokenizers.{modality}"
    errors = []
    if spec.modality != modality:
        errors.append(f"{where}: the spec {recipe.tokenizers[modality].spec} is for {spec.modality}, not {modality}")
    if getattr(recipe.data, modality, None) is None:
        errors.append(f"{path}: data.{modality}: missing; the {modality} tokenizer needs train and held-out items")
    errors += [f"{path}: layout.{problem}" for problem in
               recipe.layout.problems(spec.name, spec.quantizer.noise_steps, spec.latent_shape)]
    return errors


def _frames_problems(recipe: Recipe, specs: dict[str, TokenizerSpec], modality: str) -> list[str]:
    """Why a tokenizer cannot code its frames with `frames_from`'s tokenizer, if it cannot."""
    source, spec = recipe.tokenizers[modality].frames_from, specs[modality]
    order = list(recipe.tokenizers)
    if source not in specs or order.index(source) > order.index(modality) or specs[source].modality != "image":
        return [f"must name an image tokenizer listed before {modality} in this recipe, got {source!r}"]
    image = specs[source]
    if not spec.autoencoder.per_frame:
        return ["codes every frame as an image: the spec needs autoencoder.per_frame: true"]
    if replace(spec.autoencoder, per_frame=False) != image.autoencoder or spec.quantizer != image.quantizer:
        return [f"the spec's autoencoder and quantizer must be {source}'s ({recipe.tokenizers[source].spec})"]
    if spec.video.size != image.image.size:
        return [f"frames of {spec.video.size} pixels, but {source} codes images of {image.image.size}"]
    return []


def _data_errors(path: Path, recipe: Recipe) -> list[str]:
    """A `data` list of shard sets takes its tokenizers from a saved pipeline and its tasks from the
    list; data by modality needs tokenizers for its tasks."""
    if isinstance(recipe.data, list):
        errors = []
        if recipe.tokenizers or not recipe.tokenizers_from:
            errors.append(f"{path}: tokenizers_from: a `data` list of shard sets trains with the tokenizers of a "
                          "saved pipeline (tokenizers_from: runs/x/model), not a `tokenizers` section")
        if "tasks" in (yaml.safe_load(path.read_text()).get("lm") or {}):  # set, even to the default
            errors.append(f"{path}: lm.tasks: a `data` list gives each shard set its own task and weight; "
                          "remove lm.tasks")
        return errors
    errors = []
    if not recipe.tokenizers:
        errors.append(f"{path}: tokenizers: name at least one media tokenizer")
    if recipe.tokenizers_from:
        errors.append(f"{path}: tokenizers_from: only with a `data` list of shard sets")
    return errors + [f"{path}: lm.tasks: {task} needs a {m} tokenizer" for task, m in
                     ((t, task_modality(t)) for t in recipe.lm.tasks) if m is not None and m not in recipe.tokenizers]
