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


def _mean_std(values: list[float]) -> str:
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{mean:.3f}"
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return f"{mean:.3f} ± {var**0.5:.3f}"


def comparison_table(
    records: list[Mapping], columns: tuple[str, ...] = ("acc", "ece", "smece")
) -> str:
    """Markdown over calibration runs: one row per (method, named bucket), mean ± std over the
    runs' seeds, with the starting classifier ("before") as its own method."""
    groups: dict[str, list[Results]] = {}
    for record in records:
        if record.get("before"):
            groups.setdefault("before (start)", []).append(record["before"])
        groups.setdefault(f"{record['calibration']} ({record['mode']})", []).append(record["after"])
    first = next(iter(groups.values()))[0]
    named = named_buckets(first)
    lines = [
        "| classifier | inputs | " + " | ".join(columns) + " | runs |",
        "|" + " --- |" * (len(columns) + 3),
    ]
    for method, results in groups.items():
        seen_before = method.startswith("before")
        results = results[:1] if seen_before else results  # the same start for every seed
        for label, bucket in named.items():
            cells = [_mean_std([r[bucket][c] for r in results if bucket in r]) for c in columns]
            lines.append(
                f"| {method} | {label} ({bucket}) | " + " | ".join(cells) + f" | {len(results)} |"
            )
    return "\n".join(lines)
