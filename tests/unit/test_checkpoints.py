"""Saving the kept weights: every rank gathers (FSDP's collective), the first saves them whole."""

import torch
from safetensors.torch import load_file

from unitok.lm.model import ModelSpec, StreamModel, build_transformer
from unitok.train.checkpoints import save_best


class GatheringAccelerator:
    """Stands in for an FSDP accelerator: `get_state_dict` is the collective that gathers the
    shards (every rank must call it) and returns the whole weights, which the local module lacks."""

    def __init__(self, is_main_process: bool, whole: dict[str, torch.Tensor]):
        self.is_main_process, self.whole, self.gathered = is_main_process, whole, 0

    def get_state_dict(self, model):
        self.gathered += 1
        return self.whole

    def unwrap_model(self, model):
        return model


def test_kept_weights_are_gathered_on_every_rank_and_saved_whole_by_the_first(vocab, tmp_path):
    """accelerate runs FSDP only on accelerators (`use_cpu` makes it plain multi-CPU DDP), so this
    checks the contract FSDP needs on the CPU: every rank takes part in the gathering, and the
    first saves what it gathered, not its own shard."""
    torch.manual_seed(0)
    model = StreamModel(build_transformer(ModelSpec(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64),
                                          vocab))
    whole = {name: torch.full_like(tensor, 0.5) for name, tensor in model.state_dict().items()}
    for rank in (1, 0):
        accelerator = GatheringAccelerator(is_main_process=rank == 0, whole=whole)
        save_best(accelerator, model, tmp_path / f"rank-{rank}")
        assert accelerator.gathered == 1
    assert not (tmp_path / "rank-1").exists()
    saved = load_file(tmp_path / "rank-0" / "model.safetensors")
    assert saved and all(torch.equal(tensor, torch.full_like(tensor, 0.5)) for tensor in saved.values())
