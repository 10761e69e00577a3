"""Tiny LM training run used by test_training.py, launched as a script (also under `accelerate launch`).

usage: python ddp_train.py OUTPUT_DIR STEPS [STOP_AFTER_STEP]
Each process writes `rank-<i>.json` with a checksum of its weights after training.
"""

import hashlib
import json
import sys
from pathlib import Path

import torch
from accelerate import PartialState

from unitok.model import ModelSpec, build_transformer
from unitok.training.lm import LMTraining, TokenItems, train_lm
from unitok.vocabulary import MediaLayout, Vocabulary


def tiny_items(vocab: Vocabulary, count: int, seed: int) -> TokenItems:
    g = torch.Generator().manual_seed(seed)
    text = [(torch.randint(0, 30, (5,), generator=g) + vocab.range("text").offset).tolist() for _ in range(count)]
    media = torch.randint(0, 64, (count, 3, 4), generator=g)
    states = torch.randn(count, 3, 4, 2, generator=g)  # any running states of width C = 2
    return TokenItems(text, media + vocab.range("image").offset, states, "image")


def weights_checksum(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


def main(out: Path, steps: int, stop_after: int | None) -> None:
    vocab = Vocabulary.build(40, "t", [MediaLayout("image", "image", 64, "h", num_blocks=5, num_positions=64, latent_channels=2)])
    torch.manual_seed(0)
    model = build_transformer(ModelSpec(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64), vocab)
    initial = weights_checksum(model)
    cfg = LMTraining(steps=steps, batch_size=4, warmup_steps=1, checkpoint_every=2, eval_every=2, eval_items=8,
                     learning_rate=1e-2)
    history = train_lm(model, vocab, {"image": tiny_items(vocab, 64, 1)}, {"image": tiny_items(vocab, 8, 2)}, cfg, out, seed=0,
                       stop_after_step=stop_after)
    state = PartialState()  # after training: the Accelerator inside train_lm set up the processes
    (out / f"rank-{state.process_index}.json").write_text(json.dumps(
        {"initial": initial, "final": weights_checksum(model), "world": state.num_processes, "step": history["step"]}))


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else None)
