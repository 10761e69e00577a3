"""Tiny LM training run used by test_training.py, launched as a script (also under `accelerate launch`).

usage: python ddp_train.py OUTPUT_DIR STEPS PIPELINE SHARDS
Trains a tiny transformer and a conv reader with PIPELINE's tokenizers on the shard sets
SHARDS/train (both directions, held-out loss on SHARDS/heldout; a batch without image→text
documents leaves the reader without gradients, which DDP must allow). Each process writes
`rank-<i>.json` with a checksum of its weights after training; `log/rank-<i>.jsonl` has every
step's loss and items.
"""

import hashlib
import json
import sys
from pathlib import Path

import torch

from unitok.core.runtime import end_processes, processes
from unitok.data.mixture import ShardMix
from unitok.lm.layout import StreamLayout
from unitok.lm.model import ModelSpec, StreamModel, build_transformer
from unitok.lm.reader import ReaderSpec, build_readers
from unitok.pipeline import PipelineTokenizers
from unitok.train.lm import LMTraining, train_lm


def weights_checksum(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


def main(out: Path, steps: int, pipeline: Path, shards: Path) -> None:
    tokenizers = PipelineTokenizers.from_pretrained(pipeline)
    layout = StreamLayout(reader=ReaderSpec("conv", channels=8, pool=2)).with_default_schedules({"image": 4})
    vocab = tokenizers.vocabulary.with_state_widths(layout.readout_width)  # the tiny tokenizer: T = 4
    torch.manual_seed(0)
    model = StreamModel(build_transformer(ModelSpec(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64),
                                          vocab), build_readers(layout.reader, vocab, tokenizers.media, 32))
    initial = weights_checksum(model)
    cfg = LMTraining(steps=steps, batch_size=4, warmup_steps=1, checkpoint_every=2, eval_every=2, eval_items=8,
                     learning_rate=1e-2, shuffle_buffer=16)
    mixture = [ShardMix(str(shards / "train"), 1.0, "text_to_image", str(shards / "heldout")),
               ShardMix(str(shards / "train"), 0.5, "image_to_text")]
    history = train_lm(model, vocab, tokenizers.media, layout, mixture, cfg, out, seed=0)
    state = processes()
    (out / f"rank-{state.process_index}.json").write_text(json.dumps(
        {"initial": initial, "final": weights_checksum(model), "world": state.num_processes, "step": history["step"]}))
    end_processes()


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))
