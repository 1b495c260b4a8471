"""Aggregate sampling sweeps into one table: mean ± std over seeds, next to published numbers.

    calguide-aggregate logs/tables/digits_strategies      # cond/ and uncond/ below
    calguide-aggregate logs/sample/multiruns/<date> --table imagenet128_main \\
        --rows guidance.name,guidance.scale,classifier.name --metrics fid,precision,recall

Reads every ``sampling.json`` below the given folders (searched recursively, so a folder of
several ``--multirun`` sweeps works): the file ``calguide-sample`` writes into each Hydra job
folder when a run finishes, with the resolved job config and the metrics. Each run becomes a flat
record (dotted config keys such as ``guidance.name``, the metric values, ``run_dir``). Job folders
with a ``.hydra/`` but no ``sampling.json`` (unfinished or failed runs) are skipped with a warning;
the two byte-identical copies of one run's file (Hydra folder and sample folder) count once.

Runs are grouped by ``--rows`` (default ``guidance.name,guidance.scale,classifier.name,
denoiser.name``) across seeds; each metric gets its mean, sample std (ddof=1) and count. Unguided
runs (``guidance.name=none``) have their ``classifier.*`` keys emptied: the classifier is unused.
Rows whose config matches an entry of the published-numbers YAML (``--published``, by default
``published.yaml`` shipped beside this module; table ``--table``, by default the runs'
``experiment.table``) get the published numbers beside them.

Writes into ``--out`` (default: the first folder): ``table.md`` (markdown table, also printed),
``table.csv`` (one line per row), ``runs.csv`` (one line per run), ``fid_vs_scale.png`` and
``precision_recall.png`` (each only when the metrics it needs were computed).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import difflib
import io
import json
import math
import re
import statistics
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

from calguide.io import atomic_path, atomic_write_text
from calguide.metrics.registry import BUILTIN_METRICS, metric_keys
from calguide.tools.claims import (
    ClaimError,
    Settings,
    judge,
    row_interval,
    verdict_block,
    what_would_resolve,
)

DEFAULT_ROWS = ("guidance.name", "guidance.scale", "classifier.name", "denoiser.name")
# The built-in metrics' result keys (a plugin metric's keys: pass --metrics), then the
# guidance classifier's recorded smECE.
DEFAULT_METRICS = (*metric_keys(BUILTIN_METRICS), "classifier_smece")
DEFAULT_PUBLISHED = Path(__file__).with_name("published.yaml")

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
# guidance.name sorts baselines first: none, vanilla, then the others alphabetically.
GUIDANCE_ORDER = {"none": 0, "vanilla": 1}


class AggregateError(ValueError):
    """Bad input: no runs, a malformed file, an unknown row key."""


# --------------------------------------------------------------------------- collecting runs


def _natural_key(path: Path) -> list:
    """Sort ``.../2`` before ``.../10`` (Hydra numbers its job folders)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts → one dict with dotted keys; lists and scalars are kept as values."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise AggregateError(f"{path}: cannot read as JSON ({err})") from err
    if not isinstance(data, dict):
        raise AggregateError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def run_record(data: dict[str, Any], run_dir: str | Path) -> dict[str, Any]:
    """One ``sampling.json`` (parsed) → a flat record: ``run_dir``, ``out_dir``, the metric values,
    ``classifier_smece``, then the dotted config keys."""
    config = data.get("config")
    if isinstance(config, dict):
        flat = flatten(config)
    else:  # written before the config was recorded: what the top level says
        flat = {
            "seed": data.get("seed"),
            "guidance.name": data.get("guidance"),
            "guidance.scale": data.get("scale"),
            "guidance.temperature": data.get("temperature"),
            "classifier.checkpoint": data.get("classifier"),
            "sampling.num_samples": data.get("num_samples"),
        }
    if flat.get("guidance.name") == "none":  # the classifier is not used: not part of the row
        flat = {k: (None if k.startswith("classifier.") else v) for k, v in flat.items()}
    record: dict[str, Any] = {"run_dir": str(run_dir), "out_dir": data.get("out_dir")}
    metrics = data.get("metrics") or {}
    if not isinstance(metrics, dict):
        raise AggregateError(f"{run_dir}: 'metrics' is not an object")
    for key, value in metrics.items():
        record[f"metrics.{key}" if key in flat or key in record else key] = value
    record["classifier_smece"] = data.get("classifier_smece")
    record["eval_features"] = data.get("eval_features")
    for key, value in flat.items():
        record.setdefault(key, value)
    return record


def _scan(dirs: Iterable[str | Path]) -> tuple[list[Path], list[Path]]:
    """(every sampling.json below ``dirs``, every job folder with .hydra/ but no sampling.json)."""
    found: dict[Path, None] = {}
    unfinished: dict[Path, None] = {}
    for folder in map(Path, dirs):
        if not folder.is_dir():
            raise AggregateError(f"{folder}: not a folder")
        for path in folder.rglob("sampling.json"):
            found[path] = None
        for hydra in folder.rglob(".hydra"):
            job = hydra.parent
            if hydra.is_dir() and not (job / "sampling.json").is_file():
                unfinished[job] = None
    return sorted(found, key=_natural_key), sorted(unfinished, key=_natural_key)


def unfinished_runs(dirs: Iterable[str | Path]) -> list[Path]:
    """Job folders below ``dirs`` that have a ``.hydra/`` but no ``sampling.json``."""
    return _scan(dirs)[1]


def collect_runs(dirs: Iterable[str | Path]) -> list[dict[str, Any]]:
    """A flat record (see ``run_record``) per ``sampling.json`` below ``dirs``, in path order.

    Byte-identical files (the copy in the Hydra job folder and the one in the sample folder) count
    once. Raises ``AggregateError`` when there is none, or when a file is not valid JSON."""
    dirs = [Path(d) for d in dirs]
    paths, unfinished = _scan(dirs)
    if not paths:
        where = ", ".join(str(d) for d in dirs)
        detail = f" ({len(unfinished)} unfinished run folder(s))" if unfinished else ""
        raise AggregateError(f"no sampling.json found below {where}{detail}")
    records, seen = [], set()
    for path in paths:
        text = path.read_bytes()
        if text in seen:
            continue
        seen.add(text)
        records.append(run_record(_read_json(path), path.parent))
    return records


# --------------------------------------------------------------------------- summarizing


def _hashable(value: Any) -> Any:
    return json.dumps(value, sort_keys=True) if isinstance(value, (list, dict)) else value


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


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return None if math.isnan(value) else float(value)


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
        key = tuple(_hashable(record.get(k)) for k in rows)
        groups.setdefault(key, []).append(record)
    summary = []
    for members in groups.values():
        entry: dict[str, Any] = {k: members[0].get(k) for k in rows}
        entry["n"] = len(members)
        entry["seeds"] = sorted((r.get("seed") for r in members), key=lambda s: _order("seed", s))
        labels = dict.fromkeys(r["experiment.row"] for r in members if r.get("experiment.row"))
        entry["label"] = " / ".join(map(str, labels)) or None
        for metric in metrics:
            values = [v for v in (_number(r.get(metric)) for r in members) if v is not None]
            entry[f"{metric}_mean"] = statistics.fmean(values) if values else None
            entry[f"{metric}_std"] = statistics.stdev(values) if len(values) > 1 else None
            entry[f"{metric}_n"] = len(values)
        summary.append(entry)
    summary.sort(key=lambda e: tuple(_order(k, e[k]) for k in rows))
    return summary


def repeated_runs(records: Sequence[dict[str, Any]]) -> list[list[str]]:
    """Run folders that made the same samples (same sample folder ``out_dir`` and number of
    samples: the same config ran more than once), one list per such set; they all count."""
    by_samples: dict[tuple, list[str]] = {}
    for record in records:
        if record.get("out_dir"):
            key = (record["out_dir"], _hashable(record.get("sampling.num_samples")))
            by_samples.setdefault(key, []).append(record["run_dir"])
    return [dirs for dirs in by_samples.values() if len(dirs) > 1]


# --------------------------------------------------------------------------- published numbers


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
    a, b = _number(ours), _number(theirs)
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


# --------------------------------------------------------------------------- writing tables


def _cell(value: Any) -> str:
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
        cells = [_cell(entry.get("label"))] if labelled else []
        cells += [_cell(entry[k]) for k in rows] + [str(entry["n"])]
        cells += [metric_cell(entry, m) for m in metrics]
        for m in pub_metrics:
            value = _number(pub.get(m)) if pub else None
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
    """Markdown: per row, each metric's estimate with its 95% interval (the claims' rule:
    Student's over the row's independent units, or a bootstrap of its one run), and the
    same as dicts (for table.csv's ``<m>_lo`` / ``<m>_hi``)."""
    shown = [m for m in INTERVAL_METRICS if m in metrics and m in shown_metrics(summary, metrics)]
    if not shown:
        return "", []
    lines = ["| " + " | ".join([*_headers(rows), "units", *[DISPLAY.get(m, m) for m in shown]])]
    lines[0] += " |"
    lines.append("| " + " | ".join([":--"] * len(rows) + ["--:"] * (1 + len(shown))) + " |")
    out = []
    for entry in summary:
        key = tuple(_hashable(entry[k]) for k in rows)
        members = [r for r in records if tuple(_hashable(r.get(k)) for k in rows) == key]
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
            cells.append(
                f"{_fmt(interval.estimate, m)} [{_fmt(interval.lo, m)}, {_fmt(interval.hi, m)}]"
            )
        out.append(found)
        lines.append("| " + " | ".join([*(_cell(entry[k]) for k in rows), units, *cells]) + " |")
    lines += [
        "",
        "Cells: the metric of the row's pooled samples [95% interval] (each row alone, not "
        "adjusted for the number of rows): delete-one-group jackknife over the row's "
        "independent groups ("
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


# --------------------------------------------------------------------------- plots


def _group_keys(entry: dict[str, Any]) -> list[str]:
    """The row keys of a ``summarize`` entry: the keys before ``n``."""
    keys = list(entry)
    return keys[: keys.index("n")] if "n" in keys else []


def _varying(entries: Sequence[dict[str, Any]], keys: Sequence[str]) -> list[str]:
    return [k for k in keys if len({_hashable(e.get(k)) for e in entries}) > 1]


def _label(entry: dict[str, Any], keys: Sequence[str]) -> str:
    parts = []
    for k in keys:
        value = entry.get(k)
        parts.append(f"s={_cell(value)}" if k == "guidance.scale" else _cell(value))
    return " ".join(parts)


def plot_fid_vs_scale(
    summary: Sequence[dict[str, Any]], path: str | Path, title: str | None = None
) -> Path | None:
    """FID (mean, std error bars) against guidance.scale, one line per guidance (and per
    classifier or other row key when they vary); ``none`` as a dashed horizontal line.
    None (nothing written) when no guided row has both a scale and an FID."""
    guided = [
        e
        for e in summary
        if e.get("guidance.name") != "none"
        and _number(e.get("guidance.scale")) is not None
        and e.get("fid_mean") is not None
    ]
    if not guided:
        return None
    from matplotlib.figure import Figure

    keys = [k for k in _group_keys(guided[0]) if k != "guidance.scale"]
    line_keys = [k for k in keys if k == "guidance.name" or k in _varying(guided, keys)]
    lines: dict[tuple, list[dict]] = {}
    for e in guided:
        lines.setdefault(tuple(_hashable(e.get(k)) for k in line_keys), []).append(e)

    fig = Figure(figsize=(6.4, 4.4), layout="constrained")
    ax = fig.add_subplot()
    for members in lines.values():
        members = sorted(members, key=lambda e: float(e["guidance.scale"]))
        ax.errorbar(
            [float(e["guidance.scale"]) for e in members],
            [e["fid_mean"] for e in members],
            yerr=[e.get("fid_std") or 0.0 for e in members],
            marker="o",
            capsize=3,
            label=_label(members[0], line_keys),
        )
    baselines = [e for e in summary if e.get("guidance.name") == "none" and e.get("fid_mean")]
    for e in baselines:
        keys_none = [k for k in _varying(baselines, _group_keys(e)) if k != "guidance.scale"]
        label = "none" + (f" ({_label(e, keys_none)})" if keys_none else "")
        line = ax.axhline(e["fid_mean"], linestyle="--", color="gray", label=label)
        if e.get("fid_std"):
            lo, hi = e["fid_mean"] - e["fid_std"], e["fid_mean"] + e["fid_std"]
            ax.axhspan(lo, hi, color=line.get_color(), alpha=0.12, linewidth=0)
    ax.set_xlabel("guidance scale")
    ax.set_ylabel("FID (mean ± std over seeds)")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    return Path(path)


def plot_precision_recall(
    summary: Sequence[dict[str, Any]], path: str | Path, title: str | None = None
) -> Path | None:
    """Recall (x) against precision (y), one labelled point per group with std error bars.
    None (nothing written) when no group has both."""
    points = [
        e
        for e in summary
        if e.get("precision_mean") is not None and e.get("recall_mean") is not None
    ]
    if not points:
        return None
    from matplotlib.figure import Figure

    keys = _varying(points, _group_keys(points[0])) or _group_keys(points[0])[:1]
    fig = Figure(figsize=(6.0, 5.0), layout="constrained")
    ax = fig.add_subplot()
    for e in points:
        ax.errorbar(
            e["recall_mean"],
            e["precision_mean"],
            xerr=e.get("recall_std") or 0.0,
            yerr=e.get("precision_std") or 0.0,
            marker="o",
            capsize=2,
            linestyle="none",
        )
        ax.annotate(
            _label(e, keys),
            (e["recall_mean"], e["precision_mean"]),
            textcoords="offset points",
            xytext=(4, 4),
            fontsize="x-small",
        )
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    return Path(path)


# --------------------------------------------------------------------------- command line


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="calguide-aggregate",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n" + "\n".join(__doc__.splitlines()[2:5]),
    )
    parser.add_argument("dirs", nargs="+", type=Path, help="multirun / run folders to search")
    parser.add_argument("--out", type=Path, help="output folder (default: the first folder)")
    parser.add_argument(
        "--rows",
        default=None,
        help="comma-separated keys (default: the runs' experiment.rows, else "
        + ",".join(DEFAULT_ROWS)
        + ")",
    )
    parser.add_argument("--metrics", default=",".join(DEFAULT_METRICS), help="comma-separated")
    parser.add_argument("--table", help="published-numbers table (default: experiment.table)")
    parser.add_argument(
        "--published", type=Path, default=DEFAULT_PUBLISHED, help="published-numbers YAML"
    )
    parser.add_argument("--title", help="table / plot title (default: the table name)")
    parser.add_argument(
        "--claims",
        type=Path,
        help="YAML list of claims to judge (default: the runs' experiment.claims, if any)",
    )
    parser.add_argument(
        "--block-size",
        type=int,
        help="cut each run into blocks of this many sample indices, the intervals' independent "
        "units (default: the runs' experiment.verdicts.block_size, else whole runs)",
    )
    parser.add_argument("--alpha", type=float, help="family-wise error rate (default 0.05)")
    parser.add_argument(
        "--bootstrap", type=int, help="bootstrap replicates for one-run rows (default 1000)"
    )
    parser.add_argument("--device", help="where bootstrap replicates run (cpu, cuda)")
    parser.add_argument(
        "--sample-cost",
        type=float,
        help="seconds one sample of a row costs here: within-noise verdicts then say what "
        "resolving them would cost",
    )
    return parser.parse_args(argv)


def _warn(text: str) -> None:
    print(f"aggregate: warning: {text}", file=sys.stderr)


def _recorded_rows(records: list[dict]) -> str | None:
    """The row keys a table's experiment config names (``experiment.rows``), if any."""
    for record in records:
        rows = record.get("experiment.rows")
        if rows:
            return ",".join(rows) if isinstance(rows, list | tuple) else str(rows)
    return None


def load_claims(path: Path | None, records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """``--claims`` (a YAML list), else the runs' recorded ``experiment.claims``."""
    if path is not None:
        try:
            claims = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as err:
            raise AggregateError(f"--claims {path}: cannot read ({err})") from err
        if not isinstance(claims, list):
            raise AggregateError(f"--claims {path}: expected a YAML list of claims")
        return claims
    for record in records:
        if isinstance(record.get("experiment.claims"), list):
            return record["experiment.claims"]
    return []


def verdict_settings(args: argparse.Namespace, records: Sequence[dict[str, Any]]) -> Settings:
    """The runs' recorded ``experiment.verdicts``, overridden by the command line."""
    values: dict[str, Any] = {}
    for record in records:
        prefix = "experiment.verdicts."
        found = {k[len(prefix) :]: v for k, v in record.items() if k.startswith(prefix)}
        if found:
            values = found
            break
    for name, key in (("block_size", "block_size"), ("alpha", "alpha"), ("bootstrap", "bootstrap")):
        if getattr(args, name) is not None:
            values[key] = getattr(args, name)
    if args.device:
        values["device"] = args.device
    try:
        return Settings.from_mapping(values)
    except (ClaimError, TypeError) as err:
        raise AggregateError(str(err)) from err


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    metrics = _split(args.metrics)
    out = args.out or args.dirs[0]
    try:
        records = collect_runs(args.dirs)
        rows = _split(args.rows or _recorded_rows(records) or ",".join(DEFAULT_ROWS))
        skipped = unfinished_runs(args.dirs)
        summary = summarize(records, rows, metrics)
        claims = load_claims(args.claims, records)
        table = args.table
        if table is None:
            tables = list(
                dict.fromkeys(r["experiment.table"] for r in records if r.get("experiment.table"))
            )
            table = tables[0] if tables else None
            if len(tables) > 1:
                _warn(f"runs of several tables ({', '.join(tables)}); using {table} (see --table)")
        published = load_published(args.published, table)
        settings = verdict_settings(args, records)
        if args.table and not published:
            known = ", ".join(published_tables(args.published)) or "none"
            _warn(f"no published numbers for table {args.table!r} in {args.published} ({known})")
    except AggregateError as err:
        print(f"aggregate: error: {err}", file=sys.stderr)
        return 2
    if skipped:
        names = ", ".join(str(p) for p in skipped)
        _warn(f"{len(skipped)} unfinished run(s) without sampling.json skipped: {names}")
    for dirs in repeated_runs(records):
        _warn(f"runs with the same samples, all counted (pass one sweep?): {', '.join(dirs)}")
    missing = [m for m in metrics if m not in shown_metrics(summary, metrics)]
    if missing:
        _warn(f"no values for {', '.join(missing)}: left out of the table")

    title = args.title or table
    text = markdown_table(summary, rows, metrics, published=published, title=title)
    try:
        intervals, bounds = interval_table(records, summary, rows, metrics, settings)
        verdicts = judge(records, claims, settings) if claims else []
    except (ClaimError, ValueError, FileNotFoundError) as err:
        print(f"aggregate: error: {err}", file=sys.stderr)
        return 2
    if intervals:
        text += "\n**Intervals**\n\n" + intervals
        for entry, found in zip(summary, bounds):
            entry.update(found)
    if verdicts:
        cost = args.sample_cost

        def resolve(v: Any) -> str:
            samples = v.units * settings.block_size if v.unit.startswith("blocks") else 0
            return what_would_resolve(v, cost, samples)

        text += "\n" + verdict_block(verdicts, settings, resolve=resolve) + "\n"
        atomic_write_text(
            json.dumps([dataclasses.asdict(v) for v in verdicts], indent=2) + "\n",
            out / "claims.json",
        )
    written = [
        atomic_write_text(text, out / "table.md"),
        to_csv(summary, out / "table.csv"),
        runs_csv(records, out / "runs.csv"),
        plot_fid_vs_scale(summary, out / "fid_vs_scale.png", title=title),
        plot_precision_recall(summary, out / "precision_recall.png", title=title),
    ]
    print(text)
    for path in written:
        if path is not None:
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
