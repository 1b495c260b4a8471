"""Sample-quality metrics: FID, precision/recall, class accuracy, KID; extractors; references.

:mod:`calguide.metrics.registry` holds the entries by name; the built-ins register here, where
the package is assembled (the registry imports none of them). The Lightning callback that
computes them during sampling is :mod:`calguide.modules.metrics`.

The other names below are imported on first use, so the registry (e.g. the list of metric
names) loads without the feature extractors.
"""

from __future__ import annotations

import importlib
from typing import Any

from calguide.metrics import registry as _registry
from calguide.metrics.fid import FIDMetric as _FIDMetric
from calguide.metrics.kid import KIDMetric as _KIDMetric
from calguide.metrics.prdc import PrecisionRecallMetric as _PrecisionRecallMetric

_registry.register_builtins(
    (_FIDMetric, _PrecisionRecallMetric, _registry.ClassAccuracyMetric, _KIDMetric)
)

_SOURCES = {
    "features": (
        "ClassifierFeatureExtractor",
        "FeatureExtractor",
        "InceptionExtractor",
        "InceptionWeightsNotFoundError",
        "inception_weights_path",
    ),
    "fid": ("FIDMetric", "FeatureStats", "fid_from_features", "fid_from_stats"),
    "kid": ("KIDMetric", "kid_replicates", "polynomial_kernel"),
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
