"""Lightning callback: FID, precision, recall, class accuracy (or any registered metric) of
generated images.

Contract with the sampling module: ``predict_step`` returns a dict with

- ``"images"``: uint8 ``[N, H, W, C]`` (``[N, H, W]`` for grey),
- ``"labels"``: int64 ``[N]``, the requested classes (needed for ``class_acc``),
- ``"indices"``: int64 ``[N]``, the global sample indices (used to drop repeated samples).

The metrics are entries of :mod:`calguide.metrics.registry` (by default ``fid``,
``precision_recall``, ``class_acc`` and ``kid``). Each process accumulates the batches it
predicts (:class:`~calguide.metrics.accumulate.RankAccumulator`: repeated indices dropped,
features extracted once for every entry); at the end of ``trainer.predict`` the processes'
states are gathered on rank 0 and combined per entry, each index counted once. Rank 0 computes
the entries' results, logs the scalar ones to ``trainer.loggers``, writes ``metrics.json`` to
``output_dir`` (atomically), and every rank gets them in :attr:`GenerativeMetrics.results`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from torch import Tensor

from calguide.io import atomic_write_json
from calguide.metrics.accumulate import (
    RankAccumulator,
    combine_rank_states,
    combine_states,
    compute_results,
)
from calguide.metrics.features import FeatureExtractor
from calguide.metrics.per_sample import EVAL_FEATURES, combine_kept, write_eval_features
from calguide.metrics.registry import (
    BUILTIN_METRICS,
    Metric,
    MetricOptions,
    field_of,
    metric_keys,
    resolve_metrics,
)

__all__ = ["METRIC_NAMES", "GenerativeMetrics", "combine_rank_states", "combine_states"]

METRIC_NAMES = metric_keys(BUILTIN_METRICS)
"""The built-in entries' loggable keys: ("fid", "precision", "recall", "class_acc")."""
_ERROR_KEY = "__error__"


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
        self.accumulator = RankAccumulator(
            self.metrics,
            extractor,
            classifier,
            dedup_window=dedup_window,
            keep_features=keep_features,
        )
        self.extractor = extractor
        self.reference = reference
        self.classifier = classifier
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.keep_features = keep_features
        self.results: dict[str, Any] | None = None
        self.per_sample: dict[str, Tensor] | None = None

    @property
    def metric_keys(self) -> tuple[str, ...]:
        """The loggable result keys of the selected metrics, in order."""
        return tuple(key for m in self.metrics for key in m.keys)

    def reset(self) -> None:
        """Forget everything accumulated (called at every predict start)."""
        self.accumulator.reset()

    def update(self, outputs: Mapping[str, Tensor]) -> None:
        """Consume one ``predict_step`` output (also usable without a Trainer)."""
        self.accumulator.update(outputs)

    def local_state(self) -> dict[str, Any]:
        """This rank's accumulated state as CPU data (what is gathered on rank 0)."""
        return self.accumulator.local_state()

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
        name = getattr(self.extractor, "name", None)
        return compute_results(self.metrics, combined, name, self._resolve_reference, device)

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
