"""Generation against LM training steps: which design, and how much training, a target needs.
The table scores one direction of the recipe: text→media (images by default) or media→text.

A sweep file names a base recipe and a set of runs. A run is a recipe (the base by default) with
overrides, trained at every step count of the sweep and evaluated with each of its samplers::

    kind: generation
    recipe: quickstart-t4               # a shipped recipe's name, or a recipe file
    output_dir: runs/sweeps/generation
    lm_steps: [500, 1000, 2000, 4000]   # every run's LM is trained for each (a run may list its own)
    eval: {num_samples: 200}            # merged into every run's eval section
    direction: text_to_image            # the recipe's direction the table scores (default)
    runs:
      raster_ar: {recipe: quickstart-ar}
      groups_8211:
        overrides: {layout: {decode: {image: {groups: [8, 2, 1, 1]}}}}   # merged into the recipe
        samplers: {sampled: {}, greedy: {gumbel_scale: 0.0}}
      T2:
        spec_overrides: {image: {quantizer: {noise_steps: 2}}}   # written to <output_dir>/specs/
        overrides: {layout: {decode: {image: {groups: [8, 2]}}}}

Data, tokenizers, text BPE and shards are made once for all runs with the same settings
(``<output_dir>/upstream-<hash>``) and linked into their points. A run's LM is trained once per
step count (``<run>/steps-<n>``), and each sampler gets its own pipeline and evaluation
(``<run>/steps-<n>/<sampler>``), all as recipe stages, so an interrupted sweep resumes and a
finished point is skipped. Every point's folder holds the
recipe it ran (``recipe.yaml``). The table of held-out scores, documents seen, passes and wall times lands in
``<output_dir>/results.md`` and ``results.json``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from unitok.configs import find_recipe, find_spec
from unitok.core.config import Config, ConfigError, bounded, config_hash, load_config, merged
from unitok.data.tasks import generates_media, is_task, task_modality
from unitok.recipe.schema import load_recipe
from unitok.recipe.stages import RecipeRun

UPSTREAM_STAGES = ("data", "tokenizers", "text_tokenizer", "shards")  # stage folders that points share
UPSTREAM_SECTIONS = ("data", "tokenizers", "text_bpe", "shards", "seed")  # the recipe sections they depend on
# the table's columns for a text→media direction and a media→text one (`results_table` leaves out
# those that no row scores: an image has no direction, a clip no position)
COLUMNS = ("lm_steps", "documents", "passes", "digit_accuracy", "unseen_combo_digit_accuracy", "color_accuracy",
           "position_accuracy", "direction_accuracy", "digit_direction_accuracy", "dtmf_sequence_accuracy",
           "unseen_pair_accuracy", "fid", "first_step_digit_ce_gain", "heldout_loss", "lm_seconds", "eval_seconds")
TO_TEXT_COLUMNS = ("lm_steps", "documents", "digit_accuracy", "color_accuracy", "direction_accuracy",
                   "digit_color_accuracy", "digit_direction_accuracy", "caption_loss_matched", "caption_loss_shuffled",
                   "heldout_loss", "lm_seconds", "eval_seconds")


@dataclass(frozen=True)
class SweepRun(Config):
    recipe: str | None = None  # default: the sweep's base recipe
    overrides: dict[str, Any] = field(default_factory=dict)  # merged into the recipe
    # modality -> merged into its tokenizer spec
    spec_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    lm_steps: list[int] | None = bounded(None, ge=1)  # default: the sweep's
    # sampler name -> settings merged into the recipe's sampler for the direction's media (for a
    # media→text direction: into eval.text_sampler)
    samplers: dict[str, dict[str, Any]] = field(default_factory=lambda: {"recipe": {}})

    def rules(self):
        yield bool(self.samplers), "samplers", "name at least one (an empty mapping {} keeps the recipe's settings)"


@dataclass(frozen=True)
class GenerationSweep(Config):
    kind: Literal["generation"]
    recipe: str
    output_dir: str
    runs: dict[str, SweepRun]
    lm_steps: list[int] = bounded(default_factory=lambda: [500, 1000, 2000, 4000], ge=1)
    direction: str = "text_to_image"  # a task of the recipe, e.g. image_to_text
    eval: dict[str, Any] = field(default_factory=dict)

    def rules(self):
        yield (is_task(self.direction) and self.direction != "text", "direction",
               f"expected a text-to-media or media-to-text task, got {self.direction!r}")
        yield bool(self.runs), "runs", "list at least one run"
        yield bool(self.lm_steps), "lm_steps", "list at least one step count"


def plan_generation_sweep(path: str | Path, log=print, output_dir: str | Path | None = None) -> tuple:
    """Every point of the sweep laid out (its recipe written and checked) before anything trains:
    (sweep, output folder, [(run name, upstream run, [(LM run, {sampler name: evaluated run})]
    per step count)]). `output_dir` replaces the sweep's own."""
    path = Path(path)
    sweep = load_config(path, GenerationSweep)
    out = Path(output_dir or sweep.output_dir)
    plan = []
    for name, run in sweep.runs.items():
        recipe = _run_recipe(sweep, run, path, out)

        def with_sampler(recipe: dict, sampler: dict) -> dict:
            if not generates_media(sweep.direction):
                return merged(recipe, {"eval": {"text_sampler": sampler}})
            return merged(recipe, {"samplers": {task_modality(sweep.direction): sampler}})

        # upstream and LM points carry the run's first sampler: the recipe's own may not fit (another T)
        first = next(iter(run.samplers.values()))
        upstream = _point(with_sampler(recipe, first),
                          out / f"upstream-{config_hash(*(recipe.get(k) for k in UPSTREAM_SECTIONS))}", {}, log)
        trainings = []
        for steps in run.lm_steps or sweep.lm_steps:
            lm_recipe = merged(recipe, {"lm": {"steps": steps}})
            folder = out / name / f"steps-{steps:06d}"
            lm_run = _point(with_sampler(lm_recipe, first), folder,
                            {stage: upstream.out / stage for stage in UPSTREAM_STAGES}, log)
            points = {sampler_name: _point(with_sampler(lm_recipe, sampler), folder / sampler_name,
                                           {stage: folder / stage for stage in (*UPSTREAM_STAGES, "lm")}, log,
                                           classifier_dir=out / "classifier")
                      for sampler_name, sampler in run.samplers.items()}
            trainings.append((lm_run, points))
        plan.append((name, upstream, trainings))
    return sweep, out, plan


def run_generation_sweep(path: str | Path, log=print) -> dict[str, dict]:
    """Train and evaluate every point of the sweep (each skipped when done), then write its table."""
    sweep, out, plan = plan_generation_sweep(path, log)
    results = {}
    for name, upstream, trainings in plan:
        upstream.run(stop_after="shards")
        for lm_run, points in trainings:
            lm_run.stage_lm()
            for sampler_name, point in points.items():
                point.stage_pipeline()
                started = time.perf_counter()
                if point.stage_eval():
                    (point.out / "eval_seconds.json").write_text(json.dumps(time.perf_counter() - started))
                key = f"{name}/{lm_run.recipe.lm.steps}/{sampler_name}"
                results[key] = _row(name, sampler_name, point, sweep.direction)
                log(f"  {key}: {results[key]}")
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(results_table(results, _columns(sweep.direction)))
    return results


def _run_recipe(sweep: GenerationSweep, run: SweepRun, sweep_path: Path, out: Path) -> dict:
    """The run's recipe as data: overrides and the sweep's eval merged in, spec paths made absolute
    so that the copy in each point's folder loads from there."""
    recipe_path = find_recipe(run.recipe or sweep.recipe, sweep_path)
    recipe = merged(yaml.safe_load(recipe_path.read_text()), run.overrides)
    recipe["eval"] = merged(recipe.get("eval") or {}, sweep.eval)
    for modality, section in (recipe.get("tokenizers") or {}).items():
        section["spec"] = str(find_spec(section["spec"], recipe_path).resolve())
        if modality in run.spec_overrides:
            spec = merged(yaml.safe_load(Path(section["spec"]).read_text()), run.spec_overrides[modality])
            section["spec"] = str(_write_yaml(spec, out / "specs" / f"{config_hash(spec)}.yaml"))
    unknown = set(run.spec_overrides) - set(recipe.get("tokenizers") or {})
    if unknown:
        raise ConfigError(f"{sweep_path}: spec_overrides: the recipe has no {sorted(unknown)} tokenizer")
    recipe["model"] = str(find_spec(recipe["model"], recipe_path).resolve())
    return recipe


def _write_yaml(data: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path.resolve()


def _point(recipe: dict, folder: Path, links: dict[str, Path], log, classifier_dir: Path | None = None) -> RecipeRun:
    """A recipe run in `folder` (its recipe written there) whose stage folders named in `links`
    are those of another point, linked."""
    path = _write_yaml({**recipe, "output_dir": str(folder)}, folder / "recipe.yaml")
    for stage, target in links.items():
        link = folder / stage
        if not link.is_symlink():
            link.symlink_to(target.resolve(), target_is_directory=True)
    return RecipeRun(load_recipe(path), log, classifier_dir)


def _columns(direction: str) -> tuple[str, ...]:
    return COLUMNS if generates_media(direction) else TO_TEXT_COLUMNS


def _row(run: str, sampler: str, point: RecipeRun, direction: str) -> dict:
    metrics = json.loads((point.out / "metrics.json").read_text())
    history = json.loads((point.out / "lm" / "history.json").read_text())
    scores = metrics[direction]
    lm = point.recipe.lm
    row = {"run": run, "sampler": sampler, "lm_steps": metrics["lm"]["steps_trained"],
           "documents": metrics["lm"]["steps_trained"] * lm.batch_size * lm.grad_accum,  # per process
           "heldout_loss": metrics["lm"]["heldout_loss"], "lm_seconds": round(history.get("seconds", 0.0)),
           "eval_seconds": round(json.loads((point.out / "eval_seconds.json").read_text()))}
    row |= {key: scores[key] for key in _columns(direction) if key in scores}
    if direction == "text_to_image":
        row["first_step_digit_ce_gain"] = metrics["lm"].get("first_step_digit_ce_gain")
    return row


def results_table(results: dict[str, dict], columns: tuple[str, ...] = COLUMNS) -> str:
    """Markdown rows of `results`; a column that no row scores (e.g. direction for images) is left out."""
    columns = tuple(c for c in columns if any(c in row for row in results.values()))
    lines = ["| run | sampler | " + " | ".join(columns) + " |", "|---" * (len(columns) + 2) + "|"]
    for row in results.values():
        cells = [f"{row[c]:.3g}" if isinstance(row.get(c), float) else str(row.get(c, "")) for c in columns]
        lines.append(f"| {row['run']} | {row['sampler']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
