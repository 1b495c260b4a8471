"""Improved precision and recall (Kynkäänniemi et al., NeurIPS 2019), blockwise.

Each set's manifold is the union of balls around its points, the radius of a point being the
distance to its k-th nearest neighbour in the same set (the point itself excluded, so the
(k+1)-th smallest distance including the zero self-distance — as the authors' and
torch-fidelity's code do). precision = fraction of fake points inside some real ball;
recall = fraction of real points inside some fake ball. A point exactly on a ball's border
counts as inside (≤).

Distances are computed with ``torch.cdist`` on ``batch_size × batch_size`` blocks in float32
(whatever the storage dtype), so memory is O(N·D + batch_size²) — never N×N. The real×fake
block is computed once and serves both precision and recall. Results do not depend on the
order of the blocks; ``device`` chooses where the blocks are computed (e.g. a GPU).

:class:`PrecisionRecallMetric` is the ``precision_recall`` entry of the metrics registry: it
keeps a bounded subset of the generated feature rows, chosen by sample index.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from calguide.metrics._subset import as_dtype, release_free_heap, select_subset
from calguide.metrics.registry import ComputeContext, FeatureRowsMetric, MetricOptions, field_of

__all__ = [
    "PrecisionRecallMetric",
    "knn_radii",
    "precision_recall",
    "precision_recall_leave_one_out",
    "precision_recall_replicates",
]


def _blocks(n: int, size: int) -> list[tuple[int, int]]:
    return [(s, min(s + size, n)) for s in range(0, n, size)]


def _block(x: Tensor, start: int, stop: int, device: torch.device) -> Tensor:
    return x[start:stop].to(device=device, dtype=torch.float32)


def _dist(a: Tensor, b: Tensor) -> Tensor:
    # One formula for every block shape (cdist would switch formulas at 25 rows), so that
    # results do not depend on the block size.
    return torch.cdist(a, b, compute_mode="use_mm_for_euclid_dist")


class _Float32Matmul:
    """Full-precision float32 matmuls inside the block (no TF32), restored afterwards."""

    def __enter__(self) -> None:
        self._old = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision("highest")

    def __exit__(self, *exc: object) -> None:
        torch.set_float32_matmul_precision(self._old)


def knn_radii(
    features: Tensor,
    k: int = 3,
    *,
    batch_size: int = 10000,
    device: torch.device | str | None = None,
) -> Tensor:
    """Distance of every row to its k-th nearest other row (float32, on ``device``)."""
    n = features.shape[0]
    if n <= k:
        raise ValueError(f"k-NN radii with k={k} need more than {k} points, got {n}")
    dev = torch.device(device) if device is not None else features.device
    with torch.no_grad(), _Float32Matmul():
        return _knn_radii(features, k, batch_size, dev)


def _knn_radii(features: Tensor, k: int, batch_size: int, dev: torch.device) -> Tensor:
    return _knn(features, k, batch_size, dev)[0]


def _knn(features: Tensor, k: int, batch_size: int, dev: torch.device) -> tuple[Tensor, Tensor]:
    """(radius [n], indices [n, k+1] of the k+1 nearest rows, the row itself among them)."""
    n = features.shape[0]
    radii = torch.empty(n, dtype=torch.float32, device=dev)
    nearest = torch.empty(n, k + 1, dtype=torch.int64, device=dev)
    for r0, r1 in _blocks(n, batch_size):
        rows = _block(features, r0, r1, dev)
        best: Tensor | None = None  # running k+1 smallest distances per row
        where: Tensor | None = None  # and their column indices
        for c0, c1 in _blocks(n, batch_size):
            cols = rows if (c0, c1) == (r0, r1) else _block(features, c0, c1, dev)
            dist = _dist(rows, cols)
            if (c0, c1) == (r0, r1):
                # The self-distance is exactly zero in exact arithmetic; cdist's matmul route
                # may leave a tiny positive residue, so set it (it is one of the k+1).
                dist.fill_diagonal_(0.0)
            m = min(k + 1, dist.shape[1])
            cand, idx = torch.topk(dist, m, dim=1, largest=False, sorted=False)
            idx = idx + c0
            del dist
            if best is not None and where is not None:
                cand, idx = torch.cat([best, cand], dim=1), torch.cat([where, idx], dim=1)
            best, pos = torch.topk(cand, min(k + 1, cand.shape[1]), dim=1, largest=False)
            where = torch.gather(idx, 1, pos)
        assert best is not None and where is not None
        radii[r0:r1] = best[:, k]  # sorted ascending; column k is the k-th neighbour
        nearest[r0:r1] = where
    return radii, nearest


def precision_recall_leave_one_out(
    real: Tensor,
    fake: Tensor,
    groups: Tensor,
    k: int = 3,
    *,
    batch_size: int = 10000,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    """(precision [G+1], recall [G+1]) of ``fake`` and of ``fake`` without each group of
    ``groups`` ([n], ids 0..G−1): entry 0 the whole set, entry g+1 without group g, each
    exactly what :func:`precision_recall` gives on the kept rows (what a delete-one-group
    jackknife needs: the fake manifold's k-NN radii recomputed on what is kept).

    Precision needs no recomputation (a fake row is inside the real manifold or not whatever
    else is kept). For recall, removing group g changes the radius of a kept row only if one of
    its k nearest rows was in g (a row is affected in at most k groups), so only those are
    recomputed: about k·n·(n + M) distances in all on top of precision_recall's n·(n + M), e.g.
    3 × 50,000 × 100,000 for a 50K row against 50K reference rows.
    """
    n = fake.shape[0]
    groups = torch.as_tensor(groups, dtype=torch.int64).reshape(-1)
    if groups.shape[0] != n:
        raise ValueError(f"groups must have one id per fake row ({n}), got {groups.shape[0]}")
    count = int(groups.max()) + 1
    dev = torch.device(device) if device is not None else real.device
    group_of = groups.to(dev)
    with torch.no_grad(), _Float32Matmul():
        r_real = _knn_radii(real, k, batch_size, dev)
        r_fake, nearest = _knn(fake, k, batch_size, dev)
        inside = torch.zeros(n, dtype=torch.bool, device=dev)
        # covers[g, q]: how many fake rows of group g have real row q inside their ball
        covers = torch.zeros(count, real.shape[0], dtype=torch.float32, device=dev)
        for f0, f1 in _blocks(n, batch_size):
            frows = _block(fake, f0, f1, dev)
            for q0, q1 in _blocks(real.shape[0], batch_size):
                dist = _dist(frows, _block(real, q0, q1, dev))
                inside[f0:f1] |= (dist <= r_real[q0:q1].unsqueeze(0)).any(dim=1)
                ball = (dist <= r_fake[f0:f1].unsqueeze(1)).to(torch.float32)
                covers[:, q0:q1].index_add_(0, group_of[f0:f1], ball)
                del dist, ball
        total = covers.sum(0)
        near_groups = group_of[nearest]  # [n, k+1]
        precision = [inside.double().mean()]
        recall = [(total > 0).double().mean()]
        for g in range(count):
            kept = group_of != g
            precision.append(inside[kept].double().mean())
            others = total - covers[g]  # kept rows' coverage at their old radii
            gained = torch.zeros(real.shape[0], dtype=torch.bool, device=dev)
            affected = torch.nonzero((near_groups == g).any(1) & kept).reshape(-1)
            for a0, a1 in _blocks(int(affected.shape[0]), batch_size):
                which = affected[a0:a1]
                rows = fake[which.cpu()].to(dev, torch.float32)
                to_fake = torch.cat(
                    [_dist(rows, _block(fake, c0, c1, dev)) for c0, c1 in _blocks(n, batch_size)],
                    dim=1,
                )
                to_fake[:, ~kept] = float("inf")
                to_fake[torch.arange(which.shape[0], device=dev), which] = 0.0  # self
                radius = torch.kthvalue(to_fake, k + 1, dim=1).values
                del to_fake
                to_real = torch.cat(
                    [
                        _dist(rows, _block(real, q0, q1, dev))
                        for q0, q1 in _blocks(real.shape[0], batch_size)
                    ],
                    dim=1,
                )
                others -= (to_real <= r_fake[which].unsqueeze(1)).to(torch.float32).sum(0)
                gained |= (to_real <= radius.unsqueeze(1)).any(0)
                del to_real
            recall.append(((others > 0.5) | gained).double().mean())
    return torch.stack(precision).cpu(), torch.stack(recall).cpu()


def precision_recall(
    real: Tensor,
    fake: Tensor,
    k: int = 3,
    *,
    batch_size: int = 10000,
    device: torch.device | str | None = None,
) -> tuple[float, float]:
    """(precision, recall) of ``fake`` against ``real`` features (2-D, one row per image).

    Features may be stored as float16/float32/float64; blocks are cast to float32. The number
    of rows of the two sets may differ (the paper uses equal counts).
    """
    if real.ndim != 2 or fake.ndim != 2:
        raise ValueError(
            f"features must be 2-D [N, D], got {tuple(real.shape)} and {tuple(fake.shape)}"
        )
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature dims differ: real {real.shape[1]}, fake {fake.shape[1]}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    dev = torch.device(device) if device is not None else real.device
    with torch.no_grad(), _Float32Matmul():
        r_real = knn_radii(real, k, batch_size=batch_size, device=dev)
        r_fake = knn_radii(fake, k, batch_size=batch_size, device=dev)
        fake_in_real = torch.zeros(fake.shape[0], dtype=torch.bool, device=dev)
        real_in_fake = torch.zeros(real.shape[0], dtype=torch.bool, device=dev)
        for f0, f1 in _blocks(fake.shape[0], batch_size):
            frows = _block(fake, f0, f1, dev)
            for q0, q1 in _blocks(real.shape[0], batch_size):
                dist = _dist(frows, _block(real, q0, q1, dev))  # [fake block, real block]
                fake_in_real[f0:f1] |= (dist <= r_real[q0:q1].unsqueeze(0)).any(dim=1)
                real_in_fake[q0:q1] |= (dist <= r_fake[f0:f1].unsqueeze(1)).any(dim=0)
                del dist
    precision = fake_in_real.double().mean().item()
    recall = real_in_fake.double().mean().item()
    return float(precision), float(recall)


class PrecisionRecallMetric(FeatureRowsMetric):
    """Registry entry ``precision_recall``: ``precision``, ``recall`` and ``num_pr_samples``.

    Per rank a :class:`~calguide.metrics._subset.SampleBuffer` keeps the feature rows of at most
    ``max_pr_samples`` samples, chosen by sample index (so the subset depends neither on batch
    size nor on the device count); rank 0 takes the same subset of the ranks' union, each index
    once, and the same-size subset of the reference rows (by row position). A repeated sample
    needs no take-back: the subset holds each index once by construction.

    Args: see the same-named arguments of
    :class:`~calguide.modules.metrics.GenerativeMetrics`.
    """

    name = "precision_recall"
    keys = ("precision", "recall")
    extra_keys = ("num_pr_samples",)

    def __init__(
        self,
        k: int = 3,
        max_pr_samples: int | None = 50_000,
        pr_features_dtype: torch.dtype | str = torch.float16,
        pr_batch_size: int = 5000,
        seed: int = 0,
    ) -> None:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if max_pr_samples is not None and max_pr_samples <= k:
            raise ValueError(f"max_pr_samples must exceed k={k}, got {max_pr_samples}")
        self.k = k
        self.rows_capacity = max_pr_samples
        self.rows_dtype = as_dtype(pr_features_dtype)
        self.pr_batch_size = pr_batch_size
        self.seed = seed

    @classmethod
    def from_options(cls, options: MetricOptions) -> PrecisionRecallMetric:
        return cls(
            k=options.k,
            max_pr_samples=options.max_pr_samples,
            pr_features_dtype=options.pr_features_dtype,
            pr_batch_size=options.pr_batch_size,
            seed=options.seed,
        )

    def compute(self, combined: Mapping[str, Tensor], ctx: ComputeContext) -> dict[str, Any]:
        precision = recall = None
        ref_feats = field_of(ctx.reference, "features")
        fake = combined["features"]
        if ref_feats is not None and fake.shape[0] > self.k:
            release_free_heap()  # before the large distance blocks
            ref_feats = torch.as_tensor(ref_feats)
            if self.rows_capacity is not None and ref_feats.shape[0] > self.rows_capacity:
                _, ref_feats = select_subset(
                    torch.arange(ref_feats.shape[0]), ref_feats, self.rows_capacity, self.seed
                )
            precision, recall = precision_recall(
                ref_feats, fake, self.k, batch_size=self.pr_batch_size, device=ctx.device
            )
        return {"precision": precision, "recall": recall, "num_pr_samples": int(fake.shape[0])}


def precision_recall_replicates(
    real: Tensor,
    fake: Tensor,
    weights: Tensor,
    k: int = 3,
    *,
    batch_size: int = 10000,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    """(precision [B], recall [B]) of each reweighted copy of ``fake`` (row b of ``weights``:
    the multiplicities of the fake samples, as a bootstrap replicate draws them).

    The manifolds' radii are those of the whole sets: a fake sample is inside the real
    manifold or not whatever else was drawn, so a replicate's precision is the weighted mean
    of those indicators; a replicate's recall is the share of real points inside the ball of
    some fake sample it drew. (Recomputing the fake radii on a replicate would let a drawn
    duplicate be its own neighbour.) A replicate holds about 63% of the distinct samples, so
    its recall is lower than the set's: use the replicates' spread, not their level.
    """
    if weights.ndim != 2 or weights.shape[1] != fake.shape[0]:
        raise ValueError(f"weights must be [B, {fake.shape[0]}], got {tuple(weights.shape)}")
    dev = torch.device(device) if device is not None else real.device
    w = weights.to(dev, torch.float32)
    drawn = (w > 0).to(torch.float32)
    with torch.no_grad(), _Float32Matmul():
        r_real = knn_radii(real, k, batch_size=batch_size, device=dev)
        r_fake = knn_radii(fake, k, batch_size=batch_size, device=dev)
        inside = torch.zeros(fake.shape[0], dtype=torch.float32, device=dev)
        covered = torch.zeros(w.shape[0], real.shape[0], dtype=torch.float32, device=dev)
        for f0, f1 in _blocks(fake.shape[0], batch_size):
            frows = _block(fake, f0, f1, dev)
            for q0, q1 in _blocks(real.shape[0], batch_size):
                dist = _dist(frows, _block(real, q0, q1, dev))
                inside[f0:f1] = torch.maximum(
                    inside[f0:f1], (dist <= r_real[q0:q1].unsqueeze(0)).any(dim=1).float()
                )
                ball = (dist <= r_fake[f0:f1].unsqueeze(1)).float()  # [fake block, real block]
                covered[:, q0:q1] += drawn[:, f0:f1] @ ball
                del dist, ball
    w64 = w.to(torch.float64)
    precision = (w64 @ inside.to(torch.float64)) / w64.sum(1)
    recall = (covered > 0).double().mean(1)
    return precision.cpu(), recall.cpu()
