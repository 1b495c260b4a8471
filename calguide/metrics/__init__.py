"""Sample-quality metrics: FID, precision/recall, class accuracy; extractors; references.

See :mod:`calguide.metrics.callback` for the contract with the sampling module and
:mod:`calguide.metrics.registry` for adding a metric.

The names below are imported on first use, so ``calguide.metrics.registry`` (e.g. for the list
of metric names) can be imported without Lightning and the feature extractors.
"""

from __future__ import annotations

import importlib
from typing import Any

_SOURCES = {
    "callback": ("METRIC_NAMES", "GenerativeMetrics"),
    "features": (
        "ClassifierFeatureExtractor",
        "FeatureExtractor",
        "InceptionExtractor",
        "InceptionWeightsNotFoundError",
        "inception_weights_path",
    ),
    "fid": ("FIDMetric", "FeatureStats", "fid_from_features", "fid_from_stats"),
    "prdc": ("PrecisionRecallMetric", "precision_recall"),
    "reference": (
        "cached_reference",
        "iter_adm_reference_batch",
        "load_adm_reference_batch",
        "reference_features",
        "to_uint8_nhwc",
    ),
    "registry": (
        "BUILTIN_METRICS",
        "ClassAccuracyMetric",
        "ComputeContext",
        "Metric",
        "MetricBatch",
        "MetricOptions",
        "get_metric",
        "metric_keys",
        "metric_names",
        "register_metric",
        "unregister_metric",
    ),
}
_WHERE = {name: module for module, names in _SOURCES.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
