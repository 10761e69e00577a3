"""A trained run's metrics: tokenizers, the transformer's held-out loss, and, for data from the
digits world, every trained direction (`benchmarks.digits.evaluate`). Writes ``metrics.json``
(its keys: docs/BENCHMARKS.md)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from unitok.benchmarks.digits.evaluate import WorldEval, evaluate_world
from unitok.pipeline import UniTokPipeline


@dataclass(frozen=True)
class EvalRun:
    """What evaluation reads, by path, and where it writes."""

    model: Path  # the saved pipeline
    lm_history: Path  # the LM stage's history.json
    tokenizer_metrics: dict[str, dict]  # modality -> {variant: held-out metrics} of its tokenizer stage
    tokenizer_names: dict[str, str]  # modality -> the name of its main variant in those metrics
    worlds: dict[str, Any]  # modality -> its digits-world config; other modalities get tokenizer metrics only
    world_eval: WorldEval  # metrics.json lands in its `out`, beside the pictures
    log: Callable[[str], None] = print


def evaluate(run: EvalRun) -> dict:
    pipe = UniTokPipeline.from_pretrained(run.model)
    metrics = {"lm": _lm_metrics(run.lm_history)}
    for modality in run.tokenizer_metrics:
        metrics[f"{modality}_tokenizer"] = _tokenizer_metrics(run.tokenizer_metrics[modality],
                                                              run.tokenizer_names[modality])
        if modality in run.worlds:
            evaluate_world(run.world_eval, pipe, modality, run.worlds[modality], metrics)
    (run.world_eval.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    run.log(json.dumps(metrics, indent=2))
    return metrics


def _tokenizer_metrics(measured: dict, main_name: str) -> dict:
    main = measured[main_name]
    result = {"psnr_db": main["psnr_db"], "codebook_usage": main["codebook_usage"]}
    if "plain_vq" in measured:
        result["plain_vq_psnr_db"] = measured["plain_vq"]["psnr_db"]
        result["plain_vq_codebook_usage"] = measured["plain_vq"]["codebook_usage"]
    return result


def _lm_metrics(history_path: Path) -> dict:
    history = json.loads(history_path.read_text())
    best = next((e for e in history["evals"] if e["step"] == history["best_step"]), None)
    if best is None:  # a mixture without held-out shard sets
        return {"heldout_loss": None, "steps_trained": history["step"]}
    return {"heldout_loss": best["loss"], "heldout_ce_per_block": best["ce_per_block"],
            "heldout_loss_per_task": best["loss_per_task"], "best_step": best["step"], "steps_trained": history["step"]}
