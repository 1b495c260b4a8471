"""Before/after calibration tables and the named noise buckets they are read at."""

from __future__ import annotations

from collections.abc import Mapping

Results = Mapping[str, Mapping[str, float]]
COLUMNS = ("acc", "nll", "ece", "smece")


def named_buckets(results: Results) -> dict[str, str]:
    """clean / low / mid / high → the bucket names of a result set (noisy buckets in t order)."""
    noisy = sorted(name for name in results if name != "clean")
    named = {"clean": "clean"} if "clean" in results else {}
    if noisy:
        named.update(low=noisy[0], mid=noisy[len(noisy) // 2], high=noisy[-1])
    return named


def calibration_table(after: Results, before: Results | None = None, *, title: str = "") -> str:
    """Markdown: one row per named bucket, metrics after (and before → after when given)."""
    names = named_buckets(after)
    header = "| inputs | bucket | " + " | ".join(COLUMNS) + " |"
    lines = [f"**{title}**", ""] if title else []
    lines += [header, "|" + " --- |" * (len(COLUMNS) + 2)]
    for label, bucket in names.items():
        cells = []
        for column in COLUMNS:
            value = after[bucket][column]
            if before is not None and bucket in before:
                cells.append(f"{before[bucket][column]:.3f} → {value:.3f}")
            else:
                cells.append(f"{value:.3f}")
        lines.append(f"| {label} | {bucket} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
