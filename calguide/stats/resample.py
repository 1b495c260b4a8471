"""Paired, stratified bootstrap weights over sample indices.

Rows of a table share each sample's noise (and its requested label), so resampling the sample
*indices* and using the same draw for every row keeps the pairing. Resampling happens within
strata (one stratum per seed and requested label): a balanced-label run keeps exactly its class
counts in every replicate, as in the design that produced it, instead of adding multinomial
class-count noise the runs never had.

A replicate is a vector of multiplicities w (w_i copies of sample i; Σ w over a stratum = its
size), which every metric's ``*_replicates`` function takes as weights. Within a stratum of
size k the bootstrap variance of a mean is (k − 1)/k of the usual estimate;
:func:`stratum_correction` gives the factor that undoes it.
"""

from __future__ import annotations

import torch
from torch import Tensor


def strata_of(*keys: Tensor) -> Tensor:
    """int64 stratum ids (0..S−1) of samples from parallel key tensors (seed, label, ...)."""
    if not keys:
        raise ValueError("strata need at least one key")
    n = keys[0].shape[0]
    if any(k.shape != (n,) for k in keys):
        raise ValueError(
            f"stratum keys must be 1-D of one length, got {[tuple(k.shape) for k in keys]}"
        )
    stacked = torch.stack([k.to(torch.int64) for k in keys], dim=1)
    _, ids = torch.unique(stacked, dim=0, return_inverse=True)
    return ids


def bootstrap_weights(strata: Tensor, replicates: int, seed: int = 0) -> Tensor:
    """[replicates, n] float64 multiplicities: each stratum resampled with replacement to its
    own size, independently per replicate (a seeded, device-independent draw)."""
    if replicates < 1:
        raise ValueError(f"replicates must be >= 1, got {replicates}")
    strata = strata.to(torch.int64).cpu()
    n = strata.shape[0]
    generator = torch.Generator().manual_seed(int(seed))
    weights = torch.zeros(replicates, n, dtype=torch.float64)
    ones = torch.ones(1, dtype=torch.float64)
    for stratum in torch.unique(strata).tolist():
        members = (strata == stratum).nonzero().flatten()
        draw = torch.randint(0, members.numel(), (replicates, members.numel()), generator=generator)
        weights.scatter_add_(1, members[draw], ones.expand(replicates, members.numel()))
    return weights


def stratum_correction(strata: Tensor) -> float:
    """√(n/(n − S_eff)): the factor on a stratified bootstrap's standard deviation of a mean
    that removes its (k − 1)/k shrinkage per stratum of size k (strata of size 1 add nothing
    to the spread and are left out)."""
    _, counts = torch.unique(strata, return_counts=True)
    counts = counts[counts > 1].to(torch.float64)
    if counts.numel() == 0:
        return 1.0
    n = float(counts.sum())
    return float((n / (n - counts.numel())) ** 0.5)
