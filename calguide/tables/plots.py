"""The sweep's figures: FID against the guidance scale, and precision against recall."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from calguide.io import atomic_path
from calguide.tables.records import hashable, number
from calguide.tables.render import cell


def _group_keys(entry: dict[str, Any]) -> list[str]:
    """The row keys of a ``summarize`` entry: the keys before ``n``."""
    keys = list(entry)
    return keys[: keys.index("n")] if "n" in keys else []


def _varying(entries: Sequence[dict[str, Any]], keys: Sequence[str]) -> list[str]:
    return [k for k in keys if len({hashable(e.get(k)) for e in entries}) > 1]


def _label(entry: dict[str, Any], keys: Sequence[str]) -> str:
    parts = []
    for k in keys:
        value = entry.get(k)
        parts.append(f"s={cell(value)}" if k == "guidance.scale" else cell(value))
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
        and number(e.get("guidance.scale")) is not None
        and e.get("fid_mean") is not None
    ]
    if not guided:
        return None
    from matplotlib.figure import Figure

    keys = [k for k in _group_keys(guided[0]) if k != "guidance.scale"]
    line_keys = [k for k in keys if k == "guidance.name" or k in _varying(guided, keys)]
    lines: dict[tuple, list[dict]] = {}
    for e in guided:
        lines.setdefault(tuple(hashable(e.get(k)) for k in line_keys), []).append(e)

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
