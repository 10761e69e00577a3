"""Recipe stages: data, tokenizers, text BPE, shards, transformer, pipeline, evaluation.

Each stage writes into its own folder under the recipe's `output_dir` and records a hash of
everything it depends on in ``stage.json``. A re-run skips stages whose hash matches and whose
output is complete, re-does a stage whose inputs changed, and resumes an interrupted one
(shards and LM training resume at the exact point they reached).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Callable

import torch
from accelerate.utils import set_seed

from unitok.benchmarks.digits.evaluate import WorldEval
from unitok.benchmarks.digits.world import write_world_folders
from unitok.core.atomic import write_text_atomic
from unitok.core.config import ConfigError, config_hash, from_dict, to_dict
from unitok.core.errors import UnitokError
from unitok.core.runtime import processes
from unitok.data.mixture import ShardMix
from unitok.data.shard_writer import ShardWriter
from unitok.data.shards import FORMAT as SHARD_FORMAT
from unitok.data.shards import read_manifest
from unitok.data.sources import FolderSource, SourceItem
from unitok.data.tasks import task_modality
from unitok.hub import write_model_card
from unitok.lm.documents import DOCUMENT_FORMAT
from unitok.lm.layout import StreamLayout
from unitok.lm.model import StreamModel, build_transformer, media_modules, tied_code_ranges
from unitok.pipeline import INDEX_FORMAT, INDEX_NAME, PipelineTokenizers, UniTokPipeline
from unitok.recipe.evaluate import EvalRun, evaluate
from unitok.recipe.schema import LoadedRecipe
from unitok.tokenizer.media_tokenizer import MediaTokenizer, TokenizerSpec, block_sizes, frames_tokenizer
from unitok.tokenizer.text_bpe import TextBPE
from unitok.tokenizer.vocabulary import Vocabulary
from unitok.train.lm import train_lm
from unitok.train.tokenizer import tokenizer_metrics, train_media_tokenizer
from unitok.visualize import plot_losses

STAGE_NAME = "stage.json"
STAGES = ("data", "tokenizer", "text_bpe", "shards", "lm", "pipeline", "eval")
SAMPLE_GRIDS = ("samples.png", "audio_samples.png", "video_samples.png")  # the model card shows the first


# --- stage bookkeeping ---------------------------------------------------------------------------

def run_stage(folder: Path, key: str, work: Callable[[], None], log: Callable[[str], None] = print,
              every_rank: bool = False) -> bool:
    """Run `work` unless `folder` holds a complete result for the same `key`. Returns whether it ran.

    Under several processes (``accelerate launch``) the main process keeps the folder and its
    marker. `work` runs on the main process alone, after which the others find the stage done;
    with `every_rank` (a distributed stage: training, sharding) it runs on every process at once,
    and saves what it makes from the main process only."""
    state = processes()
    if not every_rank:
        with state.main_process_first():
            return _run_on_this_process(folder, key, work, log)
    done, changed = _stage_state(folder, key)
    state.wait_for_everyone()  # every rank has read the marker before the main one rewrites it
    if done:
        log(f"[skip] {folder} (up to date)")
        return False
    if state.is_main_process:
        _open_stage(folder, key, changed, log)
    state.wait_for_everyone()
    work()
    state.wait_for_everyone()
    if state.is_main_process:
        write_text_atomic(folder / STAGE_NAME, json.dumps({"key": key, "complete": True}))
    state.wait_for_everyone()
    return True


def _run_on_this_process(folder: Path, key: str, work: Callable[[], None], log: Callable[[str], None]) -> bool:
    done, changed = _stage_state(folder, key)
    if done:
        log(f"[skip] {folder} (up to date)")
        return False
    _open_stage(folder, key, changed, log)
    work()
    write_text_atomic(folder / STAGE_NAME, json.dumps({"key": key, "complete": True}))
    return True


def _stage_state(folder: Path, key: str) -> tuple[bool, bool]:
    """(complete for `key`, made for another key) of a stage folder."""
    marker = folder / STAGE_NAME
    if not marker.is_file():
        return False, False
    stage = json.loads(marker.read_text())
    return stage.get("key") == key and bool(stage.get("complete")), stage.get("key") != key


def _open_stage(folder: Path, key: str, changed: bool, log: Callable[[str], None]) -> None:
    """Empty a folder made for other inputs, then mark the stage as begun."""
    if changed:
        log(f"[redo] {folder}: its inputs changed")
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(folder / STAGE_NAME, json.dumps({"key": key, "complete": False}))
    log(f"[run]  {folder}")


def stage_key(folder: Path) -> str:
    return json.loads((folder / STAGE_NAME).read_text())["key"]


# --- the stages ----------------------------------------------------------------------------------

class RecipeRun:
    """Runs a loaded recipe's stages in order; each stage's key chains its inputs' keys.
    `classifier_dir` is where evaluation keeps its digit classifier (default: ``eval/classifier``)."""

    def __init__(self, loaded: LoadedRecipe, log: Callable[[str], None] = print, classifier_dir: Path | None = None):
        self.loaded, self.recipe, self.out = loaded, loaded.recipe, loaded.out
        self.main = processes().is_main_process  # the process that writes what a distributed stage makes
        self.log = log if self.main else (lambda _: None)
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

    def split_source(self, modality: str, split: str) -> FolderSource:
        """A split's items: its manifest's lines (splits may share a folder, a manifest each)."""
        folder, captions = self.data_dirs(modality)[split]
        return FolderSource(folder, captions, every_file=False)

    def split_items(self, modality: str, split: str) -> list[SourceItem]:
        return list(self.split_source(modality, split))

    def split_tensors(self, modality: str, split: str, tokenizer: MediaTokenizer) -> torch.Tensor:
        """The split's media, each file once (a file may have several captions), preprocessed by
        `tokenizer`'s adapter and stacked (M, C, …)."""
        files = dict.fromkeys(item.media for item in self.split_items(modality, split))
        return torch.stack([tokenizer.adapter.to_tensor(path) for path in files])

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
            if section.frames_from:
                self.stage_frames_tokenizer(modality, spec, section.frames_from)
                continue

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
                                                      tracker_dir=folder / "trackers",
                                                      tracker_config=to_dict(self.recipe))
                    if self.main:
                        tokenizer.save_pretrained(target)
                        metrics[label] = tokenizer_metrics(tokenizer, inputs["heldout"], self.recipe.seed)
                        self.log(f"  {modality}/{label}: {metrics[label]}")
                if self.main:
                    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")

            run_stage(folder, config_hash(self.data_key(modality), spec, replace(section.training, log_with=[]),
                                          self.recipe.seed, section.plain_vq_baseline), train, self.log,
                      every_rank=True)

    def stage_frames_tokenizer(self, modality: str, spec: TokenizerSpec, source: str) -> None:
        """A tokenizer that codes every frame with the trained `source` tokenizer (`frames_tokenizer`):
        nothing to train; its held-out metrics as a trained one's."""
        folder, source_folder = self.out / "tokenizers" / modality, self.out / "tokenizers" / source

        def build():
            tokenizer = frames_tokenizer(spec, MediaTokenizer.from_pretrained(source_folder))
            tokenizer.save_pretrained(folder)
            metrics = {spec.name: tokenizer_metrics(tokenizer, self.split_tensors(modality, "heldout", tokenizer),
                                                    self.recipe.seed)}
            self.log(f"  {modality}/{spec.name} (frames from {source}): {metrics[spec.name]}")
            (folder / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")

        run_stage(folder, config_hash(self.data_key(modality), stage_key(source_folder), spec, self.recipe.seed),
                  build, self.log)

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
        vocabulary = tokenizers.vocabulary.with_state_widths(self.recipe.layout.readout_width,
                                                             self.recipe.layout.query_width)
        return replace(tokenizers, vocabulary=vocabulary)

    def layout(self, tokenizers: PipelineTokenizers) -> StreamLayout:
        """The recipe's layout, checked against the tokenizers (those of `tokenizers_from` are known
        only now) and with one group per generated block for ranges it gives no schedule."""
        try:
            return self.recipe.layout.fitted(block_sizes(tokenizers.media))
        except UnitokError as err:
            raise ConfigError(f"{self.loaded.path}: {err}") from None

    # text BPE + vocabulary --------------------------------------------------------------------
    def stage_text_bpe(self) -> None:
        """One BPE over the captions of every modality's training items."""
        if self.loaded.from_shards:
            return
        folder = self.out / "text_tokenizer"

        def train():
            texts = [item.caption for m in self.loaded.modalities for item in self.split_items(m, "train")
                     if item.caption]
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
                for split in self.data_dirs(modality):
                    writer = ShardWriter(self.shard_dir(modality, split), tokenizer, text, vocab, self.recipe.shards)
                    self.log(f"  shards/{modality}/{split}: {writer.write(self.split_source(modality, split))}")

        data_keys = [self.data_key(m) for m in self.loaded.modalities]
        run_stage(folder, config_hash(*data_keys, vocab.hash, self.recipe.shards, SHARD_FORMAT), tokenize, self.log,
                  every_rank=True)

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

    def trained_tasks(self) -> list[str]:
        """The tasks the transformer trains on: those of the mixture with a positive weight."""
        tasks = [mix.task or read_manifest(mix.shards)["settings"]["task"] for mix in self.mixture() if mix.weight > 0]
        return sorted(set(tasks))

    # transformer ------------------------------------------------------------------------------
    def stage_lm(self) -> bool:
        """Train the transformer; its best weights land in ``lm/transformer`` (`save_pretrained`)."""
        folder = self.out / "lm"
        tokenizers = self.tokenizers()
        layout = self.layout(tokenizers)
        mixture = self.mixture()

        def train():
            set_seed(self.recipe.seed)  # the initial weights depend on the recipe only, not on earlier stages
            spec, vocabulary = self.loaded.model_spec, tokenizers.vocabulary
            model = StreamModel(build_transformer(spec, vocabulary),
                                **media_modules(layout, vocabulary, tokenizers.media, spec.hidden_size),
                                tied_codes=tied_code_ranges(layout, vocabulary, tokenizers.media))
            history = train_lm(model, vocabulary, tokenizers.media, layout, mixture, self.recipe.lm, folder,
                               self.recipe.seed, tracker_config=to_dict(self.recipe))
            if self.main:
                (folder / "history.json").write_text(json.dumps(history, indent=2) + "\n")
                model.save_pretrained(folder / "transformer")
                plot_losses(folder / "log" / "rank-0.jsonl", history, self.out / "loss.png")

        data_key = [read_manifest(m.shards)["shards"] for m in mixture] if self.loaded.from_shards \
            else stage_key(self.out / "shards")
        lm = replace(self.recipe.lm, log_with=[])  # trackers do not change what is trained
        return run_stage(folder, config_hash(data_key, mixture, self.loaded.model_spec, lm, layout, self.recipe.seed,
                                             tokenizers.vocabulary.hash, DOCUMENT_FORMAT), train, self.log,
                         every_rank=True)

    # pipeline ---------------------------------------------------------------------------------
    def stage_pipeline(self) -> bool:
        """Save ``model/``: the trained transformer, tokenizers, vocabulary, layout and sampler
        settings. Its own stage, so that other sampler settings do not re-train the transformer."""
        tokenizers = self.tokenizers()
        modalities = {t.modality for t in tokenizers.media.values()}
        samplers = {m: config for m, config in self.recipe.samplers.items() if m in modalities}

        def assemble():
            layout = self.layout(tokenizers)
            model = StreamModel.from_pretrained(self.out / "lm" / "transformer", **media_modules(
                layout, tokenizers.vocabulary, tokenizers.media, self.loaded.model_spec.hidden_size))
            UniTokPipeline(model.transformer, tokenizers.text, tokenizers.media, tokenizers.vocabulary, layout,
                           samplers, self.trained_tasks(), readers=dict(model.readers),
                           code_heads=dict(model.code_heads)).save_pretrained(self.out / "model")

        key = config_hash(stage_key(self.out / "lm"), samplers, INDEX_FORMAT)  # a new format re-saves the pipeline
        return run_stage(self.out / "model", key, assemble, self.log)

    # evaluation -------------------------------------------------------------------------------
    def stage_eval(self) -> bool:
        modalities = self.loaded.modalities
        worlds = {m: getattr(self.recipe.data, m).digits_world for m in modalities}
        run = EvalRun(
            model=self.out / "model", lm_history=self.out / "lm" / "history.json",
            tokenizer_metrics={m: json.loads((self.out / "tokenizers" / m / "metrics.json").read_text())
                               for m in modalities},
            tokenizer_names={m: spec.name for m, spec in self.loaded.tokenizer_specs.items()},
            worlds={m: world for m, world in worlds.items() if world is not None},
            world_eval=WorldEval(
                out=self.out, classifier=self.classifier_dir,
                shards={m: {split: self.shard_dir(m, split) for split in ("train", "heldout")} for m in modalities},
                heldout_media={m: self.data_dirs(m)["heldout"][0] for m in modalities},
                tasks=self.recipe.lm.tasks, evaluation=self.recipe.eval, seed=self.recipe.seed),
            log=self.log)

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
    quantizer = from_dict(type(spec.quantizer), {**to_dict(spec.quantizer), "noise_steps": 0})
    return from_dict(TokenizerSpec, {**to_dict(spec), "name": "plain_vq", "quantizer": to_dict(quantizer)})
