"""Kernel Inception Distance (Bińkowski et al., ICLR 2018): an unbiased MMD² between feature
sets with the cubic polynomial kernel k(x, y) = (xᵀy / D + 1)³.

Unlike FID, its estimator has no sample-size bias when the samples are drawn independently, so
two rows compared at a few hundred samples are compared on the same quantity as at 50,000.
(Samples drawn with *balanced* labels are a stratified sample of the class mixture: the share
of same-class pairs is (n/K − 1)/(n − 1) instead of 1/K, which biases any pair statistic by
O(1/n) — docs/verdicts.md.)

The estimator is torch-fidelity's and torchmetrics': for sets of n and m rows,

    KID = Σ_{i≠j} k(x_i, x_j)/(n(n−1)) + Σ_{i≠j} k(y_i, y_j)/(m(m−1)) − 2 Σ_{i,j} k(x_i, y_j)/(nm)

computed on the whole sets when both have at most ``subset_size`` rows, otherwise as the mean
over ``subsets`` random subsets of ``subset_size`` rows of each set (their protocol: 100 subsets
of 1,000). :class:`KIDMetric` is the ``kid`` entry of the metrics registry.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from calguide.metrics._subset import as_dtype
from calguide.metrics.registry import ComputeContext, FeatureRowsMetric, MetricOptions, field_of

__all__ = ["KIDMetric", "kid", "kid_replicates", "polynomial_kernel"]


def polynomial_kernel(x: Tensor, y: Tensor) -> Tensor:
    """(x yᵀ / D + 1)³ in float64."""
    return (x.to(torch.float64) @ y.to(torch.float64).T / x.shape[1] + 1.0) ** 3


def _off_diagonal_mean(gram: Tensor) -> Tensor:
    n = gram.shape[0]
    return (gram.sum() - gram.diagonal().sum()) / (n * (n - 1))


def _mmd2(x: Tensor, y: Tensor) -> float:
    cross = polynomial_kernel(x, y).mean()
    return float(
        _off_diagonal_mean(polynomial_kernel(x, x)) + _off_diagonal_mean(polynomial_kernel(y, y))
        - 2.0 * cross
    )  # fmt: skip


def kid(
    fake: Tensor,
    real: Tensor,
    *,
    subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float | None]:
    """(KID, std over subsets or None) of ``fake`` against ``real`` features (2-D each).

    Whole sets when both have at most ``subset_size`` rows; otherwise torch-fidelity's subset
    protocol with ``numpy.random.RandomState(seed)`` (each subset draws ``subset_size`` rows of
    ``fake``, then of ``real``, without replacement).
    """
    if fake.ndim != 2 or real.ndim != 2 or fake.shape[1] != real.shape[1]:
        raise ValueError(
            f"KID needs 2-D features of one width, got {tuple(fake.shape)} and {tuple(real.shape)}"
        )
    if min(fake.shape[0], real.shape[0]) < 2:
        raise ValueError("KID needs at least 2 rows in each set")
    if max(fake.shape[0], real.shape[0]) <= subset_size:
        return _mmd2(fake, real), None
    size = min(subset_size, fake.shape[0], real.shape[0])
    rng = np.random.RandomState(seed)
    values = []
    for _ in range(subsets):
        a = torch.from_numpy(rng.choice(fake.shape[0], size, replace=False))
        b = torch.from_numpy(rng.choice(real.shape[0], size, replace=False))
        values.append(_mmd2(fake[a], real[b]))
    return float(np.mean(values)), float(np.std(values))


def kid_replicates(fake: Tensor, weights: Tensor, real: Tensor) -> Tensor:
    """KID of each reweighted copy of ``fake`` (row b of ``weights`` [B, n]: multiplicities)
    against the whole of ``real``: the estimator above on the samples repeated w_i times, so
    all-ones weights give :func:`kid` on whole sets. O(n² + n·m) memory. float64 [B]."""
    if weights.ndim != 2 or weights.shape[1] != fake.shape[0]:
        raise ValueError(f"weights must be [B, {fake.shape[0]}], got {tuple(weights.shape)}")
    w = weights.to(torch.float64)
    gram = polynomial_kernel(fake, fake)
    cross = polynomial_kernel(fake, real).sum(1)
    total = w.sum(1)
    pairs = ((w @ gram) * w).sum(1) - w @ gram.diagonal()
    real_term = _off_diagonal_mean(polynomial_kernel(real, real))
    return pairs / (total * (total - 1)) + real_term - 2.0 * (w @ cross) / (total * real.shape[0])


class KIDMetric(FeatureRowsMetric):
    """Registry entry ``kid``: ``kid`` (and ``kid_std`` over subsets, None on whole sets).

    Keeps at most ``max_pr_samples`` generated rows per rank (the same bounded, index-chosen
    subset as precision/recall), and uses the reference's kept feature rows."""

    name = "kid"
    keys = ("kid",)
    extra_keys = ("kid_std",)

    def __init__(
        self,
        max_samples: int | None = 50_000,
        features_dtype: torch.dtype | str = torch.float16,
        seed: int = 0,
    ) -> None:
        self.rows_capacity = max_samples
        self.rows_dtype = as_dtype(features_dtype)
        self.seed = seed

    @classmethod
    def from_options(cls, options: MetricOptions) -> KIDMetric:
        return cls(options.max_pr_samples, options.pr_features_dtype, options.seed)

    def compute(self, combined: Mapping[str, Tensor], ctx: ComputeContext) -> dict[str, Any]:
        real = field_of(ctx.reference, "features")
        fake = combined["features"]
        if real is None or fake.shape[0] < 2:
            return {"kid": None, "kid_std": None}
        value, spread = kid(fake.float(), torch.as_tensor(real).float(), seed=self.seed)
        return {"kid": value, "kid_std": spread}
