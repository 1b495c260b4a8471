"""The metrics that :class:`~calguide.modules.metrics.GenerativeMetrics` computes, by name.

A metric is a :class:`Metric` subclass registered with :func:`register_metric`. It declares

- the result keys it reports: :attr:`Metric.keys` (finite ones are logged; the names used by
  sweeps and tables) and :attr:`Metric.extra_keys` (written to ``metrics.json``, not logged);
- what it consumes per batch: :attr:`Metric.inputs`, a subset of ``{"features", "logits"}``
  (every :class:`MetricBatch` also has the sample indices and the requested labels);
- its per-rank state and how to combine it: :meth:`~Metric.new_state`, :meth:`~Metric.update`,
  a picklable :meth:`~Metric.state_dict` (gathered on rank 0), :meth:`~Metric.combine`, and
  :meth:`~Metric.compute` (rank 0 only);
- how to take a sample back: a sample index generated on several ranks (a padding
  ``DistributedSampler``) is counted once. The callback keeps :meth:`~Metric.sample_rows` of each
  rank's last ``dedup_window`` samples and hands the rows of a repeat to :meth:`~Metric.remove`.

Life cycle, per rank: ``state = m.new_state()``; ``m.update(state, batch)`` for each batch of new
samples; ``m.state_dict(state)`` is gathered on rank 0, which runs ``combined = m.combine(dicts)``,
``combined = m.remove(combined, rows)`` once per repeated sample (one row at a time, in a fixed
order), then ``m.compute(combined, ctx)`` → ``{key: value}`` for every declared key.

Built in: ``fid`` (:class:`~calguide.metrics.fid.FIDMetric`), ``precision_recall``
(:class:`~calguide.metrics.prdc.PrecisionRecallMetric`), ``class_acc``
(:class:`ClassAccuracyMetric`) and ``kid`` (:class:`~calguide.metrics.kid.KIDMetric`). A plugin
registers from its own module::

    @register_metric("feature_norm")
    class FeatureNorm(Metric):
        keys = ("feature_norm",)
        ...

and is then selected by name: ``GenerativeMetrics(..., metrics=["fid", "feature_norm"])``.
"""

from __future__ import annotations

import abc
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, overload

import torch
from torch import Tensor

from calguide.metrics._subset import SampleBuffer, combine_kept_rows

__all__ = [
    "BUILTIN_METRICS",
    "INPUTS",
    "RESERVED_KEYS",
    "ClassAccuracyMetric",
    "ComputeContext",
    "FeatureRowsMetric",
    "Metric",
    "MetricBatch",
    "MetricOptions",
    "field_of",
    "get_metric",
    "metric_keys",
    "metric_names",
    "register_metric",
    "resolve_metrics",
    "unregister_metric",
]

BUILTIN_METRICS = ("fid", "precision_recall", "class_acc", "kid")
"""The built-in entries, in the order their keys appear in results: GenerativeMetrics' default."""

INPUTS = frozenset({"features", "logits"})
"""What a metric may ask to be computed per batch (indices and labels always come along)."""

RESERVED_KEYS = ("num_samples", "extractor")
"""Result keys GenerativeMetrics itself reports (unique samples seen, extractor name)."""

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def field_of(ref: Any, name: str) -> Any:
    """``ref[name]`` for a mapping, ``ref.name`` otherwise; None when absent."""
    if isinstance(ref, Mapping):
        return ref.get(name)
    return getattr(ref, name, None)


@dataclass(frozen=True)
class MetricBatch:
    """One batch of new samples (never seen before on this rank), as a metric consumes it.

    ``indices``: int64 [N] on the CPU, the global sample indices. ``labels``: int64 [N] on the
    CPU, the requested classes, or None. ``features``: [N, D] on the extractor's device, None
    unless a selected metric has ``"features"`` in its inputs. ``logits``: [N, C] of the
    evaluation classifier, None unless a selected metric has ``"logits"`` in its inputs and
    there are a classifier and labels.
    """

    indices: Tensor
    labels: Tensor | None = None
    features: Tensor | None = None
    logits: Tensor | None = None

    def __len__(self) -> int:
        return int(self.indices.shape[0])


@dataclass(frozen=True)
class MetricOptions:
    """The knobs of GenerativeMetrics an entry selected by name is built with
    (:meth:`Metric.from_options`); see GenerativeMetrics for their meaning."""

    k: int = 3
    max_pr_samples: int | None = 50_000
    pr_features_dtype: torch.dtype | str = torch.float16
    pr_batch_size: int = 5000
    seed: int = 0


class ComputeContext:
    """What :meth:`Metric.compute` may use besides its combined state (rank 0 only).

    ``reference`` is resolved on first access (it may be a lazy callable that computes the
    reference statistics) and checked against the extractor's name; metrics that never touch
    it never trigger it.
    """

    def __init__(
        self,
        device: torch.device,
        extractor_name: str | None,
        reference: Callable[[], Any],
    ) -> None:
        self.device = device
        self.extractor_name = extractor_name
        self._reference = reference

    @property
    def reference(self) -> Any:
        return self._reference()


class Metric(abc.ABC):
    """One registry entry: per-rank state, how to combine ranks, and the numbers it reports.

    Instances hold settings only (never samples), so one instance serves every rank's state.
    States returned by :meth:`state_dict` must be picklable (plain dicts, ints, CPU tensors):
    they travel through ``torch.distributed.gather_object``.
    """

    name: ClassVar[str] = ""
    """Registry name (set by :func:`register_metric`); also the key of its state."""
    keys: ClassVar[tuple[str, ...]] = ()
    """Scalar results (float or None), logged to the Lightning loggers when finite."""
    extra_keys: ClassVar[tuple[str, ...]] = ()
    """Other results, written to metrics.json after ``num_samples``; not logged."""
    inputs: ClassVar[frozenset[str]] = frozenset({"features"})
    """Subset of :data:`INPUTS` this metric reads from each :class:`MetricBatch`."""

    @classmethod
    def from_options(cls, options: MetricOptions) -> Metric:
        """The entry as GenerativeMetrics builds it from a name; override to read options."""
        return cls()

    @abc.abstractmethod
    def new_state(self) -> Any:
        """A fresh per-rank state (may live on the extractor's device)."""

    @abc.abstractmethod
    def update(self, state: Any, batch: MetricBatch) -> Any:
        """Add a batch of new samples to ``state`` in place (the return value is ignored).

        Validate before changing anything where possible: an error leaves the sample unseen.
        """

    @abc.abstractmethod
    def state_dict(self, state: Any) -> Any:
        """``state`` as picklable CPU data (what is gathered on rank 0)."""

    @abc.abstractmethod
    def combine(self, states: list[Any]) -> Any:
        """Merge the ranks' :meth:`state_dict` s (rank order) into one combined state."""

    @abc.abstractmethod
    def compute(self, combined: Any, ctx: ComputeContext) -> dict[str, Any]:
        """The results: a dict with exactly :attr:`keys` + :attr:`extra_keys`."""

    def sample_rows(self, batch: MetricBatch) -> Mapping[str, Tensor]:
        """Per-sample data ([N, ...] CPU tensors) from which :meth:`remove` can take a sample
        of this batch back. Kept for the last ``dedup_window`` samples of each rank.

        Default: nothing (then :meth:`remove` must not need rows).
        """
        return {}

    def remove(self, combined: Any, rows: Mapping[str, Tensor]) -> Any:
        """Take back samples already counted in ``combined`` (``rows``: a slice of
        :meth:`sample_rows`' tensors, one row per sample); returns the combined state.

        Called on rank 0 for each sample index that several ranks generated, on every rank
        but one. Default: an error, since silently counting a sample twice would be wrong.
        """
        raise NotImplementedError(
            f"metric {self.name!r} cannot take back a sample generated on several ranks: "
            "implement sample_rows() and remove()"
        )


class FeatureRowsMetric(Metric):
    """A metric of the generated feature rows themselves (precision/recall, KID), not of their
    moments: per rank a :class:`~calguide.metrics._subset.SampleBuffer` keeps the rows of at
    most ``rows_capacity`` samples chosen by index, so the combined subset is the same whatever
    the number of ranks or the batch order. Subclasses set ``rows_capacity``, ``rows_dtype``
    and ``seed`` and implement :meth:`compute` on ``combined["features"]``."""

    inputs = frozenset({"features"})
    rows_capacity: int | None
    rows_dtype: torch.dtype
    seed: int

    def new_state(self) -> SampleBuffer:
        return SampleBuffer(self.rows_capacity, self.rows_dtype, self.seed)

    def update(self, state: SampleBuffer, batch: MetricBatch) -> None:
        assert batch.features is not None
        state.add(batch.indices, batch.features)

    def state_dict(self, state: SampleBuffer) -> dict[str, Tensor]:
        return state.state()

    def combine(self, states: list[Mapping[str, Tensor]]) -> dict[str, Tensor]:
        """{"indices", "features"}: the kept rows of all ranks, each index once, by index."""
        return combine_kept_rows(states, self.rows_capacity, self.seed)

    def remove(self, combined: dict[str, Tensor], rows: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return combined  # combine() already kept each index once


# -- the registry ------------------------------------------------------------------------------
_REGISTRY: dict[str, type[Metric]] = {}


def _check_entry(name: str, cls: type[Metric]) -> None:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"metric name must be an identifier, got {name!r}")
    if not (isinstance(cls, type) and issubclass(cls, Metric)):
        raise TypeError(f"metric {name!r} must be a subclass of Metric, got {cls!r}")
    for attr in ("keys", "extra_keys"):
        value = getattr(cls, attr)
        if not isinstance(value, tuple) or not all(isinstance(k, str) for k in value):
            raise TypeError(f"metric {name!r}: {attr} must be a tuple of str, got {value!r}")
    reported = cls.keys + cls.extra_keys
    if not reported:
        raise ValueError(f"metric {name!r} declares no result keys")
    if len(set(reported)) < len(reported):
        raise ValueError(f"metric {name!r} declares a result key twice: {reported}")
    reserved = sorted(set(reported) & set(RESERVED_KEYS))
    if reserved:
        raise ValueError(f"metric {name!r}: result keys {reserved} are GenerativeMetrics' own")
    unknown = set(cls.inputs) - INPUTS
    if unknown:
        raise ValueError(
            f"metric {name!r}: unknown inputs {sorted(unknown)}; allowed {sorted(INPUTS)}"
        )


def _add(name: str, cls: type[Metric], overwrite: bool = False) -> None:
    _check_entry(name, cls)
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"metric {name!r} is already registered (pass overwrite=True)")
    for other_name, other in _REGISTRY.items():
        if other_name == name:
            continue
        clash = sorted(set(cls.keys + cls.extra_keys) & set(other.keys + other.extra_keys))
        if clash:
            raise ValueError(
                f"metric {name!r}: result keys {clash} are already reported by {other_name!r}"
            )
    cls.name = name
    _REGISTRY[name] = cls


def register_builtins(classes: Sequence[type[Metric]]) -> None:
    """Register the built-in entries, in :data:`BUILTIN_METRICS` order. The package does it
    (``calguide/metrics/__init__.py``): this registry imports nothing that registers into it."""
    if len(classes) != len(BUILTIN_METRICS):
        raise ValueError(f"expected {len(BUILTIN_METRICS)} built-in metrics, got {len(classes)}")
    for name, cls in zip(BUILTIN_METRICS, classes):
        if _REGISTRY.get(name) is not cls:
            _add(name, cls)


@overload
def register_metric(
    name: str, cls: None = None, *, overwrite: bool = False
) -> Callable[[type[Metric]], type[Metric]]: ...
@overload
def register_metric(name: str, cls: type[Metric], *, overwrite: bool = False) -> type[Metric]: ...
def register_metric(
    name: str, cls: type[Metric] | None = None, *, overwrite: bool = False
) -> type[Metric] | Callable[[type[Metric]], type[Metric]]:
    """Register the :class:`Metric` subclass ``cls`` as ``name``; without ``cls``, return a
    class decorator that does.

    A name can be registered once unless ``overwrite`` is set, and no two entries may report
    the same result key, so entries never silently shadow each other. Returns ``cls``.
    """

    def _register(c: type[Metric]) -> type[Metric]:
        if name in BUILTIN_METRICS:
            raise ValueError(f"{name!r} is a built-in metric and cannot be replaced")
        _add(name, c, overwrite)
        return c

    return _register if cls is None else _register(cls)


def unregister_metric(name: str) -> None:
    """Remove the plugin ``name`` from the registry (for tests and interactive use)."""
    get_metric(name)
    if name in BUILTIN_METRICS:
        raise ValueError(f"{name!r} is a built-in metric and cannot be unregistered")
    del _REGISTRY[name]


def metric_names() -> tuple[str, ...]:
    """Registered names: the built-ins (:data:`BUILTIN_METRICS`), then plugins in the order
    they were registered."""
    return tuple(_REGISTRY)


def get_metric(name: str) -> type[Metric]:
    """The class registered as ``name``."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown metric {name!r}; registered: {list(metric_names())}") from None


def metric_keys(names: Iterable[str] | None = None) -> tuple[str, ...]:
    """The loggable result keys (:attr:`Metric.keys`) of ``names`` (default: all registered)."""
    names = metric_names() if names is None else tuple(names)
    return tuple(key for name in names for key in get_metric(name).keys)


def resolve_metrics(
    metrics: Sequence[str | Metric], options: MetricOptions | None = None
) -> tuple[Metric, ...]:
    """Entries for GenerativeMetrics: names are built with :meth:`Metric.from_options`,
    :class:`Metric` instances are used as they are."""
    if isinstance(metrics, str | Metric):
        metrics = [metrics]
    options = MetricOptions() if options is None else options
    out: list[Metric] = []
    for item in metrics:
        if isinstance(item, Metric):
            _check_entry(item.name, type(item))
            out.append(item)
        else:
            out.append(get_metric(str(item)).from_options(options))
    if not out:
        raise ValueError(f"no metrics selected; registered: {list(metric_names())}")
    names = [m.name for m in out]
    if len(set(names)) < len(names):
        raise ValueError(f"metric selected twice: {names}")
    reported = [k for m in out for k in m.keys + m.extra_keys]
    if len(set(reported)) < len(reported):
        raise ValueError(f"selected metrics report the same key twice: {reported}")
    return tuple(out)


# -- class accuracy (no math module of its own) --------------------------------------------------
class ClassAccuracyMetric(Metric):
    """``class_acc``: fraction of samples whose evaluation-classifier argmax is the requested
    label. None without a classifier or labels."""

    name = "class_acc"
    keys = ("class_acc",)
    inputs = frozenset({"logits"})

    def new_state(self) -> dict[str, int]:
        return {"correct": 0, "labeled": 0}

    @staticmethod
    def _correct(batch: MetricBatch) -> Tensor:
        """int8 per sample: 1 right, 0 wrong, -1 not scored (no logits or labels)."""
        if batch.logits is None or batch.labels is None:
            return torch.full((len(batch),), -1, dtype=torch.int8)
        return (batch.logits.argmax(dim=1).cpu() == batch.labels).to(torch.int8)

    def update(self, state: dict[str, int], batch: MetricBatch) -> None:
        if batch.logits is None or batch.labels is None:
            return
        correct = self._correct(batch)
        state["correct"] += int(correct.sum())
        state["labeled"] += int(correct.shape[0])

    def state_dict(self, state: dict[str, int]) -> dict[str, int]:
        return dict(state)

    def combine(self, states: list[dict[str, int]]) -> dict[str, int]:
        return {
            "correct": sum(int(s["correct"]) for s in states),
            "labeled": sum(int(s["labeled"]) for s in states),
        }

    def sample_rows(self, batch: MetricBatch) -> dict[str, Tensor]:
        return {"correct": self._correct(batch)}

    def remove(self, combined: dict[str, int], rows: Mapping[str, Tensor]) -> dict[str, int]:
        scored = rows["correct"][rows["correct"] >= 0]
        combined["correct"] -= int(scored.sum())
        combined["labeled"] -= int(scored.shape[0])
        return combined

    def compute(self, combined: dict[str, int], ctx: ComputeContext) -> dict[str, Any]:
        labeled = combined["labeled"]
        return {"class_acc": combined["correct"] / labeled if labeled else None}
