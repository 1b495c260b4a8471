"""A sweep's runs grouped into table rows: mean ± std per metric over each row's runs, and the
paper's published numbers matched to the rows they belong to."""

from __future__ import annotations

import difflib
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from calguide.metrics.registry import BUILTIN_METRICS, metric_keys
from calguide.tables.records import AggregateError, hashable, number

DEFAULT_ROWS = ("guidance.name", "guidance.scale", "classifier.name", "denoiser.name")


# The built-in metrics' result keys (a plugin metric's keys: pass --metrics), then the
# guidance classifier's recorded smECE.
DEFAULT_METRICS = (*metric_keys(BUILTIN_METRICS), "classifier_smece")


DEFAULT_PUBLISHED = Path(__file__).with_name("published.yaml")


# guidance.name sorts baselines first: none, vanilla, then the others alphabetically.
GUIDANCE_ORDER = {"none": 0, "vanilla": 1}


def _order(key: str, value: Any) -> tuple:
    """Sort key of one row value: empty first, then numbers (numerically, numeric strings too),
    then strings; guidance.name puts none and vanilla before the others."""
    if value is None:
        return (0, 0.0, "")
    if isinstance(value, (bool, int, float)):
        number = float(value)
        return (1, math.inf if math.isnan(number) else number, "")
    text = str(value)
    try:
        number = float(text)
    except ValueError:
        rank = GUIDANCE_ORDER.get(text, 2) if key == "guidance.name" else 0
        return (2, float(rank), text)
    return (1, math.inf if math.isnan(number) else number, "")


def _check_keys(records: Sequence[dict], keys: Sequence[str]) -> None:
    known = {k for r in records for k in r}
    for key in keys:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise AggregateError(f"row key {key!r} is in no run's config{hint}")


def summarize(
    records: Sequence[dict[str, Any]],
    rows: Sequence[str] = DEFAULT_ROWS,
    metrics: Sequence[str] = DEFAULT_METRICS,
) -> list[dict[str, Any]]:
    """Group ``records`` by the ``rows`` keys (across seeds) and summarize each metric.

    Each returned dict holds the row keys' values, then ``n`` (runs in the group), ``seeds``,
    ``label`` (the runs' ``experiment.row``, or None) and, per metric, ``<m>_mean``, ``<m>_std``
    (sample std, ddof=1; None below 2 values) and ``<m>_n`` (non-null values). Groups are sorted
    by the row keys (numbers numerically; guidance none, vanilla, then the others)."""
    rows = list(rows)
    _check_keys(records, rows)
    groups: dict[tuple, list[dict]] = {}
    for record in records:
        key = tuple(hashable(record.get(k)) for k in rows)
        groups.setdefault(key, []).append(record)
    summary = []
    for members in groups.values():
        entry: dict[str, Any] = {k: members[0].get(k) for k in rows}
        entry["n"] = len(members)
        entry["seeds"] = sorted((r.get("seed") for r in members), key=lambda s: _order("seed", s))
        labels = dict.fromkeys(r["experiment.row"] for r in members if r.get("experiment.row"))
        entry["label"] = " / ".join(map(str, labels)) or None
        for metric in metrics:
            values = [v for v in (number(r.get(metric)) for r in members) if v is not None]
            entry[f"{metric}_mean"] = statistics.fmean(values) if values else None
            entry[f"{metric}_std"] = statistics.stdev(values) if len(values) > 1 else None
            entry[f"{metric}_n"] = len(values)
        summary.append(entry)
    summary.sort(key=lambda e: tuple(_order(k, e[k]) for k in rows))
    return summary


def load_published(path: str | Path, table: str | None) -> list[dict[str, Any]]:
    """The entries of ``table`` in the published-numbers YAML (``[]`` when absent or no table).

    Each entry: ``{match: {<dotted key>: value}, <metric>: value, ..., source: str}``."""
    path = Path(path)
    if table is None or not path.is_file():
        return []
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise AggregateError(f"{path}: malformed YAML ({err})") from err
    if not isinstance(data, dict):
        raise AggregateError(f"{path}: expected a mapping table name → list of entries")
    entries = data.get(table) or []
    if not isinstance(entries, list):
        raise AggregateError(f"{path}: table {table!r} is not a list of entries")
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("match"), dict):
            raise AggregateError(f"{path}: {table}[{i}] needs a 'match' mapping")
        if not entry.get("source"):
            raise AggregateError(f"{path}: {table}[{i}] needs a 'source'")
    return entries


def published_tables(path: str | Path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        return []
    data = yaml.safe_load(path.read_text()) or {}
    return sorted(data) if isinstance(data, dict) else []


def _same(ours: Any, theirs: Any) -> bool:
    a, b = number(ours), number(theirs)
    if a is not None and b is not None:
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    if ours is None or theirs is None:
        return ours is theirs
    return str(ours) == str(theirs)


def match_published(
    entry: dict[str, Any], published: Sequence[dict[str, Any]] | None
) -> dict[str, Any] | None:
    """The published entry whose every ``match`` key equals ``entry``'s value (numbers compared
    as numbers); the most specific one when several match, the first of those on ties."""
    best, best_size = None, -1
    for candidate in published or []:
        match = candidate["match"]
        matches = all(k in entry and _same(entry[k], v) for k, v in match.items())
        if matches and len(match) > best_size:
            best, best_size = candidate, len(match)
    return best
