"""Fréchet distance between two sets of feature vectors (as in FID, here in the digit classifier's space)."""

from __future__ import annotations

import numpy as np
from scipy import linalg

from unitok.core.errors import UnitokError


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray, eps: float = 1e-6) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^1/2) between Gaussians fitted to (N, D) features.

    ``eps`` is added to both covariance diagonals so that singular ones (dead ReLU units, fewer
    samples than dimensions) keep a well-defined square root; identical sets still score 0.
    The imaginary round-off ``sqrtm`` may leave is dropped; a large imaginary part is an error.
    """
    feats_a, feats_b = np.asarray(feats_a, dtype=np.float64), np.asarray(feats_b, dtype=np.float64)
    if feats_a.ndim != 2 or feats_b.ndim != 2 or feats_a.shape[1] != feats_b.shape[1]:
        raise UnitokError(f"features must be (N, D) with the same D, got {feats_a.shape} and {feats_b.shape}")
    if len(feats_a) < 2 or len(feats_b) < 2:
        raise UnitokError("need at least 2 feature vectors per set to estimate a covariance")
    offset = eps * np.eye(feats_a.shape[1])
    mu_a, mu_b = feats_a.mean(axis=0), feats_b.mean(axis=0)
    cov_a = np.atleast_2d(np.cov(feats_a, rowvar=False)) + offset
    cov_b = np.atleast_2d(np.cov(feats_b, rowvar=False)) + offset

    covmean = linalg.sqrtm(cov_a @ cov_b)
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0.0, atol=1e-3):
            raise UnitokError(f"sqrtm has a large imaginary part ({np.abs(covmean.imag).max():.3g})")
        covmean = covmean.real

    diff = mu_a - mu_b
    return float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * np.trace(covmean))
