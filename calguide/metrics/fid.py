"""Fréchet distance between feature distributions, and a streaming mean/covariance accumulator.

FID = ‖μ₁ − μ₂‖² + tr Σ₁ + tr Σ₂ − 2 tr (Σ₁Σ₂)^{1/2}  (Heusel et al., 2017).

All arithmetic is float64. The default route takes tr (Σ₁Σ₂)^{1/2} as the sum of the square
roots of the eigenvalues of Σ₁Σ₂ — torch-fidelity's ``fid_statistics_to_metric`` — which needs
no ε-regularisation for singular covariances (fewer samples than dimensions). ``method="sqrtm"``
uses ``scipy.linalg.sqrtm`` with the usual handling (ε·I offset when the product is singular,
real part when the imaginary residue is negligible), as pytorch-fid and ADM's evaluator do; the
two agree to rounding (see tests).

:class:`FIDMetric` is the ``fid`` entry of the metrics registry (streamed statistics of the
generated features against the reference ``mean`` / ``cov``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from calguide.metrics.registry import ComputeContext, Metric, MetricBatch, field_of

__all__ = [
    "FIDMetric",
    "FeatureStats",
    "fid_from_features",
    "fid_from_stats",
    "fid_leave_one_out",
    "fid_replicates",
]

_FID_METHODS = ("eigvals", "sqrtm")


def _as_f64_numpy(x: Tensor | np.ndarray, what: str, ndim: int) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != ndim:
        raise ValueError(f"{what} must be {ndim}-D, got shape {tuple(arr.shape)}")
    return arr


def fid_from_stats(
    mu1: Tensor | np.ndarray,
    sigma1: Tensor | np.ndarray,
    mu2: Tensor | np.ndarray,
    sigma2: Tensor | np.ndarray,
    *,
    method: str = "eigvals",
    eps: float = 1e-6,
) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64.

    ``method="eigvals"`` (default) calls torch-fidelity's ``fid_statistics_to_metric``;
    ``method="sqrtm"`` uses ``scipy.linalg.sqrtm`` (``eps`` is the diagonal offset added when
    Σ₁Σ₂ is singular). The result is clipped at 0 from below only by rounding, never forced.
    """
    m1 = _as_f64_numpy(mu1, "mu1", 1)
    m2 = _as_f64_numpy(mu2, "mu2", 1)
    s1 = _as_f64_numpy(sigma1, "sigma1", 2)
    s2 = _as_f64_numpy(sigma2, "sigma2", 2)
    d = m1.shape[0]
    if m2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(
            "statistics disagree in dimension: "
            f"mu1 {m1.shape}, sigma1 {s1.shape}, mu2 {m2.shape}, sigma2 {s2.shape}"
        )
    if not all(np.isfinite(a).all() for a in (m1, m2, s1, s2)):
        raise ValueError("FID statistics contain NaN or inf")
    if method == "eigvals":
        from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric

        out = fid_statistics_to_metric({"mu": m1, "sigma": s1}, {"mu": m2, "sigma": s2}, False)
        return float(out[KEY_METRIC_FID])
    if method == "sqrtm":
        return _fid_sqrtm(m1, s1, m2, s2, eps)
    raise ValueError(f"unknown FID method {method!r}; allowed: {list(_FID_METHODS)}")


def _fid_sqrtm(m1: np.ndarray, s1: np.ndarray, m2: np.ndarray, s2: np.ndarray, eps: float) -> float:
    from scipy import linalg

    diff = m1 - m2
    covmean = linalg.sqrtm(s1 @ s2)
    if isinstance(covmean, tuple):  # older scipy returned (sqrtm, errest) with disp=False
        covmean = covmean[0]
    if not np.isfinite(covmean).all():
        offset = np.eye(s1.shape[0]) * eps
        covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        residue = np.max(np.abs(covmean.imag))
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"sqrtm(Σ₁Σ₂) has a large imaginary component ({residue:.3g})")
        covmean = covmean.real
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))


def fid_from_features(real: Tensor, fake: Tensor, *, method: str = "eigvals") -> float:
    """FID between two feature sets (2-D tensors, one row per image), statistics in float64."""
    for what, x in (("real", real), ("fake", fake)):
        if x.ndim != 2:
            raise ValueError(f"{what} features must be 2-D [N, D], got shape {tuple(x.shape)}")
        if x.shape[0] < 2:
            raise ValueError(f"{what} features need at least 2 rows for a covariance")
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature dims differ: real {real.shape[1]}, fake {fake.shape[1]}")
    a = FeatureStats.from_features(real)
    b = FeatureStats.from_features(fake)
    return fid_from_stats(a.mean, a.covariance, b.mean, b.covariance, method=method)


def _psd_sqrt(cov: Tensor) -> Tensor:
    """The symmetric square root of a PSD matrix (negative rounding eigenvalues clipped)."""
    values, vectors = torch.linalg.eigh(0.5 * (cov + cov.T))
    return (vectors * values.clamp(min=0.0).sqrt()) @ vectors.T


def _reference_about(
    shift: Tensor, ref_mean: Tensor | np.ndarray, ref_cov: Tensor | np.ndarray
) -> tuple[Tensor, Tensor, Tensor]:
    """(μ_r − shift, Σ_r^{1/2}, tr Σ_r) in float64 on ``shift``'s device: the reference in the
    frame of features centred at ``shift`` (FID is shift-invariant when both move alike)."""
    d = shift.shape[0]
    mu_r = torch.as_tensor(ref_mean).to(shift.device, torch.float64) - shift
    cov_r = torch.as_tensor(ref_cov).to(shift.device, torch.float64)
    if mu_r.shape != (d,) or cov_r.shape != (d, d):
        raise ValueError(
            f"reference statistics of dim {tuple(mu_r.shape)}, {tuple(cov_r.shape)} do not match "
            f"features of dim {d}"
        )
    return mu_r, _psd_sqrt(cov_r), torch.trace(cov_r)


def fid_replicates(
    features: Tensor,
    weights: Tensor,
    ref_mean: Tensor | np.ndarray,
    ref_cov: Tensor | np.ndarray,
    *,
    device: torch.device | str | None = None,
    chunk: int | None = None,
) -> Tensor:
    """The FID of each reweighted copy of ``features``: row b of ``weights`` [B, n] holds the
    multiplicities of the n samples (a bootstrap replicate; all ones is the sample itself).

    Exact for any non-negative weights, float64: a replicate's FID is the FID of its samples
    repeated w_i times (mean and unbiased covariance with N = Σw), so integer weights equal
    :func:`fid_from_features` on the repeated rows. With Y the features whitened by the
    reference (Y = X·Σ_r^{1/2}), tr (Σ_r^{1/2} Σ Σ_r^{1/2})^{1/2} is the sum of the square roots of
    the eigenvalues of either Yᵀ W Y (D × D) or W^{1/2} Y Yᵀ W^{1/2} (n × n) after centring;
    the smaller one is used, so a replicate costs O(min(n, D)³ + n·min(n, D)·D).
    Returns float64 [B] on the CPU.
    """
    if features.ndim != 2 or weights.ndim != 2 or weights.shape[1] != features.shape[0]:
        raise ValueError(
            f"need features [n, D] and weights [B, n], got {tuple(features.shape)} and "
            f"{tuple(weights.shape)}"
        )
    dev = torch.device(device) if device is not None else features.device
    f64 = torch.float64
    x = features.to(dev, f64)
    shift = x.mean(0)
    x = x - shift
    n, d = x.shape
    mu_r, root_r, tr_r = _reference_about(shift, ref_mean, ref_cov)
    y = x @ root_r
    gram = y @ y.T if n <= d else None
    sq_norms = (x * x).sum(1)
    step = chunk or max(1, int(2e8 // (min(n, d) ** 2 + n * min(n, d) + 1)))
    out = []
    for start in range(0, weights.shape[0], step):
        w = weights[start : start + step].to(dev, f64)
        total = w.sum(1)
        if bool((total < 2).any()):
            raise ValueError("every replicate needs a total weight of at least 2")
        mean = (w @ x) / total[:, None]
        mean_term = ((mean - mu_r) ** 2).sum(1)
        trace_term = ((w @ sq_norms) - total * (mean * mean).sum(1)) / (total - 1)
        if gram is not None:  # n × n: W^{1/2} (centred Gram) W^{1/2}
            kw = (w @ gram) / total[:, None]
            quad = (kw * w).sum(1) / total
            centred = gram - kw[:, :, None] - kw[:, None, :] + quad[:, None, None]
            root_w = w.sqrt()
            mat = root_w[:, :, None] * centred * root_w[:, None, :]
        else:  # D × D: Yᵀ W Y − N ȳȳᵀ
            mean_y = (w @ y) / total[:, None]
            mat = torch.einsum("bn,nd,ne->bde", w, y, y)
            mat -= total[:, None, None] * mean_y[:, :, None] * mean_y[:, None, :]
        mat = mat / (total - 1)[:, None, None]
        roots = torch.linalg.eigvalsh(0.5 * (mat + mat.transpose(1, 2))).clamp(min=0.0).sqrt()
        out.append((mean_term + trace_term + tr_r - 2.0 * roots.sum(1)).cpu())
    return torch.cat(out)


def fid_leave_one_out(
    features: Tensor,
    groups: Tensor,
    ref_mean: Tensor | np.ndarray,
    ref_cov: Tensor | np.ndarray,
    *,
    device: torch.device | str | None = None,
) -> tuple[float, Tensor]:
    """(FID of all of ``features``, FID without each group [G]) for ``groups`` [n] with ids
    0..G−1: the delete-one-group jackknife's values, from each group's sums (one pass over the
    features, O(n·D² + G·D³)) rather than G recomputations."""
    if groups.shape != (features.shape[0],):
        raise ValueError(f"groups must be [{features.shape[0]}], got {tuple(groups.shape)}")
    dev = torch.device(device) if device is not None else features.device
    x = features.to(dev, torch.float64)
    shift = x.mean(0)
    x = x - shift
    g = groups.to(dev, torch.int64)
    count = int(g.max()) + 1
    sizes = torch.bincount(g, minlength=count).to(torch.float64)
    sums = torch.zeros(count, x.shape[1], dtype=torch.float64, device=dev).index_add_(0, g, x)
    outers = []
    for i in range(count):
        rows = x[g == i]
        outers.append(rows.T @ rows)
    outer = torch.stack(outers)
    mu_r, root_r, tr_r = _reference_about(shift, ref_mean, ref_cov)

    def fid_of(n: Tensor, s1: Tensor, s2: Tensor) -> float:
        mean = s1 / n
        cov = (s2 - n * torch.outer(mean, mean)) / (n - 1)
        mat = root_r @ cov @ root_r
        roots = torch.linalg.eigvalsh(0.5 * (mat + mat.T)).clamp(min=0.0).sqrt()
        return float(((mean - mu_r) ** 2).sum() + torch.trace(cov) + tr_r - 2.0 * roots.sum())

    n_all, s1_all, s2_all = sizes.sum(), sums.sum(0), outer.sum(0)
    full = fid_of(n_all, s1_all, s2_all)
    loo = [fid_of(n_all - sizes[i], s1_all - sums[i], s2_all - outer[i]) for i in range(count)]
    return full, torch.tensor(loo, dtype=torch.float64)


def _cpu_copy(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.detach().cpu().clone()


class FeatureStats:
    """Streaming count, sum and sum of outer products of feature vectors, in float64.

    Memory is O(d²) whatever the number of samples; the features themselves are never kept.
    Sums are taken about a fixed ``shift`` (the mean of the first batch) so the covariance
    formula (S₂ − s₁s₁ᵀ/n)/(n − 1) does not lose precision when the mean is large compared to
    the spread. Accumulators live on the device of the first batch (or ``device``); the
    ``mean`` / ``covariance`` properties and :meth:`state_dict` return CPU tensors.
    """

    _CHUNK_ROWS = 4096

    def __init__(self, dim: int | None = None, device: torch.device | str | None = None) -> None:
        self.dim = dim
        self.device = torch.device(device) if device is not None else None
        self.count = 0
        self.shift: Tensor | None = None
        self.sum: Tensor | None = None
        self.sum_outer: Tensor | None = None

    # -- accumulation -----------------------------------------------------------------------
    def _init_buffers(self, x: Tensor) -> None:
        if self.dim is None:
            self.dim = x.shape[1]
        if self.device is None:
            self.device = x.device
        d = self.dim
        self.shift = x.mean(0).to(self.device)
        self.sum = torch.zeros(d, dtype=torch.float64, device=self.device)
        self.sum_outer = torch.zeros(d, d, dtype=torch.float64, device=self.device)

    def _check(self, features: Tensor) -> None:
        if features.ndim != 2:
            raise ValueError(f"features must be 2-D [N, D], got shape {tuple(features.shape)}")
        if self.dim is not None and features.shape[1] != self.dim:
            raise ValueError(f"features have dim {features.shape[1]}, expected {self.dim}")
        for start in range(0, features.shape[0], self._CHUNK_ROWS):
            if not torch.isfinite(features[start : start + self._CHUNK_ROWS]).all():
                raise ValueError("features contain NaN or inf")

    def _accumulate(self, features: Tensor, sign: float) -> None:
        self._check(features)  # before touching the sums: a bad batch leaves them intact
        if features.shape[0] and self.shift is None and sign < 0:
            raise ValueError("cannot remove features from an empty FeatureStats")
        # Chunks bound the float64 temporaries (a 50,000 × 2,048 tensor would need 0.8 GB each).
        for start in range(0, features.shape[0], self._CHUNK_ROWS):
            x = features[start : start + self._CHUNK_ROWS].detach().to(torch.float64)
            if self.shift is None:
                self._init_buffers(x)
            assert self.shift is not None and self.sum is not None
            assert self.sum_outer is not None
            xc = x.to(self.shift.device) - self.shift
            del x
            self.sum.add_(xc.sum(0), alpha=sign)
            self.sum_outer.addmm_(xc.T, xc, alpha=sign)
            self.count += int(sign) * xc.shape[0]

    def update(self, features: Tensor) -> FeatureStats:
        """Add a batch of features ``[N, D]``; returns ``self``."""
        self._accumulate(features, 1.0)
        return self

    def remove(self, features: Tensor) -> FeatureStats:
        """Take back features added before (used to drop duplicated samples); returns ``self``."""
        if features.shape[0] > self.count:
            raise ValueError(f"cannot remove {features.shape[0]} rows from {self.count}")
        self._accumulate(features, -1.0)
        return self

    def merge(self, other: FeatureStats) -> FeatureStats:
        """Add the samples summarised by ``other`` (e.g. another rank's); returns ``self``."""
        if other.count == 0 or other.shift is None:
            return self
        if self.dim is not None and other.dim != self.dim:
            raise ValueError(f"cannot merge stats of dim {other.dim} into dim {self.dim}")
        assert other.sum is not None and other.sum_outer is not None
        if self.shift is None:
            self.dim = other.dim
            if self.device is None:
                self.device = other.shift.device
            self.shift = other.shift.to(self.device).clone()
            self.sum = torch.zeros_like(self.shift)
            self.sum_outer = torch.zeros(
                self.shift.shape[0], self.shift.shape[0], dtype=torch.float64, device=self.device
            )
        assert self.sum is not None and self.sum_outer is not None
        # Re-centre other's sums on our shift: x − c = (x − c_o) + δ with δ = c_o − c.
        n = other.count
        delta = other.shift.to(self.device) - self.shift
        s1 = other.sum.to(self.device)
        s2 = other.sum_outer.to(self.device)
        self.sum.add_(s1 + n * delta)
        self.sum_outer.add_(s2 + torch.outer(s1, delta) + torch.outer(delta, s1))
        self.sum_outer.add_(torch.outer(delta, delta), alpha=n)
        self.count += n
        return self

    # -- results ----------------------------------------------------------------------------
    @property
    def mean(self) -> Tensor:
        """Mean feature (float64, CPU)."""
        if self.count < 1:
            raise ValueError("FeatureStats is empty")
        assert self.shift is not None and self.sum is not None
        return (self.shift + self.sum / self.count).cpu()

    @property
    def covariance(self) -> Tensor:
        """Unbiased covariance (divides by n − 1, like ``numpy.cov``), float64, CPU."""
        if self.count < 2:
            raise ValueError(f"covariance needs at least 2 samples, have {self.count}")
        assert self.sum is not None and self.sum_outer is not None
        cov = (self.sum_outer - torch.outer(self.sum, self.sum) / self.count) / (self.count - 1)
        return (0.5 * (cov + cov.T)).cpu()

    @classmethod
    def from_features(cls, features: Tensor) -> FeatureStats:
        """Statistics of one feature tensor ``[N, D]``."""
        return cls().update(features)

    # -- persistence ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Plain dict of CPU tensors and ints (``torch.save``-able with ``weights_only``)."""
        cpu = lambda t: None if t is None else t.detach().cpu().clone()  # noqa: E731
        return {
            "dim": self.dim,
            "count": self.count,
            "shift": cpu(self.shift),
            "sum": cpu(self.sum),
            "sum_outer": cpu(self.sum_outer),
        }

    @classmethod
    def from_state_dict(
        cls, state: Mapping[str, Any], device: torch.device | str | None = None
    ) -> FeatureStats:
        """Inverse of :meth:`state_dict`; buffers go to ``device`` (default CPU)."""
        missing = {"dim", "count", "shift", "sum", "sum_outer"} - set(state)
        if missing:
            raise KeyError(f"FeatureStats state is missing keys {sorted(missing)}")
        dev = torch.device(device) if device is not None else torch.device("cpu")
        out = cls(dim=state["dim"], device=dev)
        out.count = int(state["count"])
        if state["shift"] is not None:
            out.shift = state["shift"].to(dev, torch.float64)
            out.sum = state["sum"].to(dev, torch.float64)
            out.sum_outer = state["sum_outer"].to(dev, torch.float64)
        return out

    def __repr__(self) -> str:
        return f"FeatureStats(dim={self.dim}, count={self.count})"


class FIDMetric(Metric):
    """Registry entry ``fid``: a :class:`FeatureStats` per rank, merged on rank 0; a repeated
    sample is taken back with :meth:`FeatureStats.remove` from its kept features."""

    name = "fid"
    keys = ("fid",)
    inputs = frozenset({"features"})

    def new_state(self) -> FeatureStats:
        return FeatureStats()

    def update(self, state: FeatureStats, batch: MetricBatch) -> None:
        assert batch.features is not None
        state.update(batch.features)  # validates first: on error the sums are unchanged

    def state_dict(self, state: FeatureStats) -> dict[str, Any]:
        return state.state_dict()

    def combine(self, states: list[Mapping[str, Any]]) -> FeatureStats:
        stats = FeatureStats()
        for s in states:
            stats.merge(FeatureStats.from_state_dict(s))
        return stats

    def sample_rows(self, batch: MetricBatch) -> dict[str, Tensor]:
        assert batch.features is not None
        return {"features": batch.features.detach().to("cpu", torch.float32)}

    def remove(self, combined: FeatureStats, rows: Mapping[str, Tensor]) -> FeatureStats:
        return combined.remove(rows["features"])

    def compute(self, combined: FeatureStats, ctx: ComputeContext) -> dict[str, Any]:
        stats = combined
        if stats.count < 2:
            raise RuntimeError(f"GenerativeMetrics saw {stats.count} samples; need at least 2")
        ref = ctx.reference
        ref_mean, ref_cov = field_of(ref, "mean"), field_of(ref, "cov")
        if ref_mean is None or ref_cov is None:
            raise ValueError("reference statistics need 'mean' and 'cov'")
        ref_mean, ref_cov = torch.as_tensor(ref_mean), torch.as_tensor(ref_cov)
        if ref_mean.shape != (stats.dim,):
            raise ValueError(
                f"reference mean has shape {tuple(ref_mean.shape)} but the generated features "
                f"have dim {stats.dim} (extractor {ctx.extractor_name!r})"
            )
        return {"fid": fid_from_stats(stats.mean, stats.covariance, ref_mean, ref_cov)}
