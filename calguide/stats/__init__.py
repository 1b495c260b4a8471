"""Comparisons with a stated error rate: intervals, levels, verdict and equivalence words.

Pure functions on numbers and tensors; :mod:`calguide.verdicts` applies them to the runs
of a table (docs/verdicts.md).
"""

from calguide.stats.intervals import (
    EQUIVALENCE_VERDICTS,
    FAMILY_ALPHA,
    VERDICTS,
    Interval,
    clopper_pearson,
    critical_value,
    equivalence_level,
    equivalence_of,
    jackknife_bias_corrected,
    jackknife_interval,
    normal_interval,
    per_claim_level,
    t_interval,
    verdict_of,
)

__all__ = [
    "EQUIVALENCE_VERDICTS",
    "FAMILY_ALPHA",
    "VERDICTS",
    "Interval",
    "clopper_pearson",
    "critical_value",
    "equivalence_level",
    "equivalence_of",
    "jackknife_bias_corrected",
    "jackknife_interval",
    "normal_interval",
    "per_claim_level",
    "t_interval",
    "verdict_of",
]
