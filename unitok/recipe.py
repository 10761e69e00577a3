"""Recipes: one YAML file -> data, tokenizers, text BPE, shards, transformer, evaluation.

Each stage writes into its own folder under the recipe's `output_dir` and records a hash of
everything it depends on in ``stage.json``. A re-run skips stages whose hash matches and whose
output is complete, re-does a stage whose inputs changed, and resumes an interrupted one
(shards and LM training resume at the exact point they reached).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from .config import ConfigError, config_hash, from_dict, load_config, to_dict
from .digits_world import DigitsWorldConfig, build_digits_world, write_image_folder
from .media_tokenizer import MediaTokenizer, TokenizerSpec
from .model import ModelSpec, build_transformer
from .pipeline import UniTokPipeline
from .sampling import SamplerConfig
from .shards import ShardWriter, TokenizeSettings, load_shards
from .sources import folder_items, read_caption_manifest
from .text_bpe import TextBPE, TextBPEConfig
from .training.lm import LMTraining, TokenItems, train_lm
from .training.tokenizer import TokenizerTraining, tokenizer_metrics, train_media_tokenizer
from .vocabulary import Vocabulary

STAGE_NAME = "stage.json"


@dataclass(frozen=True)
class FolderData:
    """A folder of media with a caption manifest (JSONL/CSV `file,caption`)."""

    dir: str
    captions: str | None = None


@dataclass(frozen=True)
class DataSection:
    digits_world: DigitsWorldConfig | None = None  # the embedded default
    train: FolderData | None = None  # or your own folders
    heldout: FolderData | None = None

    def __post_init__(self):
        if (self.digits_world is None) == (self.train is None or self.heldout is None):
            raise ValueError("set either `digits_world` or both `train` and `heldout` folders")


@dataclass(frozen=True)
class TokenizerSection:
    spec: str  # path to a tokenizers/*.yaml spec
    training: TokenizerTraining = field(default_factory=TokenizerTraining)
    plain_vq_baseline: bool = True  # also train a T = 0 tokenizer the same way, for the rate-distortion report


@dataclass(frozen=True)
class EvalSection:
    num_samples: int = 500  # held-out prompts to generate from
    batch_size: int = 100
    sampler: SamplerConfig = field(default_factory=lambda: SamplerConfig(guidance_scale=3.0))
    grid_samples: int = 40
    trajectory_samples: int = 4
    classifier_steps: int = 500


@dataclass(frozen=True)
class Recipe:
    name: str
    output_dir: str
    data: DataSection
    tokenizer: TokenizerSection
    model: str  # path to a models/*.yaml spec
    lm: LMTraining
    seed: int = 0
    text_bpe: TextBPEConfig = field(default_factory=TextBPEConfig)
    shards: TokenizeSettings = field(default_factory=TokenizeSettings)
    eval: EvalSection = field(default_factory=EvalSection)


@dataclass
class LoadedRecipe:
    recipe: Recipe
    path: Path
    tokenizer_spec: TokenizerSpec
    model_spec: ModelSpec

    @property
    def out(self) -> Path:
        return Path(self.recipe.output_dir)


def load_recipe(path: str | Path) -> LoadedRecipe:
    """Read a recipe and the specs it names; every problem is reported with its file and field."""
    path = Path(path)
    recipe = load_config(path, Recipe)
    errors, specs = [], {}
    for field_name, cls in (("tokenizer.spec", TokenizerSpec), ("model", ModelSpec)):
        ref = recipe.tokenizer.spec if field_name == "tokenizer.spec" else recipe.model
        try:
            specs[field_name] = load_config(resolve_spec_path(ref, path), cls)
        except ConfigError as err:
            errors.append(f"{path}: {field_name}: {err}")
    if recipe.lm.media_order == "raster" and "tokenizer.spec" in specs and specs["tokenizer.spec"].quantizer.steps:
        errors.append(f"{path}: lm.media_order: raster needs a tokenizer with quantizer.steps = 0")
    if errors:
        raise ConfigError("\n".join(errors))
    return LoadedRecipe(recipe, path, specs["tokenizer.spec"], specs["model"])


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
    marker.write_text(json.dumps({"key": key, "complete": False}))
    log(f"[run]  {folder}")
    work()
    marker.write_text(json.dumps({"key": key, "complete": True}))
    return True


def stage_key(folder: Path) -> str:
    return json.loads((folder / STAGE_NAME).read_text())["key"]


# --- the stages ----------------------------------------------------------------------------------

class RecipeRun:
    """Runs a loaded recipe's stages in order; each stage's key chains its inputs' keys."""

    def __init__(self, loaded: LoadedRecipe, log: Callable[[str], None] = print):
        self.loaded, self.recipe, self.out, self.log = loaded, loaded.recipe, loaded.out, log

    def run(self, stop_after: str | None = None) -> None:
        for name in ("data", "tokenizer", "text_bpe", "shards", "lm", "eval"):
            getattr(self, f"stage_{name}")()
            if name == stop_after:
                return

    # data -------------------------------------------------------------------------------------
    def data_dirs(self) -> dict[str, tuple[Path, Path | None]]:
        data = self.recipe.data
        if data.digits_world is not None:
            return {split: (self.out / "data" / split, None) for split in ("train", "heldout")}
        return {split: (Path(f.dir), Path(f.captions) if f.captions else None)
                for split, f in (("train", data.train), ("heldout", data.heldout))}

    def stage_data(self) -> None:
        world = self.recipe.data.digits_world
        if world is None:
            return

        def render():
            items = build_digits_world(world)
            for split, (folder, _) in self.data_dirs().items():
                write_image_folder(items[split], folder, world.image_size)

        run_stage(self.out / "data", config_hash(world), render, self.log)

    def load_split_tensors(self, split: str, tokenizer: MediaTokenizer) -> torch.Tensor:
        folder, captions = self.data_dirs()[split]
        return torch.stack([tokenizer.adapter.to_tensor(item.load()) for item in folder_items(folder, captions)])

    # tokenizers -------------------------------------------------------------------------------
    def data_key(self) -> str:
        world = self.recipe.data.digits_world
        return stage_key(self.out / "data") if world is not None else config_hash(self.recipe.data)

    def stage_tokenizer(self) -> None:
        spec, training = self.loaded.tokenizer_spec, self.recipe.tokenizer.training
        folder = self.out / "tokenizers"

        def train():
            probe = MediaTokenizer(spec)
            train_x = self.load_split_tensors("train", probe)
            heldout_x = self.load_split_tensors("heldout", probe)
            metrics = {}
            variants = {spec.name: spec}
            if self.recipe.tokenizer.plain_vq_baseline:
                variants["plain_vq"] = _plain_vq(spec)
            for label, variant in variants.items():
                tokenizer = train_media_tokenizer(variant, train_x, training, self.recipe.seed, desc=f"tokenizer:{label}")
                tokenizer.save_pretrained(folder / label)
                metrics[label] = tokenizer_metrics(tokenizer, heldout_x, self.recipe.seed)
                self.log(f"  {label}: {metrics[label]}")
            (folder / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")

        run_stage(folder, config_hash(self.data_key(), spec, training, self.recipe.seed,
                                      self.recipe.tokenizer.plain_vq_baseline), train, self.log)

    def media_tokenizer(self) -> MediaTokenizer:
        return MediaTokenizer.from_pretrained(self.out / "tokenizers" / self.loaded.tokenizer_spec.name)

    # text BPE + vocabulary --------------------------------------------------------------------
    def stage_text_bpe(self) -> None:
        folder = self.out / "text_tokenizer"

        def train():
            train_dir, captions = self.data_dirs()["train"]
            texts = [item.caption for item in folder_items(train_dir, captions) if item.caption]
            TextBPE.train(texts, self.recipe.text_bpe).save_pretrained(folder)

        run_stage(folder, config_hash(self.data_key(), self.recipe.text_bpe), train, self.log)

    def vocabulary(self) -> Vocabulary:
        tokenizer = self.media_tokenizer()
        text = TextBPE.from_pretrained(self.out / "text_tokenizer")
        return Vocabulary.build(text.vocab_size, text.content_hash(), [tokenizer.layout()])

    # shards -----------------------------------------------------------------------------------
    def stage_shards(self) -> None:
        folder = self.out / "shards"
        vocab = self.vocabulary()

        def tokenize():
            tokenizer, text = self.media_tokenizer(), TextBPE.from_pretrained(self.out / "text_tokenizer")
            for split, (data_dir, captions) in self.data_dirs().items():
                writer = ShardWriter(folder / split, tokenizer, text, vocab, self.recipe.shards)
                totals = writer.write(folder_items(data_dir, captions))
                self.log(f"  shards/{split}: {totals}")

        run_stage(folder, config_hash(self.data_key(), vocab.hash, self.recipe.shards), tokenize, self.log)

    # transformer ------------------------------------------------------------------------------
    def stage_lm(self) -> None:
        folder = self.out / "lm"
        vocab = self.vocabulary()

        def train():
            tokenizer = self.media_tokenizer()
            items = {split: TokenItems.from_dataset(load_shards(self.out / "shards" / split, vocab), tokenizer.num_blocks)
                     for split in ("train", "heldout")}
            model = build_transformer(self.loaded.model_spec, vocab)
            history = train_lm(model, vocab, items["train"], items["heldout"], self.recipe.lm, folder, self.recipe.seed)
            (folder / "history.json").write_text(json.dumps(history, indent=2) + "\n")
            pipeline = UniTokPipeline(model, TextBPE.from_pretrained(self.out / "text_tokenizer"),
                                      {tokenizer.name: tokenizer}, vocab, self.recipe.lm.media_order)
            pipeline.save_pretrained(self.out / "model")

        run_stage(folder, config_hash(stage_key(self.out / "shards"), self.loaded.model_spec, self.recipe.lm,
                                      self.recipe.seed), train, self.log)

    # evaluation -------------------------------------------------------------------------------
    def stage_eval(self) -> None:
        from .eval.recipe_eval import evaluate_recipe

        run_stage(self.out / "eval", config_hash(stage_key(self.out / "lm"), self.recipe.eval, self.recipe.data),
                  lambda: evaluate_recipe(self), self.log)


def _plain_vq(spec: TokenizerSpec) -> TokenizerSpec:
    """The same latent and codebook with T = 0: a plain VQ of the clean latent."""
    quantizer = from_dict(type(spec.quantizer), {**to_dict(spec.quantizer), "steps": 0})
    return from_dict(TokenizerSpec, {**to_dict(spec), "name": "plain_vq", "quantizer": to_dict(quantizer)})
