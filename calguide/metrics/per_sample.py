"""Per-sample evaluation data of a run (``eval_features.npz``): what a later comparison resamples.

Every sampling run with metrics keeps, beside ``metrics.json``, one row per sample: its global
index, its requested label, its evaluation features (float16: 2 bytes × D per sample, 512 B at
the digits' D = 256, 4 KB at Inception's 2,048, so 200 MB for a 50,000-sample ImageNet row) and
whether the evaluation classifier put it in its requested class (1 / 0, −1 without a
classifier). Rows share an index's noise and label across the rows of a table, so two runs'
files pair sample by sample. The file also names the extractor and the reference statistics
file, so ``calguide-aggregate`` recomputes any metric on any subset of the samples without
the images or the networks.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from calguide.io import atomic_path

EVAL_FEATURES = "eval_features.npz"
FORMAT = 1


@dataclass(frozen=True)
class PerSample:
    """One run's per-sample evaluation data, sorted by sample index."""

    indices: Tensor  # int64 [n]
    labels: Tensor  # int64 [n], requested labels (−1 unknown)
    features: Tensor  # float16 [n, D]
    correct: Tensor  # int8 [n]: 1 / 0, −1 not scored
    extractor: str | None = None
    reference_file: str | None = None

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def take(self, positions: Tensor) -> PerSample:
        return PerSample(
            self.indices[positions],
            self.labels[positions],
            self.features[positions],
            self.correct[positions],
            self.extractor,
            self.reference_file,
        )


def combine_kept(states: Sequence[Mapping[str, Any]]) -> dict[str, Tensor] | None:
    """The ranks' kept rows (``state["kept"]``) as one set: each index once, by index."""
    kept = [s["kept"] for s in states if s.get("kept") is not None]
    if not kept:
        return None
    idx = torch.cat([k["indices"] for k in kept])
    uniq, inverse = torch.unique(idx, return_inverse=True)
    first = torch.full((uniq.shape[0],), idx.shape[0], dtype=torch.int64)
    first.scatter_reduce_(0, inverse, torch.arange(idx.shape[0]), reduce="amin")
    return {
        key: torch.cat([k[key] for k in kept])[first]
        for key in ("indices", "features", "labels", "correct")
    }


def write_eval_features(
    path: str | os.PathLike,
    rows: Mapping[str, Tensor],
    *,
    extractor: str | None,
    reference_file: str | None,
) -> Path:
    """Write ``rows`` (indices, labels, features, correct) atomically as an ``.npz``."""
    meta = {"format": FORMAT, "extractor": extractor, "reference_file": reference_file}
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(
            handle,
            indices=rows["indices"].numpy().astype(np.int64),
            labels=rows["labels"].numpy().astype(np.int64),
            features=rows["features"].numpy().astype(np.float16),
            correct=rows["correct"].numpy().astype(np.int8),
            meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
        )
    return Path(path)


class PerSampleError(ValueError):
    """A run's per-sample file is missing, unreadable or of the wrong layout."""


def read_eval_features(path: str | os.PathLike) -> PerSample:
    """The :class:`PerSample` rows of an ``eval_features.npz`` (one clear error otherwise)."""
    p = Path(path)
    if not p.is_file():
        raise PerSampleError(f"{p}: no per-sample evaluation file (rerun the run's calguide-eval)")
    try:
        with np.load(p, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except Exception as exc:  # zip, numpy and OS errors on garbage or truncated files
        raise PerSampleError(f"{p}: cannot read ({type(exc).__name__}: {exc})") from None
    need = ("indices", "labels", "features", "correct", "meta")
    missing = [k for k in need if k not in arrays]
    if missing:
        raise PerSampleError(f"{p}: missing arrays {missing}; expected {list(need)}")
    n = arrays["indices"].shape[0]
    if arrays["features"].ndim != 2 or any(arrays[k].shape[0] != n for k in need[:4]):
        raise PerSampleError(f"{p}: arrays of different lengths or features not 2-D")
    meta = json.loads(bytes(arrays["meta"]).decode())
    order = np.argsort(arrays["indices"], kind="stable")
    return PerSample(
        torch.from_numpy(arrays["indices"][order]),
        torch.from_numpy(arrays["labels"][order]),
        torch.from_numpy(arrays["features"][order]),
        torch.from_numpy(arrays["correct"][order]),
        meta.get("extractor"),
        meta.get("reference_file"),
    )


PER_SAMPLE_METRICS = ("fid", "kid", "precision", "recall", "class_acc")
"""Metrics that a comparison can recompute on any subset or reweighting of a run's samples."""
SMOOTH_METRICS = ("fid", "kid", "class_acc")
"""Metrics that are smooth functions of the samples' moments (FID of their mean and covariance,
KID a U-statistic, class accuracy a mean): the jackknife's bias correction applies to them.
Precision and recall count k-NN balls: not smooth, so Quenouille's correction multiplies the
noise of their leave-one-group-out values (recall on weakly paired A/A rows was decisive in
24.9% of 2,000 draws at 95% once corrected, 0.95% without: docs/calibration/
verdict_simulation.md), and they are judged at the rows' sample size."""
KID_MAX_SAMPLES = 5000
"""KID's replicates need the n × n kernel matrix: above this many samples they use the same
index-chosen subset of this size in every row (an unbiased estimate with a wider interval)."""


def replicates(
    rows: PerSample,
    weights: Tensor,
    reference: Mapping[str, Any],
    metrics: Sequence[str],
    *,
    k: int = 3,
    device: torch.device | str | None = None,
) -> dict[str, Tensor]:
    """Each metric of ``metrics`` on each reweighted copy of ``rows`` (row b of ``weights``
    [B, n]: multiplicities; all ones = the set itself), against ``reference`` (the dict of
    :func:`~calguide.metrics.reference.cached_reference`). float64 [B] per metric."""
    from calguide.metrics._subset import index_keys, smallest_keys
    from calguide.metrics.fid import fid_replicates
    from calguide.metrics.kid import kid_replicates
    from calguide.metrics.prdc import precision_recall_replicates

    unknown = sorted(set(metrics) - set(PER_SAMPLE_METRICS))
    if unknown:
        raise ValueError(f"cannot recompute {unknown} from per-sample data; {PER_SAMPLE_METRICS}")
    if weights.ndim != 2 or weights.shape[1] != len(rows):
        raise ValueError(f"weights must be [B, {len(rows)}], got {tuple(weights.shape)}")
    features = rows.features.to(torch.float32)
    real = reference.get("features")
    out: dict[str, Tensor] = {}
    if "fid" in metrics:
        out["fid"] = fid_replicates(
            features, weights, reference["mean"], reference["cov"], device=device
        )
    if "kid" in metrics:
        if real is None:
            raise ValueError("KID needs the reference's feature rows")
        positions = torch.arange(len(rows))
        if len(rows) > KID_MAX_SAMPLES:
            positions = torch.sort(smallest_keys(index_keys(rows.indices), KID_MAX_SAMPLES)).values
        out["kid"] = kid_replicates(
            features[positions], weights[:, positions], torch.as_tensor(real).float()
        )
    if "precision" in metrics or "recall" in metrics:
        if real is None:
            raise ValueError("precision and recall need the reference's feature rows")
        precision, recall = precision_recall_replicates(
            torch.as_tensor(real), rows.features, weights, k, device=device
        )
        out.update(precision=precision, recall=recall)
    if "class_acc" in metrics:
        if bool((rows.correct < 0).any()):
            raise ValueError("class_acc needs every sample scored by an evaluation classifier")
        w = weights.to(torch.float64)
        out["class_acc"] = (w @ rows.correct.to(torch.float64)) / w.sum(1)
    return {m: out[m] for m in metrics}


def values(
    rows: PerSample, reference: Mapping[str, Any], metrics: Sequence[str], *, k: int = 3
) -> dict[str, float]:
    """The metrics of the set ``rows`` itself (one all-ones replicate)."""
    ones = torch.ones(1, len(rows), dtype=torch.float64)
    return {m: float(v[0]) for m, v in replicates(rows, ones, reference, metrics, k=k).items()}


def leave_one_out(
    rows: PerSample,
    groups: Tensor,
    reference: Mapping[str, Any],
    metrics: Sequence[str],
    *,
    k: int = 3,
    device: torch.device | str | None = None,
) -> dict[str, tuple[float, Tensor]]:
    """Each metric on all of ``rows`` and without each group of ``groups`` ([n], ids 0..G−1):
    what the delete-one-group jackknife needs. {metric: (value, [G] values)}. Every value is
    the metric recomputed on what is kept: FID's statistics, and precision's and recall's k-NN
    radii (a reweighting that kept the whole set's radii would not be a jackknife)."""
    from calguide.metrics.fid import fid_leave_one_out
    from calguide.metrics.prdc import precision_recall_leave_one_out

    groups = groups.to(torch.int64)
    count = int(groups.max()) + 1
    out: dict[str, tuple[float, Tensor]] = {}
    if "fid" in metrics:
        out["fid"] = fid_leave_one_out(
            rows.features.to(torch.float32), groups, reference["mean"], reference["cov"],
            device=device,
        )  # fmt: skip
    if "precision" in metrics or "recall" in metrics:
        real = reference.get("features")
        if real is None:
            raise ValueError("precision and recall need the reference's feature rows")
        found = precision_recall_leave_one_out(
            torch.as_tensor(real), rows.features, groups, k, device=device
        )
        for name, values in zip(("precision", "recall"), found):
            out[name] = (float(values[0]), values[1:])
    others = [m for m in metrics if m not in ("fid", "precision", "recall")]
    if others:
        keep = torch.ones(count + 1, len(rows), dtype=torch.float64)
        keep[torch.arange(1, count + 1)[groups], torch.arange(len(rows))] = 0.0
        found = replicates(rows, keep, reference, others, k=k, device=device)
        out.update({m: (float(v[0]), v[1:]) for m, v in found.items()})
    return {m: out[m] for m in metrics}
