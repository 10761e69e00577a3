"""RDPM codebook statistics under several processes; run by test_training.py, also under `accelerate launch`.

usage: python ddp_codebook.py OUT
Every process trains two RDPM quantizers for a few steps on its share of the same global batches
(rank i of W takes rows i, i + W, …): `exact` never restarts a code, `restarts` restarts many.
Each rank writes OUT/world-<W>-rank-<i>.pt with both quantizers' buffers.
"""

import sys
from pathlib import Path

import torch
from accelerate import PartialState
from accelerate.utils import parse_flag_from_env

from unitok.tokenizer.rdpm import QuantizerConfig, RDPMQuantizer


def trained_buffers(state: PartialState, **config) -> dict[str, torch.Tensor]:
    torch.manual_seed(state.process_index)  # each process's own RNG: restarts must still agree
    initial = torch.randn(16, 4, generator=torch.Generator().manual_seed(0))
    quantizer = RDPMQuantizer(QuantizerConfig(noise_steps=2, codebook_size=16, **config), latent_channels=4).train()
    quantizer.codebook[:], quantizer.ema_sum[:] = initial, initial  # the same start everywhere
    batches = torch.Generator().manual_seed(1)
    share = slice(state.process_index, None, state.num_processes)
    for _ in range(5):
        z, noise = torch.randn(8, 4, 6, generator=batches), torch.randn(8, 4, 6, generator=batches)
        quantizer(z[share], noise[share])
    return quantizer.state_dict()


def main(out: Path) -> None:
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    buffers = {"exact": trained_buffers(state, dead_code_threshold=1e-9),
               "restarts": trained_buffers(state, ema_decay=0.5, dead_code_threshold=0.9)}
    out.mkdir(parents=True, exist_ok=True)
    torch.save(buffers, out / f"world-{state.num_processes}-rank-{state.process_index}.pt")
    state.wait_for_everyone()
    state.destroy_process_group()  # as Accelerator.end_training does: a live gloo group can abort the exit


if __name__ == "__main__":
    main(Path(sys.argv[1]))
