"""The comparison rule: claims about two rows of a table, judged on their paired samples with a
stated family-wise error rate (the words a verdict prints live with ``calguide-aggregate``)."""

from calguide.verdicts.claims import (
    DEFAULT_FAMILY,
    NOT_JUDGED,
    ClaimError,
    Settings,
    Verdict,
    clear_caches,
    judge,
    paired_runs,
    row_interval,
)

__all__ = [
    "DEFAULT_FAMILY",
    "NOT_JUDGED",
    "ClaimError",
    "Settings",
    "Verdict",
    "clear_caches",
    "judge",
    "paired_runs",
    "row_interval",
]
