"""Lightning callback: FID, precision, recall, class accuracy (or any registered metric) of
generated images.

Contract with the sampling module: ``predict_step`` returns a dict with

- ``"images"``: uint8 ``[N, H, W, C]`` (``[N, H, W]`` for grey),
- ``"labels"``: int64 ``[N]``, the requested classes (needed for ``class_acc``),
- ``"indices"``: int64 ``[N]``, the global sample indices (used to drop repeated samples).

The metrics are entries of :mod:`calguide.metrics.registry` (by default ``fid``,
``precision_recall`` and ``class_acc``), each with its own per-rank state. Per batch the callback
drops the indices this rank has already seen, extracts features and/or evaluation-classifier
logits once for all entries (it never keeps images) and hands them to every entry's ``update``.
At the end of ``trainer.predict`` the ranks' states are gathered on rank 0 and combined per
entry; an index generated on several ranks (e.g. by a padding ``DistributedSampler``) is counted
once: the callback keeps each entry's ``sample_rows`` of the last ``dedup_window`` samples per
rank and hands a repeat's rows to the entry's ``remove``. Rank 0 computes the entries' results,
logs the scalar ones to ``trainer.loggers``, writes ``metrics.json`` to ``output_dir``
(atomically), and every rank gets them in :attr:`GenerativeMetrics.results`.
"""

from __future__ import annotations

import math
import os
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from torch import Tensor

from calguide.io import atomic_write_json
from calguide.metrics._subset import SampleBuffer
from calguide.metrics.features import FeatureExtractor, as_uint8_nhwc
from calguide.metrics.per_sample import EVAL_FEATURES, combine_kept, write_eval_features
from calguide.metrics.registry import (
    BUILTIN_METRICS,
    ClassAccuracyMetric,
    ComputeContext,
    Metric,
    MetricBatch,
    MetricOptions,
    field_of,
    get_metric,
    metric_keys,
    resolve_metrics,
)

__all__ = ["METRIC_NAMES", "GenerativeMetrics", "combine_rank_states", "combine_states"]

METRIC_NAMES = metric_keys(BUILTIN_METRICS)
"""The built-in entries' loggable keys: ("fid", "precision", "recall", "class_acc")."""
_ERROR_KEY = "__error__"


def combine_states(states: list[dict[str, Any]], metrics: Sequence[Metric]) -> dict[str, Any]:
    """Merge per-rank states (see ``GenerativeMetrics.local_state``), counting each index once.

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


class GenerativeMetrics(L.Callback):
    """FID / precision / recall / class accuracy (or other registered metrics) of
    ``trainer.predict`` outputs.

    Args:
        extractor: a :class:`~calguide.metrics.features.FeatureExtractor` (Inception or a
            domain classifier); moved to the LightningModule's device at predict start.
        reference: a dict (or object with attributes) with ``mean`` [D], ``cov`` [D, D] and
            optionally ``features`` [M, D] (needed for precision/recall) and ``extractor`` (a
            name checked against ``extractor.name``) — e.g. from
            :func:`~calguide.metrics.reference.cached_reference`; or a zero-argument callable
            returning one, called on rank 0 only when a metric needs it.
        metrics: the entries to compute, in result order: names from
            :func:`~calguide.metrics.registry.metric_names` (built with this callback's
            ``k``, ``max_pr_samples``, … see :class:`~calguide.metrics.registry.MetricOptions`)
            or :class:`~calguide.metrics.registry.Metric` instances. Default: the built-ins,
            ``fid``, ``precision_recall``, ``class_acc``, ``kid``.
        classifier: evaluation classifier with ``logits(images_uint8)`` for ``class_acc``
            (argmax vs the requested labels). Pass the extractor itself to reuse a
            :class:`~calguide.metrics.features.ClassifierFeatureExtractor` (one forward pass).
            ``None``: ``class_acc`` is reported as ``None``.
        output_dir: folder for ``metrics.json`` (and ``eval_features.npz``); ``None`` writes
            nothing.
        keep_features: also keep every sample's features (float16), requested label and, with
            a classifier, whether it classified the sample as requested, and write them to
            ``output_dir/eval_features.npz`` (:func:`write_eval_features`): what a later
            comparison resamples (``calguide-aggregate``'s intervals). 2 bytes × D per sample:
            200 MB for 50,000 Inception features.
        k: neighbourhood size of precision/recall.
        max_pr_samples: cap on the feature rows kept for precision/recall, generated and
            reference alike (deterministic subset by sample index / row position);
            ``None`` keeps all. FID always uses every sample.
        pr_features_dtype: storage of the kept rows: float16 (default; 4 KB per sample at
            D = 2048, 200 MB for 50k) or float32 (twice that). Distances are computed in
            float32 either way; float16 storage moved precision by 1e-4 at 50k random
            2048-d features, and keeps a 50k-vs-50k evaluation under 2 GB resident.
        pr_batch_size: block size of the distance computation (memory ∝ its square: 5,000
            → 100 MB per distance block; 10,000 → 400 MB).
        dedup_window: per rank, the per-sample rows (e.g. features) of the last this-many
            samples are kept so that a sample repeated on another rank can be taken back.
        seed: seed of the subset choice.
    """

    def __init__(
        self,
        extractor: FeatureExtractor,
        reference: Mapping[str, Any] | Any | Callable[[], Any],
        *,
        metrics: Sequence[str | Metric] = BUILTIN_METRICS,
        classifier: Any | None = None,
        output_dir: str | os.PathLike | None = None,
        k: int = 3,
        max_pr_samples: int | None = 50_000,
        pr_features_dtype: torch.dtype | str = torch.float16,
        pr_batch_size: int = 5000,
        dedup_window: int = 1024,
        seed: int = 0,
        keep_features: bool = False,
    ) -> None:
        super().__init__()
        options = MetricOptions(
            k=k,
            max_pr_samples=max_pr_samples,
            pr_features_dtype=pr_features_dtype,
            pr_batch_size=pr_batch_size,
            seed=seed,
        )
        self.metrics: tuple[Metric, ...] = resolve_metrics(metrics, options)
        if dedup_window < 0:
            raise ValueError(f"dedup_window must be >= 0, got {dedup_window}")
        if classifier is not None and not callable(getattr(classifier, "logits", None)):
            raise TypeError("classifier must have a logits(images_uint8) method")
        self.extractor = extractor
        self.reference = reference
        self.classifier = classifier
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.dedup_window = dedup_window
        self.keep_features = keep_features
        self.results: dict[str, Any] | None = None
        self.per_sample: dict[str, Tensor] | None = None
        self.reset()

    @property
    def metric_keys(self) -> tuple[str, ...]:
        """The loggable result keys of the selected metrics, in order."""
        return tuple(key for m in self.metrics for key in m.keys)

    def _needs(self, what: str) -> bool:
        return any(what in m.inputs for m in self.metrics)

    # -- per-rank accumulation --------------------------------------------------------------
    def reset(self) -> None:
        """Forget everything accumulated (called at every predict start)."""
        self._states: dict[str, Any] = {m.name: m.new_state() for m in self.metrics}
        self._seen: set[int] = set()
        self._seen_chunks: list[Tensor] = []
        self._tail: deque[tuple[Tensor, dict[str, Mapping[str, Tensor]]]] = deque()
        self._tail_rows = 0
        self._kept = SampleBuffer(None, torch.float16) if self.keep_features else None
        self._kept_labels: list[Tensor] = []
        self._kept_correct: list[Tensor] = []

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.reset()
        self.results = None
        movable = [self.extractor]
        if self.classifier is not None and self.classifier is not self.extractor:
            movable.append(self.classifier)
        for obj in movable:
            if callable(getattr(obj, "to", None)):
                obj.to(pl_module.device)

    def on_predict_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self.update(outputs)

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

        want_feats = self._needs("features") or self.keep_features
        want_logits = self.classifier is not None and labels is not None and self._needs("logits")
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
            m.update(self._states[m.name], batch)
        self._seen.update(fresh)
        self._seen_chunks.append(indices)
        if self.dedup_window:
            self._tail.append((indices, rows))
            self._tail_rows += indices.shape[0]
            while self._tail and self._tail_rows - self._tail[0][0].shape[0] >= self.dedup_window:
                self._tail_rows -= self._tail.popleft()[0].shape[0]

    def local_state(self) -> dict[str, Any]:
        """This rank's accumulated state as CPU data (what is gathered on rank 0)."""
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
            "metrics": {m.name: m.state_dict(self._states[m.name]) for m in self.metrics},
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

    # -- end of prediction ------------------------------------------------------------------
    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        states = _gather_to_rank_zero(self.local_state())
        results: dict[str, Any] | None = None
        error: BaseException | None = None
        if states is not None:
            try:
                self.per_sample = combine_kept(states)
                combined = combine_states(states, self.metrics)
                del states
                results = self._compute(combined, pl_module.device)
                self._publish(results, trainer)
            except Exception as exc:  # tell the other ranks instead of leaving them waiting
                error = exc
                results = {_ERROR_KEY: f"{type(exc).__name__}: {exc}"}
        results = _broadcast_from_rank_zero(results)
        self.reset()  # free the kept features; the numbers stay in self.results
        if error is not None:
            raise error
        if results is not None and _ERROR_KEY in results:
            raise RuntimeError(f"GenerativeMetrics failed on rank 0: {results[_ERROR_KEY]}")
        self.results = results

    def compute(self, device: torch.device | str = "cpu") -> dict[str, Any]:
        """Metrics from this process's state alone (no Trainer, no gathering)."""
        state = self.local_state()
        self.per_sample = combine_kept([state])
        combined = combine_states([state], self.metrics)
        self.results = self._compute(combined, torch.device(device))
        if self.output_dir is not None:
            self.write_features(self.results)
        return self.results

    def _resolve_reference(self) -> Any:
        ref = self.reference
        if callable(ref) and not isinstance(ref, Mapping) and field_of(ref, "mean") is None:
            ref = ref()
            self.reference = ref
        ref_name = field_of(ref, "extractor")
        ext_name = getattr(self.extractor, "name", None)
        if ref_name is not None and ext_name is not None and ref_name != ext_name:
            raise ValueError(
                f"reference statistics were computed with extractor {ref_name!r} but the "
                f"callback uses {ext_name!r}"
            )
        return ref

    def _compute(self, combined: dict[str, Any], device: torch.device) -> dict[str, Any]:
        ext_name = getattr(self.extractor, "name", None)
        ctx = ComputeContext(device, ext_name, self._resolve_reference)
        parts: dict[str, dict[str, Any]] = {}
        for m in self.metrics:
            out = dict(m.compute(combined["metrics"][m.name], ctx))
            declared = m.keys + m.extra_keys
            if set(out) != set(declared):
                raise RuntimeError(
                    f"metric {m.name!r} returned keys {sorted(out)} but declares {list(declared)}"
                )
            parts[m.name] = out
        # Scalars first, then the counts and the extractor (the historical order of the keys).
        results = {key: parts[m.name][key] for m in self.metrics for key in m.keys}
        results["num_samples"] = combined["num_samples"]
        results.update({key: parts[m.name][key] for m in self.metrics for key in m.extra_keys})
        results["extractor"] = ext_name
        return results

    def _publish(self, results: dict[str, Any], trainer: L.Trainer) -> None:
        metrics = {
            k: float(results[k])
            for k in self.metric_keys
            if results[k] is not None and math.isfinite(results[k])
        }
        for logger in trainer.loggers:
            logger.log_metrics(metrics)
            logger.save()
        if self.output_dir is not None:
            atomic_write_json(results, self.output_dir / "metrics.json")
            self.write_features(results)

    def write_features(self, results: Mapping[str, Any]) -> Path | None:
        """``eval_features.npz`` in ``output_dir`` (with ``keep_features``), naming the
        extractor and the reference file the metrics were computed against."""
        if self.per_sample is None or self.output_dir is None:
            return None
        ref = self.reference if not callable(self.reference) else None
        return write_eval_features(
            self.output_dir / EVAL_FEATURES,
            self.per_sample,
            extractor=str(results.get("extractor")),
            reference_file=field_of(ref, "file") if ref is not None else None,
        )


def _dist_active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _gather_to_rank_zero(state: dict[str, Any]) -> list[dict[str, Any]] | None:
    """[state of rank 0, rank 1, …] on rank 0, None elsewhere; [state] without DDP."""
    if not _dist_active():
        return [state]
    rank, world = dist.get_rank(), dist.get_world_size()
    out: list[Any] | None = [None] * world if rank == 0 else None
    dist.gather_object(state, out, dst=0)
    return out


def _broadcast_from_rank_zero(results: dict[str, Any] | None) -> dict[str, Any] | None:
    if not _dist_active():
        return results
    box = [results]
    dist.broadcast_object_list(box, src=0)
    return box[0]
