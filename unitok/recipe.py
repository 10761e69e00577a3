"""Recipes: one YAML file -> data, tokenizers, text BPE, shards, transformer, evaluation.

Each stage writes into its own folder under the recipe's `output_dir` and records a hash of
everything it depends on in ``stage.json``. A re-run skips stages whose hash matches and whose
output is complete, re-does a stage whose inputs changed, and resumes an interrupted one
(shards and LM training resume at the exact point they reached).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch
import yaml
from accelerate.utils import set_seed
from transformers import LlamaForCausalLM

from .atomic import write_text_atomic
from .config import ConfigError, config_hash, from_dict, load_config, to_dict
from .digits_world import ClipWorldConfig, DigitsWorldConfig, ToneWorldConfig, write_world_folders
from .errors import UnitokError
from .hub import write_model_card
from .media_tokenizer import MediaTokenizer, TokenizerSpec
from .model import ModelSpec, build_transformer
from .eval.recipe_eval import EvalRun, EvalSection, evaluate
from .pipeline import INDEX_FORMAT, INDEX_NAME, PipelineTokenizers, UniTokPipeline
from .sampling import SamplerConfig
from .shards import FORMAT as SHARD_FORMAT
from .shards import ShardWriter, TokenizeSettings, read_manifest
from .sources import FolderSource, SourceItem
from .text_bpe import TextBPE, TextBPEConfig
from .streams import LAYOUT as STREAM_LAYOUT
from .streams import task_modality
from .training.data import ShardMix
from .training.lm import LMTraining, train_lm
from .training.tokenizer import TokenizerTraining, tokenizer_metrics, train_media_tokenizer
from .visualize import plot_losses
from .vocabulary import Vocabulary

STAGE_NAME = "stage.json"
STAGES = ("data", "tokenizer", "text_bpe", "shards", "lm", "pipeline", "eval")
SAMPLE_GRIDS = ("samples.png", "audio_samples.png", "video_samples.png")  # the model card shows the first


@dataclass(frozen=True)
class FolderData:
    """A folder of media with a caption manifest (JSONL/CSV `file,caption`)."""

    dir: str
    captions: str | None = None


@dataclass(frozen=True)
class _MediaData:
    """A modality's data: the embedded digits world (the subclass says which part), or both a
    train and a held-out folder."""

    train: FolderData | None = None
    heldout: FolderData | None = None

    def __post_init__(self):
        if (self.digits_world is None) == (self.train is None or self.heldout is None):
            raise UnitokError("set either `digits_world` or both `train` and `heldout` folders")


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
class DataSection:
    """Items per modality; every modality with a tokenizer needs its section."""

    image: ImageData | None = None
    audio: AudioData | None = None
    video: VideoData | None = None


@dataclass(frozen=True)
class TokenizerSection:
    spec: str  # path to a tokenizers/*.yaml spec
    training: TokenizerTraining = field(default_factory=TokenizerTraining)
    plain_vq_baseline: bool = True  # also train a T = 0 tokenizer the same way, for the rate-distortion report


@dataclass(frozen=True)
class Recipe:
    """Either a whole run from media (`data` by modality, `tokenizers` trained here) or a
    transformer trained on a weighted list of existing shard sets (`data` a list of `ShardMix`,
    tokenizers and vocabulary from the saved pipeline `tokenizers_from`)."""

    name: str
    output_dir: str
    data: DataSection | list[ShardMix]
    model: str  # path to a models/*.yaml spec
    lm: LMTraining
    tokenizers: dict[str, TokenizerSection] = field(default_factory=dict)  # modality -> its tokenizer, in vocabulary order
    tokenizers_from: str | None = None  # a saved pipeline folder, for a `data` list of shard sets
    seed: int = 0
    text_bpe: TextBPEConfig = field(default_factory=TextBPEConfig)
    shards: TokenizeSettings = field(default_factory=TokenizeSettings)
    # modality -> how the saved pipeline draws it (rounds per block, guidance, …); unset fields and
    # modalities take `SamplerConfig`'s defaults
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


def _rounds_errors(path: Path, recipe: Recipe, modality: str, steps: int) -> list[str]:
    """The groups a modality trains with (`lm.rounds`) fit its tokenizer; its sampler, if it names
    rounds, draws the same groups."""
    trained, sampler = recipe.lm.rounds.get(modality), recipe.samplers.get(modality, SamplerConfig())
    errors = []
    for where, rounds in ((f"lm.rounds.{modality}", trained), (f"samplers.{modality}.rounds", sampler.rounds)):
        if rounds and (recipe.lm.media_order == "raster" or len(rounds) != steps):
            errors.append(f"{path}: {where}: expected one entry per generated block "
                          f"({steps} for T = {steps} in timestep order), got {list(rounds)}")
    if sampler.rounds and (list(sampler.rounds) != list(trained or [1] * steps)
                           or sampler.round_schedule != recipe.lm.round_schedule
                           or sampler.cell_order != recipe.lm.cell_order):
        errors.append(f"{path}: samplers.{modality}: rounds {list(sampler.rounds)} ({sampler.round_schedule}, "
                      f"{sampler.cell_order} order) are not the groups the model trains on (lm.rounds, "
                      f"lm.round_schedule, lm.cell_order); leave them out")
    return errors


def load_recipe(path: str | Path) -> LoadedRecipe:
    """Read a recipe and the specs it names; every problem is reported with its file and field."""
    path = Path(path)
    recipe = load_config(path, Recipe)
    errors, specs, model_spec = [], {}, None
    for modality, section in recipe.tokenizers.items():
        where = f"{path}: tokenizers.{modality}"
        try:
            specs[modality] = load_config(resolve_spec_path(section.spec, path), TokenizerSpec)
        except ConfigError as err:
            errors.append(f"{where}.spec: {err}")
            continue
        if specs[modality].modality != modality:
            errors.append(f"{where}: the spec {section.spec} is for {specs[modality].modality}, not {modality}")
        if getattr(recipe.data, modality, None) is None:
            errors.append(f"{path}: data.{modality}: missing; the {modality} tokenizer needs train and held-out items")
        steps = specs[modality].quantizer.steps
        if recipe.lm.media_order == "raster" and steps:
            errors.append(f"{where}: lm.media_order: raster needs a tokenizer with quantizer.steps = 0")
        if recipe.lm.media_order == "timestep" and not steps:
            errors.append(f"{where}: lm.media_order: timestep needs a tokenizer with quantizer.steps >= 1 "
                          "(T = 0 is the raster baseline)")
        errors += _rounds_errors(path, recipe, modality, steps)
        if recipe.lm.cell_order == "lattice" and modality != "image":
            errors.append(f"{where}: lm.cell_order: lattice needs square 2-D latents (image tokenizers); use random")
    if recipe.tokenizers and set(recipe.lm.rounds) - set(recipe.tokenizers):
        errors.append(f"{path}: lm.rounds: {sorted(set(recipe.lm.rounds) - set(recipe.tokenizers))} name no tokenizer "
                      f"of this recipe ({sorted(recipe.tokenizers)})")
    if isinstance(recipe.data, list):
        if recipe.tokenizers or not recipe.tokenizers_from:
            errors.append(f"{path}: tokenizers_from: a `data` list of shard sets trains with the tokenizers of a "
                          "saved pipeline (tokenizers_from: runs/x/model), not a `tokenizers` section")
        if "tasks" in (yaml.safe_load(path.read_text()).get("lm") or {}):  # set, even to the default
            errors.append(f"{path}: lm.tasks: a `data` list gives each shard set its own task and weight; "
                          "remove lm.tasks")
    else:
        if not recipe.tokenizers:
            errors.append(f"{path}: tokenizers: name at least one media tokenizer")
        if recipe.tokenizers_from:
            errors.append(f"{path}: tokenizers_from: only with a `data` list of shard sets")
        errors += [f"{path}: lm.tasks: {task} needs a {m} tokenizer" for task, m in
                   ((t, task_modality(t)) for t in recipe.lm.tasks) if m is not None and m not in recipe.tokenizers]
    errors += [f"{path}: samplers.{m}: the recipe has no {m} tokenizer" for m in recipe.samplers
               if not isinstance(recipe.data, list) and m not in recipe.tokenizers]
    try:
        model_spec = load_config(resolve_spec_path(recipe.model, path), ModelSpec)
    except ConfigError as err:
        errors.append(f"{path}: model: {err}")
    if errors:
        raise ConfigError("\n".join(errors))
    return LoadedRecipe(recipe, path, specs, model_spec)


def resolve_spec_path(ref: str, recipe_path: Path) -> Path:
    """Spec paths are relative to the working directory or to the repository holding `recipes/`."""
    for candidate in (Path(ref), recipe_path.parent / ref, recipe_path.parent.parent / ref):
        if candidate.is_file():
            return candidate
    raise ConfigError(f"no such spec file {ref!r} (looked in ., {recipe_path.parent}, {recipe_path.parent.parent})")


# --- stage bookkeeping ---------------------------------------------------------------------------

def run_stage(folder: Path, key: str, work: Callable[[], None], log: Callable[[str], None] = print) -> bool:
    """Run `work` unless `folder` holds a complete result for the same `key`. Returns whether it ran."""
    marker = folder / STAGE_NAME
    if marker.is_file():
        stage = json.loads(marker.read_text())
        if stage.get("key") == key and stage.get("complete"):
            log(f"[skip] {folder} (up to date)")
            return False
        if stage.get("key") != key:
            log(f"[redo] {folder}: its inputs changed")
            shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(marker, json.dumps({"key": key, "complete": False}))
    log(f"[run]  {folder}")
    work()
    write_text_atomic(marker, json.dumps({"key": key, "complete": True}))
    return True


def stage_key(folder: Path) -> str:
    return json.loads((folder / STAGE_NAME).read_text())["key"]


# --- the stages ----------------------------------------------------------------------------------

class RecipeRun:
    """Runs a loaded recipe's stages in order; each stage's key chains its inputs' keys.
    `classifier_dir` is where evaluation keeps its digit classifier (default: ``eval/classifier``)."""

    def __init__(self, loaded: LoadedRecipe, log: Callable[[str], None] = print, classifier_dir: Path | None = None):
        self.loaded, self.recipe, self.out, self.log = loaded, loaded.recipe, loaded.out, log
        self.classifier_dir = classifier_dir or self.out / "eval" / "classifier"

    def run(self, stop_after: str | None = None) -> None:
        for name in STAGES:
            getattr(self, f"stage_{name}")()
            if name == stop_after:
                return

    # data -------------------------------------------------------------------------------------
    def data_dirs(self, modality: str) -> dict[str, tuple[Path, Path | None]]:
        """{split: (folder, caption manifest or None for the folder's own)} of one modality."""
        data = getattr(self.recipe.data, modality)
        if data.digits_world is not None:
            return {split: (self.out / "data" / modality / split, None) for split in ("train", "heldout")}
        return {split: (Path(f.dir), Path(f.captions) if f.captions else None)
                for split, f in (("train", data.train), ("heldout", data.heldout))}

    def split_items(self, modality: str, split: str) -> list[SourceItem]:
        folder, captions = self.data_dirs(modality)[split]
        return list(FolderSource(folder, captions))

    def split_tensors(self, modality: str, split: str, tokenizer: MediaTokenizer) -> torch.Tensor:
        """The split's media preprocessed by `tokenizer`'s adapter, stacked (M, C, …)."""
        return torch.stack([tokenizer.adapter.to_tensor(item.open()) for item in self.split_items(modality, split)])

    def stage_data(self) -> None:
        for modality in self.loaded.modalities:
            world = getattr(self.recipe.data, modality).digits_world
            if world is not None:
                folders = {split: folder for split, (folder, _) in self.data_dirs(modality).items()}
                run_stage(self.out / "data" / modality, config_hash(world),
                          lambda w=world, f=folders: write_world_folders(w, f), self.log)

    def data_key(self, modality: str) -> str:
        data = getattr(self.recipe.data, modality)
        return stage_key(self.out / "data" / modality) if data.digits_world is not None else config_hash(data)

    # tokenizers -------------------------------------------------------------------------------
    def stage_tokenizer(self) -> None:
        """One stage per modality: its tokenizer (and plain-VQ baseline) in ``tokenizers/<modality>/``."""
        for modality, section in self.recipe.tokenizers.items():
            spec, folder = self.loaded.tokenizer_specs[modality], self.out / "tokenizers" / modality

            def train(spec=spec, section=section, folder=folder, modality=modality):
                probe = MediaTokenizer(spec)
                inputs = {split: self.split_tensors(modality, split, probe) for split in ("train", "heldout")}
                variants = {spec.name: (spec, folder)}
                if section.plain_vq_baseline:
                    variants["plain_vq"] = (_plain_vq(spec), folder / "plain_vq")
                metrics = {}
                for label, (variant, target) in variants.items():
                    tokenizer = train_media_tokenizer(variant, inputs["train"], section.training, self.recipe.seed,
                                                      desc=f"tokenizer:{modality}:{label}",
                                                      tracker_dir=folder / "trackers", tracker_config=to_dict(self.recipe))
                    tokenizer.save_pretrained(target)
                    metrics[label] = tokenizer_metrics(tokenizer, inputs["heldout"], self.recipe.seed)
                    self.log(f"  {modality}/{label}: {metrics[label]}")
                (folder / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")

            run_stage(folder, config_hash(self.data_key(modality), spec, replace(section.training, log_with=[]),
                                          self.recipe.seed, section.plain_vq_baseline), train, self.log)

    def media_tokenizers(self) -> dict[str, MediaTokenizer]:
        """modality -> trained tokenizer, in the recipe's order."""
        return {m: MediaTokenizer.from_pretrained(self.out / "tokenizers" / m) for m in self.loaded.modalities}

    def tokenizers(self) -> PipelineTokenizers:
        """The text BPE, media tokenizers and vocabulary the transformer is trained with."""
        if self.loaded.from_shards:
            tokenizers = PipelineTokenizers.from_pretrained(self.recipe.tokenizers_from)
        else:
            tokenizers = PipelineTokenizers(TextBPE.from_pretrained(self.out / "text_tokenizer"),
                                            {t.name: t for t in self.media_tokenizers().values()}, self.vocabulary())
        return replace(tokenizers, vocabulary=tokenizers.vocabulary.with_readout_patch(self.recipe.lm.readout_patch))

    # text BPE + vocabulary --------------------------------------------------------------------
    def stage_text_bpe(self) -> None:
        """One BPE over the captions of every modality's training items."""
        if self.loaded.from_shards:
            return
        folder = self.out / "text_tokenizer"

        def train():
            texts = [item.caption for m in self.loaded.modalities for item in self.split_items(m, "train") if item.caption]
            TextBPE.train(texts, self.recipe.text_bpe).save_pretrained(folder)

        data_keys = [self.data_key(m) for m in self.loaded.modalities]
        run_stage(folder, config_hash(*data_keys, self.recipe.text_bpe), train, self.log)

    def vocabulary(self) -> Vocabulary:
        text = TextBPE.from_pretrained(self.out / "text_tokenizer")
        return Vocabulary.build(text.vocab_size, text.content_hash(),
                                [tokenizer.layout() for tokenizer in self.media_tokenizers().values()])

    # shards -----------------------------------------------------------------------------------
    def shard_dir(self, modality: str, split: str) -> Path:
        return self.out / "shards" / modality / split

    def stage_shards(self) -> None:
        if self.loaded.from_shards:
            return
        folder = self.out / "shards"
        vocab = self.vocabulary()

        def tokenize():
            text = TextBPE.from_pretrained(self.out / "text_tokenizer")
            for modality, tokenizer in self.media_tokenizers().items():
                for split, (data_dir, captions) in self.data_dirs(modality).items():
                    writer = ShardWriter(self.shard_dir(modality, split), tokenizer, text, vocab, self.recipe.shards)
                    self.log(f"  shards/{modality}/{split}: {writer.write(FolderSource(data_dir, captions))}")

        data_keys = [self.data_key(m) for m in self.loaded.modalities]
        run_stage(folder, config_hash(*data_keys, vocab.hash, self.recipe.shards, SHARD_FORMAT), tokenize, self.log)

    def mixture(self) -> list[ShardMix]:
        """The shard sets the transformer trains on: the recipe's list, or this run's own shards
        with `lm.tasks`' weights. Caption-only ``text`` documents come from every modality's
        captions in proportion to its item count; a task of weight 0 is left out (a sweep's override
        switches a recipe's task off that way)."""
        if self.loaded.from_shards:
            return list(self.recipe.data)
        sizes = {m: read_manifest(self.shard_dir(m, "train"))["totals"]["items"] for m in self.loaded.modalities}
        mixture = []
        for task, weight in self.recipe.lm.tasks.items():
            if weight <= 0:
                continue
            modality = task_modality(task)
            for m in [modality] if modality else self.loaded.modalities:
                share = 1 if modality else sizes[m] / sum(sizes.values())
                mixture.append(ShardMix(str(self.shard_dir(m, "train")), weight * share, task,
                                        str(self.shard_dir(m, "heldout"))))
        return mixture

    # transformer ------------------------------------------------------------------------------
    def stage_lm(self) -> bool:
        """Train the transformer; its best weights land in ``lm/transformer`` (`save_pretrained`)."""
        folder = self.out / "lm"
        tokenizers = self.tokenizers()
        mixture = self.mixture()

        def train():
            set_seed(self.recipe.seed)  # the initial weights depend on the recipe only, not on earlier stages
            model = build_transformer(self.loaded.model_spec, tokenizers.vocabulary)
            history = train_lm(model, tokenizers.vocabulary, tokenizers.media, mixture, self.recipe.lm, folder,
                               self.recipe.seed, tracker_config=to_dict(self.recipe))
            (folder / "history.json").write_text(json.dumps(history, indent=2) + "\n")
            model.save_pretrained(folder / "transformer")
            plot_losses(folder / "log" / "rank-0.jsonl", history, self.out / "loss.png")

        data_key = [read_manifest(m.shards)["shards"] for m in mixture] if self.loaded.from_shards \
            else stage_key(self.out / "shards")
        lm = replace(self.recipe.lm, log_with=[])  # trackers do not change what is trained
        return run_stage(folder, config_hash(data_key, mixture, self.loaded.model_spec, lm, self.recipe.seed,
                                             tokenizers.vocabulary.hash, STREAM_LAYOUT), train, self.log)

    # pipeline ---------------------------------------------------------------------------------
    def stage_pipeline(self) -> bool:
        """Save ``model/``: the trained transformer, tokenizers, vocabulary and sampler settings.
        Its own stage, so that other sampler settings do not re-train the transformer."""
        tokenizers = self.tokenizers()
        modalities = {t.modality for t in tokenizers.media.values()}
        samplers = {m: config for m, config in self.recipe.samplers.items() if m in modalities}
        for m in modalities & set(self.recipe.lm.rounds):  # the sampler draws the groups the model trained on
            samplers[m] = replace(samplers.get(m, SamplerConfig()), rounds=tuple(self.recipe.lm.rounds[m]),
                                  round_schedule=self.recipe.lm.round_schedule,
                                  cell_order=self.recipe.lm.cell_order)

        def assemble():
            transformer = LlamaForCausalLM.from_pretrained(self.out / "lm" / "transformer", use_safetensors=True)
            UniTokPipeline(transformer, tokenizers.text, tokenizers.media, tokenizers.vocabulary,
                           self.recipe.lm.media_order, samplers, self.recipe.lm.readout).save_pretrained(self.out / "model")

        key = config_hash(stage_key(self.out / "lm"), samplers, INDEX_FORMAT)  # a new format re-saves the pipeline
        return run_stage(self.out / "model", key, assemble, self.log)

    # evaluation -------------------------------------------------------------------------------
    def stage_eval(self) -> bool:
        run = EvalRun(
            out=self.out, model=self.out / "model", classifier=self.classifier_dir,
            lm_history=self.out / "lm" / "history.json",
            tokenizer_metrics={m: json.loads((self.out / "tokenizers" / m / "metrics.json").read_text())
                               for m in self.loaded.modalities},
            tokenizer_names={m: spec.name for m, spec in self.loaded.tokenizer_specs.items()},
            shards={m: {split: self.shard_dir(m, split) for split in ("train", "heldout")} for m in self.loaded.modalities},
            heldout_media={m: self.data_dirs(m)["heldout"][0] for m in self.loaded.modalities},
            worlds={m: getattr(self.recipe.data, m).digits_world for m in self.loaded.modalities
                    if getattr(self.recipe.data, m).digits_world is not None},
            tasks=self.recipe.lm.tasks, evaluation=self.recipe.eval, seed=self.recipe.seed, log=self.log)
        def evaluate_and_describe():
            evaluate(run)
            self.write_model_card()

        return run_stage(self.out / "eval", config_hash(stage_key(self.out / "model"), self.recipe.eval,
                                                        self.recipe.data), evaluate_and_describe, self.log)

    def write_model_card(self) -> None:
        """``model/README.md`` with this recipe, its metrics and its first sample grid (copied beside it)."""
        model = self.out / "model"
        grid = next((self.out / name for name in SAMPLE_GRIDS if (self.out / name).is_file()), None)
        if grid is not None:
            shutil.copyfile(grid, model / grid.name)
        write_model_card(model, json.loads((model / INDEX_NAME).read_text()), self.loaded.path.read_text(),
                         json.loads((self.out / "metrics.json").read_text()), grid.name if grid else None)


def _plain_vq(spec: TokenizerSpec) -> TokenizerSpec:
    """The same latent and codebook with T = 0: a plain VQ of the clean latent."""
    quantizer = from_dict(type(spec.quantizer), {**to_dict(spec.quantizer), "steps": 0})
    return from_dict(TokenizerSpec, {**to_dict(spec), "name": "plain_vq", "quantizer": to_dict(quantizer)})
