"""A summarized table written out: markdown (mean ± std, published numbers, per-row intervals)
and CSV (one line per row, one per run)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from calguide.io import atomic_write_text
from calguide.tables.records import hashable, number
from calguide.tables.summary import match_published
from calguide.verdicts import Settings, row_interval

# Decimals of a metric's cells; other metrics get 4 significant digits.
DECIMALS = {
    "fid": 2,
    "precision": 3,
    "recall": 3,
    "class_acc": 3,
    "classifier_smece": 3,
    "density": 3,
    "coverage": 3,
}


DISPLAY = {"fid": "FID", "kid": "KID", "class_acc": "class acc", "classifier_smece": "clf smECE"}


def cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value).replace("|", "\\|")


def _fmt(value: float | None, metric: str) -> str:
    if value is None:
        return "—"
    decimals = DECIMALS.get(metric)
    return f"{value:.{decimals}f}" if decimals is not None else f"{value:.4g}"


def metric_cell(entry: dict[str, Any], metric: str) -> str:
    """``mean ± std``; the mean alone for one value; ``(n=k)`` when some runs lack the metric."""
    mean, std, count = (entry.get(f"{metric}_{s}") for s in ("mean", "std", "n"))
    if mean is None:
        return "—"
    text = _fmt(mean, metric)
    if std is not None:
        text += f" ± {_fmt(std, metric)}"
    if count is not None and count < entry["n"]:
        text += f" (n={count})"
    return text


def _headers(rows: Sequence[str]) -> list[str]:
    """``guidance.name`` → ``guidance``, ``guidance.scale`` → ``scale``; full key on clashes."""
    short = [k[: -len(".name")] if k.endswith(".name") else k.rsplit(".", 1)[-1] for k in rows]
    return [s if short.count(s) == 1 else k for s, k in zip(short, rows)]


def shown_metrics(summary: Sequence[dict[str, Any]], metrics: Sequence[str]) -> list[str]:
    """The metrics with at least one value in ``summary``."""
    return [m for m in metrics if any(e.get(f"{m}_n") for e in summary)]


def markdown_table(
    summary: Sequence[dict[str, Any]],
    rows: Sequence[str],
    metrics: Sequence[str],
    published: Sequence[dict[str, Any]] | None = None,
    title: str | None = None,
) -> str:
    """A markdown table, one line per group: row keys, ``n``, ``mean ± std`` per metric with
    values (all-null metrics left out), and ``published <metric>`` columns when an entry of
    ``published`` matches some row, with the sources as numbered footnotes."""
    metrics = shown_metrics(summary, metrics)
    matches = [match_published(e, published) for e in summary]
    pub_metrics = [m for m in metrics if any(p and p.get(m) is not None for p in matches)]
    sources: list[str] = []
    for p in matches:
        if p and any(p.get(m) is not None for m in pub_metrics) and p["source"] not in sources:
            sources.append(p["source"])
    labelled = any(e.get("label") for e in summary)

    header = (["row"] if labelled else []) + _headers(rows) + ["n"]
    header += [DISPLAY.get(m, m) for m in metrics]
    header += [f"published {DISPLAY.get(m, m)}" for m in pub_metrics]
    align = [":--"] * ((1 if labelled else 0) + len(rows)) + ["--:"] * (1 + len(metrics))
    align += ["--:"] * len(pub_metrics)
    lines = []
    if title:
        lines += [f"### {title}", ""]
    lines += ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    for entry, pub in zip(summary, matches):
        cells = [cell(entry.get("label"))] if labelled else []
        cells += [cell(entry[k]) for k in rows] + [str(entry["n"])]
        cells += [metric_cell(entry, m) for m in metrics]
        for m in pub_metrics:
            value = number(pub.get(m)) if pub else None
            note = f" [{sources.index(pub['source']) + 1}]" if value is not None else ""
            cells.append(_fmt(value, m) + note)
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Cells: mean ± sample std over the runs (seeds) of each row; n = runs; "]
    lines[-1] += "(n=k) = runs with that metric, when fewer."
    if sources:
        lines += ["", "Published:"] + [f"[{i}] {s}" for i, s in enumerate(sources, 1)]
    return "\n".join(lines) + "\n"


INTERVAL_METRICS = ("fid", "kid", "precision", "recall", "class_acc")


def interval_table(
    records: Sequence[dict[str, Any]],
    summary: Sequence[dict[str, Any]],
    rows: Sequence[str],
    metrics: Sequence[str],
    settings: Settings,
) -> tuple[str, list[dict[str, Any]]]:
    """Markdown: per row, each metric's estimate with its 95% interval (the claims' rule: the
    delete-one-group jackknife over the row's independent groups, or Student's over its runs'
    recorded values), and the same as dicts (for table.csv's ``<m>_lo`` / ``<m>_hi``)."""
    shown = [m for m in INTERVAL_METRICS if m in metrics and m in shown_metrics(summary, metrics)]
    if not shown:
        return "", []
    lines = ["| " + " | ".join([*_headers(rows), "units", *[DISPLAY.get(m, m) for m in shown]])]
    lines[0] += " |"
    lines.append("| " + " | ".join([":--"] * len(rows) + ["--:"] * (1 + len(shown))) + " |")
    out = []
    for entry in summary:
        key = tuple(hashable(entry[k]) for k in rows)
        members = [r for r in records if tuple(hashable(r.get(k)) for k in rows) == key]
        cells, units, found = [], "—", {}
        for m in shown:
            interval = row_interval(members, m, settings)
            if interval is None:
                cells.append("—")
                continue
            found[f"{m}_lo"], found[f"{m}_hi"] = interval.lo, interval.hi
            found[f"{m}_est"] = interval.estimate
            units = (
                f"{interval.units} {interval.method}"
                if interval.df
                else f"{interval.units} samples"
            )
            text = f"{_fmt(interval.estimate, m)} [{_fmt(interval.lo, m)}, {_fmt(interval.hi, m)}]"
            moved = interval.plugin is not None and _fmt(interval.plugin, m) != _fmt(
                interval.estimate, m
            )
            cells.append(text + (f" ({_fmt(interval.plugin, m)})" if moved else ""))
        out.append(found)
        lines.append("| " + " | ".join([*(cell(entry[k]) for k in rows), units, *cells]) + " |")
    lines += [
        "",
        "Cells: the metric of the row's distribution, the jackknife's bias-corrected estimate "
        "from its pooled samples [95% interval] (the plug-in value of these samples in "
        "brackets where it differs; each row alone, not adjusted for the number of rows): "
        "delete-one-group jackknife over the row's independent groups ("
        + (
            f"blocks of {settings.block_size} sample indices"
            if settings.block_size
            else "its seeds' runs, or 20 index blocks of a single run"
        )
        + "), Student's critical value on groups − 1 degrees of freedom; a metric without "
        "per-sample data: Student's interval over the row's runs.",
    ]
    return "\n".join(lines) + "\n", out


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return value


def _write_csv(dicts: Sequence[dict[str, Any]], path: str | Path) -> Path:
    columns = list(dict.fromkeys(k for d in dicts for k in d))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for d in dicts:
        writer.writerow([_csv_value(d.get(k)) for k in columns])
    return atomic_write_text(buffer.getvalue(), path)


def to_csv(summary: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """One line per group: row keys, n, seeds, label, ``<metric>_mean``/``_std``/``_n``."""
    return _write_csv(summary, path)


def runs_csv(records: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """One line per run: every key of any record (lists as JSON, None as empty)."""
    return _write_csv(records, path)
