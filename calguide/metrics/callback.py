"""Lightning callback: FID, precision, recall and class accuracy of generated images.

Contract with the sampling module: ``predict_step`` returns a dict with

- ``"images"``: uint8 ``[N, H, W, C]`` (``[N, H, W]`` for grey),
- ``"labels"``: int64 ``[N]``, the requested classes (needed for ``class_acc``),
- ``"indices"``: int64 ``[N]``, the global sample indices (used to drop repeated samples).

Per batch the callback extracts features (it never keeps images), adds them to a streaming
:class:`~calguide.metrics.fid.FeatureStats`, keeps up to ``max_pr_samples`` feature rows for
precision/recall (the subset is chosen by sample index, so it does not depend on batch size or
device count), and counts correct evaluation-classifier predictions. At the end of
``trainer.predict`` the ranks' states are gathered on rank 0 (repeated indices, e.g. from a
padding ``DistributedSampler``, are counted once), rank 0 computes ``fid``, ``precision``,
``recall`` and ``class_acc``, logs them to ``trainer.loggers``, writes ``metrics.json`` to
``output_dir`` (atomically), and every rank gets them in :attr:`GenerativeMetrics.results`.
"""

from __future__ import annotations

import math
import os
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from torch import Tensor

from calguide.io import atomic_write_json
from calguide.metrics._subset import SampleBuffer, as_dtype, release_free_heap, select_subset
from calguide.metrics.features import FeatureExtractor, as_uint8_nhwc
from calguide.metrics.fid import FeatureStats, fid_from_stats
from calguide.metrics.prdc import precision_recall

__all__ = ["METRIC_NAMES", "GenerativeMetrics", "combine_rank_states"]

METRIC_NAMES = ("fid", "precision", "recall", "class_acc")
_ERROR_KEY = "__error__"


def _field(ref: Any, name: str) -> Any:
    if isinstance(ref, Mapping):
        return ref.get(name)
    return getattr(ref, name, None)


def combine_rank_states(
    states: list[dict[str, Any]], max_pr_samples: int | None, seed: int = 0
) -> dict[str, Any]:
    """Merge per-rank states (see ``GenerativeMetrics.local_state``), counting each index once.

    A sample index produced on several ranks is kept on one and taken back from the others'
    statistics, using the features they kept of their last ``dedup_window`` samples (where a
    padding ``DistributedSampler`` puts its repeats). Returns the merged ``stats``,
    ``pr_features`` (sorted by index), ``correct`` and ``labeled`` counts.
    """
    seen = [s["seen"] for s in states]
    all_idx = torch.cat(seen) if seen else torch.empty(0, dtype=torch.int64)
    uniq, counts = torch.unique(all_idx, return_counts=True)
    dups = uniq[counts > 1]

    stats = FeatureStats()
    for s in states:
        stats.merge(FeatureStats.from_state_dict(s["stats"]))
    correct = sum(int(s["correct"]) for s in states)
    labeled = sum(int(s["labeled"]) for s in states)

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
                stats.remove(states[r]["tail_features"][row : row + 1])
                c = int(states[r]["tail_correct"][row])
                if c >= 0:
                    correct -= c
                    labeled -= 1

    with_rows = [s for s in states if s["pr_indices"].numel()] or states[:1]
    if len(with_rows) == 1:  # no copy of the (possibly 400 MB) feature block
        pr_idx, pr_feat = with_rows[0]["pr_indices"], with_rows[0]["pr_features"]
    else:
        pr_idx = torch.cat([s["pr_indices"] for s in with_rows])
        pr_feat = torch.cat([s["pr_features"] for s in with_rows])
    pr_idx, pr_feat = select_subset(pr_idx, pr_feat, max_pr_samples, seed)
    return {
        "stats": stats,
        "pr_indices": pr_idx,
        "pr_features": pr_feat,
        "correct": correct,
        "labeled": labeled,
    }


class GenerativeMetrics(L.Callback):
    """FID / precision / recall / class accuracy of ``trainer.predict`` outputs.

    Args:
        extractor: a :class:`~calguide.metrics.features.FeatureExtractor` (Inception or a
            domain classifier); moved to the LightningModule's device at predict start.
        reference: a dict (or object with attributes) with ``mean`` [D], ``cov`` [D, D] and
            optionally ``features`` [M, D] (needed for precision/recall) and ``extractor`` (a
            name checked against ``extractor.name``) — e.g. from
            :func:`~calguide.metrics.reference.cached_reference`; or a zero-argument callable
            returning one, called on rank 0 only when the metrics are computed.
        classifier: evaluation classifier with ``logits(images_uint8)`` for ``class_acc``
            (argmax vs the requested labels). Pass the extractor itself to reuse a
            :class:`~calguide.metrics.features.ClassifierFeatureExtractor` (one forward pass).
            ``None``: ``class_acc`` is reported as ``None``.
        output_dir: folder for ``metrics.json``; ``None`` writes nothing.
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
        dedup_window: per rank, the features of the last this-many samples are kept so that a
            sample repeated on another rank can be taken back from the statistics.
        seed: seed of the subset choice.
    """

    def __init__(
        self,
        extractor: FeatureExtractor,
        reference: Mapping[str, Any] | Any | Callable[[], Any],
        *,
        classifier: Any | None = None,
        output_dir: str | os.PathLike | None = None,
        k: int = 3,
        max_pr_samples: int | None = 50_000,
        pr_features_dtype: torch.dtype | str = torch.float16,
        pr_batch_size: int = 5000,
        dedup_window: int = 1024,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if max_pr_samples is not None and max_pr_samples <= k:
            raise ValueError(f"max_pr_samples must exceed k={k}, got {max_pr_samples}")
        if dedup_window < 0:
            raise ValueError(f"dedup_window must be >= 0, got {dedup_window}")
        if classifier is not None and not callable(getattr(classifier, "logits", None)):
            raise TypeError("classifier must have a logits(images_uint8) method")
        self.extractor = extractor
        self.reference = reference
        self.classifier = classifier
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.k = k
        self.max_pr_samples = max_pr_samples
        self.pr_features_dtype = as_dtype(pr_features_dtype)
        self.pr_batch_size = pr_batch_size
        self.dedup_window = dedup_window
        self.seed = seed
        self.results: dict[str, Any] | None = None
        self.reset()

    # -- per-rank accumulation --------------------------------------------------------------
    def reset(self) -> None:
        """Forget everything accumulated (called at every predict start)."""
        self._stats = FeatureStats()
        self._buffer = SampleBuffer(self.max_pr_samples, self.pr_features_dtype, self.seed)
        self._seen: set[int] = set()
        self._seen_chunks: list[Tensor] = []
        self._tail: deque[tuple[Tensor, Tensor, Tensor]] = deque()
        self._tail_rows = 0
        self._correct = 0
        self._labeled = 0

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

        want_acc = self.classifier is not None and labels is not None
        if (
            want_acc
            and self.classifier is self.extractor
            and hasattr(self.extractor, "features_and_logits")
        ):
            feats, logits = self.extractor.features_and_logits(images)
        else:
            feats = self.extractor(images)
            logits = self.classifier.logits(images) if want_acc else None
        if feats.ndim != 2 or feats.shape[0] != indices.shape[0]:
            raise ValueError(f"extractor returned features of shape {tuple(feats.shape)}")
        if logits is not None:
            correct = (logits.argmax(dim=1).cpu() == labels).to(torch.int8)
        else:
            correct = torch.full((indices.shape[0],), -1, dtype=torch.int8)

        self._stats.update(feats)  # validates first: on error nothing below has changed
        self._buffer.add(indices, feats)
        self._seen.update(fresh)
        self._seen_chunks.append(indices)
        if logits is not None:
            self._correct += int(correct.sum())
            self._labeled += int(correct.shape[0])
        if self.dedup_window:
            self._tail.append((indices, feats.detach().to("cpu", torch.float32), correct))
            self._tail_rows += indices.shape[0]
            while self._tail and self._tail_rows - self._tail[0][0].shape[0] >= self.dedup_window:
                self._tail_rows -= self._tail.popleft()[0].shape[0]

    def local_state(self) -> dict[str, Any]:
        """This rank's accumulated state as CPU tensors (what is gathered on rank 0)."""
        pr = self._buffer.state()
        if self._tail:
            t_idx = torch.cat([t[0] for t in self._tail])
            t_feat = torch.cat([t[1] for t in self._tail])
            t_cor = torch.cat([t[2] for t in self._tail])
        else:
            t_idx = torch.empty(0, dtype=torch.int64)
            t_feat = torch.empty(0, self._stats.dim or 0)
            t_cor = torch.empty(0, dtype=torch.int8)
        seen = (
            torch.cat(self._seen_chunks) if self._seen_chunks else torch.empty(0, dtype=torch.int64)
        )
        return {
            "stats": self._stats.state_dict(),
            "seen": seen,
            "tail_indices": t_idx,
            "tail_features": t_feat,
            "tail_correct": t_cor,
            "pr_indices": pr["indices"],
            "pr_features": pr["features"],
            "correct": self._correct,
            "labeled": self._labeled,
        }

    # -- end of prediction ------------------------------------------------------------------
    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        states = _gather_to_rank_zero(self.local_state())
        results: dict[str, Any] | None = None
        error: BaseException | None = None
        if states is not None:
            try:
                combined = combine_rank_states(states, self.max_pr_samples, self.seed)
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
        combined = combine_rank_states([self.local_state()], self.max_pr_samples, self.seed)
        self.results = self._compute(combined, torch.device(device))
        return self.results

    def _resolve_reference(self) -> Any:
        ref = self.reference
        if callable(ref) and not isinstance(ref, Mapping) and _field(ref, "mean") is None:
            ref = ref()
            self.reference = ref
        return ref

    def _compute(self, combined: dict[str, Any], device: torch.device) -> dict[str, Any]:
        stats: FeatureStats = combined["stats"]
        if stats.count < 2:
            raise RuntimeError(f"GenerativeMetrics saw {stats.count} samples; need at least 2")
        ref = self._resolve_reference()
        ref_mean, ref_cov = _field(ref, "mean"), _field(ref, "cov")
        if ref_mean is None or ref_cov is None:
            raise ValueError("reference statistics need 'mean' and 'cov'")
        ref_name = _field(ref, "extractor")
        ext_name = getattr(self.extractor, "name", None)
        if ref_name is not None and ext_name is not None and ref_name != ext_name:
            raise ValueError(
                f"reference statistics were computed with extractor {ref_name!r} but the "
                f"callback uses {ext_name!r}"
            )
        ref_mean, ref_cov = torch.as_tensor(ref_mean), torch.as_tensor(ref_cov)
        if ref_mean.shape != (stats.dim,):
            raise ValueError(
                f"reference mean has shape {tuple(ref_mean.shape)} but the generated features "
                f"have dim {stats.dim} (extractor {ext_name!r})"
            )
        fid = fid_from_stats(stats.mean, stats.covariance, ref_mean, ref_cov)

        precision = recall = None
        ref_feats = _field(ref, "features")
        fake = combined["pr_features"]
        if ref_feats is not None and fake.shape[0] > self.k:
            release_free_heap()  # before the large distance blocks
            ref_feats = torch.as_tensor(ref_feats)
            if self.max_pr_samples is not None and ref_feats.shape[0] > self.max_pr_samples:
                _, ref_feats = select_subset(
                    torch.arange(ref_feats.shape[0]), ref_feats, self.max_pr_samples, self.seed
                )
            precision, recall = precision_recall(
                ref_feats, fake, self.k, batch_size=self.pr_batch_size, device=device
            )
        labeled = combined["labeled"]
        return {
            "fid": fid,
            "precision": precision,
            "recall": recall,
            "class_acc": combined["correct"] / labeled if labeled else None,
            "num_samples": stats.count,
            "num_pr_samples": int(fake.shape[0]),
            "extractor": ext_name,
        }

    def _publish(self, results: dict[str, Any], trainer: L.Trainer) -> None:
        metrics = {
            k: float(results[k])
            for k in METRIC_NAMES
            if results[k] is not None and math.isfinite(results[k])
        }
        for logger in trainer.loggers:
            logger.log_metrics(metrics)
            logger.save()
        if self.output_dir is not None:
            atomic_write_json(results, self.output_dir / "metrics.json")


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
