"""Sample-quality metrics: FID, precision/recall, class accuracy; extractors; references.

See :mod:`calguide.metrics.callback` for the contract with the sampling module.
"""

from calguide.metrics.callback import METRIC_NAMES, GenerativeMetrics
from calguide.metrics.features import (
    ClassifierFeatureExtractor,
    FeatureExtractor,
    InceptionExtractor,
    InceptionWeightsNotFoundError,
    inception_weights_path,
)
from calguide.metrics.fid import FeatureStats, fid_from_features, fid_from_stats
from calguide.metrics.prdc import precision_recall
from calguide.metrics.reference import (
    cached_reference,
    iter_adm_reference_batch,
    load_adm_reference_batch,
    reference_features,
    to_uint8_nhwc,
)

__all__ = [
    "METRIC_NAMES",
    "ClassifierFeatureExtractor",
    "FeatureExtractor",
    "FeatureStats",
    "GenerativeMetrics",
    "InceptionExtractor",
    "InceptionWeightsNotFoundError",
    "cached_reference",
    "fid_from_features",
    "fid_from_stats",
    "inception_weights_path",
    "iter_adm_reference_batch",
    "load_adm_reference_batch",
    "precision_recall",
    "reference_features",
    "to_uint8_nhwc",
]
