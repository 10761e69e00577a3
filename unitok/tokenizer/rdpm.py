"""RDPM recurrent quantizer (docs/RDPM.md has the full formulation).

A latent ``z`` (B, C, N) is noised along a trajectory ``z_t = sqrt(ᾱ_t)·z + sqrt(1-ᾱ_t)·ε``
(t = 0 … T, cosine ᾱ, z_0 = z, z_T = ε). From the noisiest step down, each step quantizes what the
running state still lacks::

    s_{T+1} = 0
    r_t = z_t − s_{t+1};  k_t = argmin_j ‖r_t/σ_t − c_j‖;  s_t = s_{t+1} + σ_t·c[k_t]

Tokens are the blocks ``[k_T, …, k_0]`` (block b holds step t = T − b). ``s_0`` approximates
the clean latent. ``σ_t`` is a per-step running RMS of ``r_t`` so one codebook serves residuals
of very different size. T = 0 is a plain VQ of the clean latent (the raster baseline's tokens).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from unitok.core.config import Config, bounded
from unitok.core.errors import UnitokError


@dataclass(frozen=True)
class QuantizerConfig(Config):
    MOVED = {"steps": "renamed noise_steps (unitok 0.3)",
             "schedule": "removed in unitok 0.3: the noise schedule is always cosine",
             "trajectory": "removed in unitok 0.3: one noise draw per item",
             "codebook_per_step": "removed in unitok 0.3: one codebook serves every step"}

    noise_steps: int = bounded(10, ge=0)  # T; 0 = plain VQ of the clean latent
    codebook_size: int = bounded(512, ge=2)  # K
    # "quantized": the trajectory is built from ε̂ = σ_T·c[k_T], the noise as the tokens hold it, so
    # every later residual is a function of z and tokens the model has seen. "subtracted": from ε̂
    # too, but every step quantizes only what ε̂ does not already determine; the noise's share of
    # each step is added to the state exactly (the shipped T = 1 tokenizers: docs/RDPM.md)
    noise: Literal["quantized", "subtracted"] = "quantized"
    commitment_weight: float = bounded(0.25, ge=0)
    ema_decay: float = bounded(0.99, gt=0, lt=1)  # EMA codebook and σ_t updates
    dead_code_threshold: float = bounded(0.5, ge=0)  # EMA use count below which a code is restarted


def alpha_bar_schedule(noise_steps: int) -> torch.Tensor:
    """Cosine ᾱ_0 = 1 > ᾱ_1 > … > ᾱ_T = 0, shape (T+1,)."""
    t = torch.arange(noise_steps + 1, dtype=torch.float64) / max(noise_steps, 1)
    alpha_bar = torch.cos(0.5 * math.pi * t) ** 2
    alpha_bar[0] = 1.0
    if noise_steps > 0:
        alpha_bar[-1] = 0.0
    return alpha_bar.float()


class QuantizerOutput(NamedTuple):
    ids_BTN: torch.Tensor  # (B, T+1, N) code ids, block b = step T − b
    s0_BCN: torch.Tensor  # (B, C, N) quantized clean latent (no gradient)
    commitment_loss: torch.Tensor  # scalar, mean over steps


class RDPMQuantizer(nn.Module):
    def __init__(self, config: QuantizerConfig, latent_channels: int):
        super().__init__()
        self.config = config
        T, K, C = config.noise_steps, config.codebook_size, latent_channels
        self.register_buffer("alpha_bar", alpha_bar_schedule(T))
        self.register_buffer("codebook", torch.randn(K, C))  # unit-scale residual space, shared by every step
        self.register_buffer("ema_count", torch.ones(K))
        self.register_buffer("ema_sum", self.codebook.clone())
        self.register_buffer("step_scale", torch.ones(T + 1))  # σ_t, indexed by t
        self.register_buffer("initialized", torch.tensor(False))

    @property
    def noise_steps(self) -> int:
        return self.config.noise_steps

    @property
    def num_blocks(self) -> int:
        return self.config.noise_steps + 1

    # --- forward trajectory ----------------------------------------------------------------------
    def trajectory(self, z_BCN: torch.Tensor, eps_BCN: torch.Tensor) -> list[torch.Tensor]:
        """Noisy latents [z_0, …, z_T] from one noise draw; z_0 = z and z_T is pure noise."""
        a = self.alpha_bar
        return [a[t].sqrt() * z_BCN + (1 - a[t]).sqrt() * eps_BCN for t in range(self.noise_steps + 1)]

    # --- recurrent quantization ------------------------------------------------------------------
    def nearest_code(self, residual_BCN: torch.Tensor, t: int) -> torch.Tensor:
        """Ids (B, N) of the codes nearest to residual/σ_t."""
        B, C, N = residual_BCN.shape
        x = (residual_BCN / self.step_scale[t]).transpose(1, 2).reshape(B * N, C)
        codes = self.codebook  # (K, C)
        # ‖x‖² is the same for every code: ‖c‖² − 2·x·c in one fused matmul ranks the codes alike and
        # writes one (B·N, K) matrix instead of three, which is what large codebooks spend their time on
        dist = torch.addmm(codes.pow(2).sum(-1), x, codes.T, alpha=-2)
        return dist.argmin(-1).view(B, N)

    def code_vectors(self, ids_BN: torch.Tensor, t: int) -> torch.Tensor:
        """σ_t · c[k] as (B, C, N)."""
        return self.step_scale[t] * F.embedding(ids_BN, self.codebook).transpose(1, 2)

    def forward(self, z_BCN: torch.Tensor, eps_BCN: torch.Tensor) -> QuantizerOutput:
        """Quantize the trajectory of `z` under noise ε; in training mode also update σ_t and the EMA codebook."""
        if self.training and not bool(self.initialized):
            self._init_scales(self.trajectory(z_BCN, eps_BCN))
        eps_hat = self.quantized_noise(eps_BCN)
        noisy = self.trajectory(z_BCN, eps_hat)
        state = torch.zeros_like(z_BCN)
        ids, commitment = [], []
        for t in range(self.noise_steps, -1, -1):
            state = state + self._known_noise(t, eps_hat)
            residual = noisy[t] - state.detach()  # what the running state still lacks
            with torch.no_grad():
                if self.training:
                    self._update_scale(t, residual)
                k = self.nearest_code(residual, t)
                step = self.code_vectors(k, t)
            scale = self.step_scale[t].clone()  # σ_t is updated in place by the next batch's steps
            commitment.append(F.mse_loss(residual / scale, step / scale))
            if self.training:
                self._update_codebook(t, residual.detach(), k)
            state = state.detach() + step
            ids.append(k)
        ids_BTN = torch.stack(ids, dim=1)
        return QuantizerOutput(ids_BTN, state.detach(), torch.stack(commitment).mean())

    @torch.no_grad()
    def quantized_noise(self, eps_BCN: torch.Tensor) -> torch.Tensor:
        """ε̂ = σ_T·c[k_T], the noise as the first block holds it (B, C, N)."""
        return self.code_vectors(self.quantize_noise(eps_BCN), self.noise_steps)

    def _known_noise(self, t: int, eps_hat_BCN: torch.Tensor) -> torch.Tensor:
        """With noise "subtracted": the share of ε̂ that step t < T adds to the trajectory, which the
        tokens before it already determine; 0 otherwise."""
        if self.config.noise != "subtracted" or t == self.noise_steps:
            return torch.zeros_like(eps_hat_BCN)
        a = self.alpha_bar
        return ((1 - a[t]).sqrt() - (1 - a[t + 1]).sqrt()) * eps_hat_BCN

    def quantize_noise(self, noise_BCN: torch.Tensor) -> torch.Tensor:
        """k_T for sampling: the tokenizer's own quantization of pure noise ε, (B, N)."""
        return self.nearest_code(noise_BCN, self.noise_steps)

    # --- ids -> latents --------------------------------------------------------------------------
    def check_ids(self, ids_BTN: torch.Tensor) -> None:
        if ids_BTN.dim() != 3 or ids_BTN.shape[1] != self.num_blocks:
            raise UnitokError(f"expected ids of shape (B, {self.num_blocks}, N), got {tuple(ids_BTN.shape)}")
        self._check_code_range(ids_BTN)

    def _check_code_range(self, ids: torch.Tensor) -> None:
        K = self.config.codebook_size
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= K):
            raise UnitokError(
                f"code ids out of range [0, {K}): min {int(ids.min())}, max {int(ids.max())}"
                " (global vocabulary ids must be converted to local ids first)"
            )

    def states(self, ids_BTN: torch.Tensor) -> list[torch.Tensor]:
        """Running states [s_T, …, s_0] from blocks [k_T, …, k_0]; each (B, C, N)."""
        self.check_ids(ids_BTN)
        return list(self.running_states(ids_BTN).transpose(2, 3).unbind(1))

    def running_states(self, ids_BbN: torch.Tensor) -> torch.Tensor:
        """(B, b, N, C): the states s_T, …, s_{T−b+1} after each of the first b ≤ T+1 blocks
        [k_T, …]; what a code's transformer input carries (`model.StreamModel`)."""
        if ids_BbN.dim() != 3 or ids_BbN.shape[1] > self.num_blocks:
            raise UnitokError(f"expected ids of shape (B, b ≤ {self.num_blocks}, N), got {tuple(ids_BbN.shape)}")
        self._check_code_range(ids_BbN)
        T = self.noise_steps
        steps = [self.code_vectors(ids_BbN[:, b], T - b) for b in range(ids_BbN.shape[1])]  # each (B, C, N)
        if not steps:
            return ids_BbN.new_zeros(*ids_BbN.shape, self.codebook.shape[-1], dtype=self.codebook.dtype)
        steps = [step + self._known_noise(T - b, steps[0]) for b, step in enumerate(steps)]
        return torch.stack(steps, dim=1).cumsum(dim=1).transpose(2, 3)

    def block_inputs(self, ids_BbN: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What the transformer may know at every cell of the first b blocks (`model.StreamModel`),
        as a *context* (its code drawn) and as a *query* (to be drawn), each (B, b, N, 2C): the
        running state at the cell, which holds the blocks before its own (``s_{t+1}``; 0 before
        ``k_T``) and, for a context, its own code's step ``σ_t·c[k_t]``; and the noise as ``k_T``
        holds it (``ε̂ = s_T``). The residual a block quantizes is
        ``sqrt(ᾱ_t)·z + sqrt(1−ᾱ_t)·ε̂ − s_{t+1}``: the noise is needed beside the state to tell the
        clean latent from it. A query's inputs never depend on its own code (``k_T``, always given,
        aside: ε̂ is its step)."""
        after = self.running_states(ids_BbN)  # (B, b, N, C)
        before = torch.cat([torch.zeros_like(after[:, :1]), after[:, :-1]], dim=1)
        noise = after[:, :1].expand_as(after)
        return torch.cat([after, noise], dim=-1), torch.cat([before, noise], dim=-1)

    def dequantize(self, ids_BTN: torch.Tensor) -> torch.Tensor:
        """s_0 (B, C, N): the sum of every step's scaled code vectors."""
        return self.states(ids_BTN)[-1]

    # --- training-time statistics ----------------------------------------------------------------
    @torch.no_grad()
    def _init_scales(self, noisy: list[torch.Tensor]) -> None:
        """σ_t from the first batch: quantize once with the initial codebook and record residual RMS."""
        state = torch.zeros_like(noisy[0])
        for t in range(self.noise_steps, -1, -1):
            state = state + self._known_noise(t, noisy[self.noise_steps])
            residual = noisy[t] - state
            self.step_scale[t] = _rms_over_processes(residual)
            state = state + self.code_vectors(self.nearest_code(residual, t), t)
        self.initialized.fill_(True)

    @torch.no_grad()
    def _update_scale(self, t: int, residual: torch.Tensor) -> None:
        self.step_scale[t].lerp_(_rms_over_processes(residual), 1 - self.config.ema_decay)

    @torch.no_grad()
    def _update_codebook(self, t: int, residual_BCN: torch.Tensor, ids_BN: torch.Tensor) -> None:
        """EMA k-means step on residual/σ_t, then restart codes whose use fell below the threshold.
        Under several processes the counts and sums are those of the whole batch, and every process
        restarts with the same vectors, so the codebooks stay equal without DDP's buffer broadcast."""
        decay = self.config.ema_decay
        x = (residual_BCN / self.step_scale[t]).transpose(1, 2).reshape(-1, residual_BCN.shape[1])  # (B·N, C)
        ids = ids_BN.reshape(-1)
        counts = torch.bincount(ids, minlength=self.config.codebook_size).type_as(x)  # (K,)
        C = x.shape[1]  # per-code sums via bincount: index_add_ is ~100x slower on CPU here
        flat = (ids[:, None] * C + torch.arange(C, device=x.device)).reshape(-1)
        sums = torch.bincount(flat, weights=x.reshape(-1), minlength=counts.numel() * C).view(-1, C).type_as(x)
        _sum_over_processes(counts)
        _sum_over_processes(sums)
        self.ema_count.mul_(decay).add_(counts, alpha=1 - decay)
        self.ema_sum.mul_(decay).add_(sums, alpha=1 - decay)
        self.codebook.copy_(self.ema_sum / self.ema_count.clamp_min(1e-5).unsqueeze(-1))
        dead = self.ema_count < self.config.dead_code_threshold
        if dead.any():
            picks = torch.randint(0, x.shape[0], (int(dead.sum()),), device=x.device)
            fresh = _from_first_process(x[picks].contiguous())
            self.codebook[dead] = fresh
            self.ema_sum[dead] = fresh
            self.ema_count[dead] = 1.0

    def codebook_usage(self, ids_BTN: torch.Tensor) -> float:
        """Fraction of the K codes used at least once in `ids`."""
        return torch.unique(ids_BTN).numel() / self.config.codebook_size


def _several_processes() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _sum_over_processes(tensor: torch.Tensor) -> torch.Tensor:
    """In place: the sum over all training processes (the whole global batch's statistic)."""
    if _several_processes():
        dist.all_reduce(tensor)
    return tensor


def _from_first_process(tensor: torch.Tensor) -> torch.Tensor:
    """In place: process 0's values on every process."""
    if _several_processes():
        dist.broadcast(tensor, src=0)
    return tensor


def _rms_over_processes(residual: torch.Tensor) -> torch.Tensor:
    """RMS of `residual` over the whole global batch (equal or unequal shares per process)."""
    stats = torch.stack([residual.float().pow(2).sum(), residual.new_tensor(residual.numel(), dtype=torch.float)])
    stats = _sum_over_processes(stats)
    return (stats[0] / stats[1]).sqrt().clamp_min(1e-4)
