"""Calibration metrics for guidance classifiers: SmoothECE, binned ECE, reliability diagrams."""

from calguide.calibration.ece import (
    DEFAULT_GRID_SIZE,
    binned_ece,
    fixed_point_sigma,
    reliability_curve,
    smooth_ece,
    smooth_ece_from_logits,
    top_label_confidence,
)
from calguide.calibration.reliability import save_reliability_diagram

__all__ = [
    "DEFAULT_GRID_SIZE",
    "binned_ece",
    "fixed_point_sigma",
    "reliability_curve",
    "save_reliability_diagram",
    "smooth_ece",
    "smooth_ece_from_logits",
    "top_label_confidence",
]
