"""Comparisons with a stated error rate: intervals, family-wise levels, paired resampling.

Pure functions on numbers and tensors; :mod:`calguide.verdicts` applies them to the runs
of a table (docs/verdicts.md).
"""

from calguide.stats.intervals import (
    FAMILY_ALPHA,
    VERDICTS,
    Interval,
    critical_value,
    jackknife_interval,
    normal_interval,
    per_claim_level,
    t_interval,
    verdict_of,
)
from calguide.stats.resample import bootstrap_weights, strata_of

__all__ = [
    "FAMILY_ALPHA",
    "VERDICTS",
    "Interval",
    "bootstrap_weights",
    "critical_value",
    "jackknife_interval",
    "normal_interval",
    "per_claim_level",
    "strata_of",
    "t_interval",
    "verdict_of",
]
