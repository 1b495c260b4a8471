"""What one process accumulates of a sampling run's outputs for the metric entries, and how the
processes' accumulations combine: pure bookkeeping, no Lightning.

Per batch the accumulator drops the sample indices it has already seen, extracts features
and/or evaluation-classifier logits once for all entries (it never keeps images) and hands
them to every entry's ``update``. It keeps each entry's ``sample_rows`` of its last
``dedup_window`` samples, so that :func:`combine_states` can take back a sample produced on
several processes (a padding ``DistributedSampler``'s repeats) with the entry's ``remove``.
With ``keep_features`` it also keeps every sample's features (float16), requested label and
whether the evaluation classifier agreed: what ``eval_features.npz`` holds.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from calguide.metrics._subset import SampleBuffer
from calguide.metrics.features import FeatureExtractor, as_uint8_nhwc
from calguide.metrics.registry import (
    ClassAccuracyMetric,
    ComputeContext,
    Metric,
    MetricBatch,
    MetricOptions,
    get_metric,
)


class RankAccumulator:
    """One process's accumulation for ``metrics`` (see the module docstring)."""

    def __init__(
        self,
        metrics: Sequence[Metric],
        extractor: FeatureExtractor,
        classifier: Any | None = None,
        *,
        dedup_window: int = 1024,
        keep_features: bool = False,
    ) -> None:
        if dedup_window < 0:
            raise ValueError(f"dedup_window must be >= 0, got {dedup_window}")
        if classifier is not None and not callable(getattr(classifier, "logits", None)):
            raise TypeError("classifier must have a logits(images_uint8) method")
        self.metrics = tuple(metrics)
        self.extractor = extractor
        self.classifier = classifier
        self.dedup_window = dedup_window
        self.keep_features = keep_features
        self.reset()

    def needs(self, what: str) -> bool:
        return any(what in m.inputs for m in self.metrics)

    def reset(self) -> None:
        """Forget everything accumulated."""
        self.states: dict[str, Any] = {m.name: m.new_state() for m in self.metrics}
        self._seen: set[int] = set()
        self._seen_chunks: list[Tensor] = []
        self._tail: deque[tuple[Tensor, dict[str, Mapping[str, Tensor]]]] = deque()
        self._tail_rows = 0
        self._kept = SampleBuffer(None, torch.float16) if self.keep_features else None
        self._kept_labels: list[Tensor] = []
        self._kept_correct: list[Tensor] = []

    def update(self, outputs: Mapping[str, Tensor]) -> None:
        """Consume one ``predict_step`` output (also usable without a Trainer)."""
        if not isinstance(outputs, Mapping) or "images" not in outputs or "indices" not in outputs:
            got = sorted(outputs) if isinstance(outputs, Mapping) else type(outputs).__name__
            raise TypeError(
                "GenerativeMetrics needs predict_step to return a dict with 'images' (uint8 "
                f"N×H×W×C), 'labels' (int64 N) and 'indices' (int64 N); got {got}"
            )
        images = as_uint8_nhwc(outputs["images"])
        indices = torch.as_tensor(outputs["indices"]).detach().cpu().to(torch.int64).reshape(-1)
        labels = outputs.get("labels")
        if labels is not None:
            labels = torch.as_tensor(labels).detach().cpu().to(torch.int64).reshape(-1)
        n = images.shape[0]
        if indices.shape[0] != n or (labels is not None and labels.shape[0] != n):
            raise ValueError(
                f"predict_step output lengths differ: {n} images, {indices.shape[0]} indices"
                + ("" if labels is None else f", {labels.shape[0]} labels")
            )
        # Drop indices this rank has already seen (also repeats inside the batch).
        keep, fresh = [], set()
        for pos, i in enumerate(indices.tolist()):
            if i not in self._seen and i not in fresh:
                fresh.add(i)
                keep.append(pos)
        if not keep:
            return
        if len(keep) < n:
            sel = torch.tensor(keep, dtype=torch.int64)
            images, indices = images[sel.to(images.device)], indices[sel]
            labels = labels[sel] if labels is not None else None

        want_feats = self.needs("features") or self.keep_features
        want_logits = self.classifier is not None and labels is not None and self.needs("logits")
        feats = logits = None
        if (
            want_feats
            and want_logits
            and self.classifier is self.extractor
            and hasattr(self.extractor, "features_and_logits")
        ):
            feats, logits = self.extractor.features_and_logits(images)
        else:
            feats = self.extractor(images) if want_feats else None
            logits = self.classifier.logits(images) if want_logits else None
        if feats is not None and (feats.ndim != 2 or feats.shape[0] != indices.shape[0]):
            raise ValueError(f"extractor returned features of shape {tuple(feats.shape)}")
        batch = MetricBatch(indices=indices, labels=labels, features=feats, logits=logits)

        if self._kept is not None:  # before the metrics: a float16 overflow leaves all unseen
            self._kept.add(indices, feats)
            self._kept_labels.append(labels if labels is not None else torch.full_like(indices, -1))
            self._kept_correct.append(ClassAccuracyMetric._correct(batch))
        rows = {m.name: m.sample_rows(batch) for m in self.metrics} if self.dedup_window else {}
        for m in self.metrics:  # fid first by default: it validates before changing anything
            m.update(self.states[m.name], batch)
        self._seen.update(fresh)
        self._seen_chunks.append(indices)
        if self.dedup_window:
            self._tail.append((indices, rows))
            self._tail_rows += indices.shape[0]
            while self._tail and self._tail_rows - self._tail[0][0].shape[0] >= self.dedup_window:
                self._tail_rows -= self._tail.popleft()[0].shape[0]

    def local_state(self) -> dict[str, Any]:
        """This process's accumulated state as CPU data (what is gathered on rank 0)."""
        if self._tail:
            t_idx = torch.cat([t[0] for t in self._tail])
            tail = {
                m.name: {
                    key: torch.cat([t[1][m.name][key] for t in self._tail])
                    for key in self._tail[0][1][m.name]
                }
                for m in self.metrics
            }
        else:
            t_idx = torch.empty(0, dtype=torch.int64)
            tail = {m.name: {} for m in self.metrics}
        seen = (
            torch.cat(self._seen_chunks) if self._seen_chunks else torch.empty(0, dtype=torch.int64)
        )
        state = {
            "seen": seen,
            "tail_indices": t_idx,
            "tail": tail,
            "metrics": {m.name: m.state_dict(self.states[m.name]) for m in self.metrics},
        }
        if self._kept is not None:
            idx, feats = self._kept.tensors()
            state["kept"] = {
                "indices": idx,
                "features": feats,
                "labels": torch.cat(self._kept_labels) if self._kept_labels else idx.clone(),
                "correct": torch.cat(self._kept_correct)
                if self._kept_correct
                else idx.to(torch.int8),
            }
        return state


def combine_states(states: list[dict[str, Any]], metrics: Sequence[Metric]) -> dict[str, Any]:
    """Merge per-rank states (see :meth:`RankAccumulator.local_state`), counting each index once.

    Every entry combines its ranks' states; a sample index produced on several ranks is kept
    on one and taken back (``Metric.remove``) from the others' contributions, using the rows
    they kept of their last ``dedup_window`` samples (where a padding ``DistributedSampler``
    puts its repeats). Returns ``{"num_samples": unique indices, "metrics": {name: combined}}``.
    """
    seen = [s["seen"] for s in states]
    all_idx = torch.cat(seen) if seen else torch.empty(0, dtype=torch.int64)
    uniq, counts = torch.unique(all_idx, return_counts=True)
    dups = uniq[counts > 1]

    combined = {m.name: m.combine([s["metrics"][m.name] for s in states]) for m in metrics}

    if dups.numel():
        tails = [{int(i): row for row, i in enumerate(s["tail_indices"].tolist())} for s in states]
        for v in dups.tolist():
            holders = [r for r, s in enumerate(seen) if bool((s == v).any())]
            outside = [r for r in holders if v not in tails[r]]
            if len(outside) > 1:
                raise RuntimeError(
                    f"sample index {v} was generated on ranks {holders}, and on ranks {outside} "
                    "it is not among the last `dedup_window` samples, so the duplicate cannot "
                    "be taken back. Does every rank generate every sample (no distributed "
                    "sampler)? Otherwise raise GenerativeMetrics(dedup_window=...)."
                )
            keeper = outside[0] if outside else holders[0]
            for r in holders:
                if r == keeper:
                    continue
                row = tails[r][v]
                for m in metrics:
                    rows = {k: t[row : row + 1] for k, t in states[r]["tail"][m.name].items()}
                    combined[m.name] = m.remove(combined[m.name], rows)
    return {"num_samples": int(uniq.numel()), "metrics": combined}


def combine_rank_states(
    states: list[dict[str, Any]], max_pr_samples: int | None, seed: int = 0
) -> dict[str, Any]:
    """:func:`combine_states` with the registry entries named in the states, built with these
    options (the other options do not change how the built-in entries combine)."""
    options = MetricOptions(max_pr_samples=max_pr_samples, seed=seed)
    names = list(states[0]["metrics"]) if states else []
    return combine_states(states, [get_metric(n).from_options(options) for n in names])


def compute_results(
    metrics: Sequence[Metric],
    combined: dict[str, Any],
    extractor_name: str | None,
    reference: Callable[[], Any],
    device: torch.device,
) -> dict[str, Any]:
    """Every entry's results from the combined states: the scalars first, then the sample
    count, the entries' extra keys and the extractor's name (the order ``metrics.json`` has)."""
    ctx = ComputeContext(device, extractor_name, reference)
    parts: dict[str, dict[str, Any]] = {}
    for m in metrics:
        out = dict(m.compute(combined["metrics"][m.name], ctx))
        declared = m.keys + m.extra_keys
        if set(out) != set(declared):
            raise RuntimeError(
                f"metric {m.name!r} returned keys {sorted(out)} but declares {list(declared)}"
            )
        parts[m.name] = out
    results = {key: parts[m.name][key] for m in metrics for key in m.keys}
    results["num_samples"] = combined["num_samples"]
    results.update({key: parts[m.name][key] for m in metrics for key in m.extra_keys})
    results["extractor"] = extractor_name
    return results
