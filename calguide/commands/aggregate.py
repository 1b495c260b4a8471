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
import dataclasses
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from calguide.io import atomic_write_text
from calguide.tables.plots import plot_fid_vs_scale, plot_precision_recall
from calguide.tables.records import AggregateError, collect_runs, repeated_runs, unfinished_runs
from calguide.tables.render import interval_table, markdown_table, runs_csv, shown_metrics, to_csv
from calguide.tables.summary import (
    DEFAULT_METRICS,
    DEFAULT_PUBLISHED,
    DEFAULT_ROWS,
    load_published,
    published_tables,
    summarize,
)
from calguide.verdicts import NOT_JUDGED, ClaimError, Settings, Verdict, judge

# --------------------------------------------------------------------------- the verdicts, in words


def _g(x: float | None) -> str:
    return "—" if x is None else f"{x:.3g}"


def verdict_detail(v: Verdict) -> str:
    """The numbers behind a verdict in one clause (or why it was not judged): the rows' values,
    d (bias-corrected, the plug-in beside it), the interval and what it resolves."""
    if v.verdict == NOT_JUDGED:
        return v.reason
    df = "normal" if v.df is None else f"t, {v.df:g} df"
    level = f"{100 * v.level:.2f}".rstrip("0").rstrip(".")
    moved = v.plugin is not None and f"{v.plugin:+.3g}" != f"{v.difference:+.3g}"
    plugin = f" (plug-in {v.plugin:+.3g})" if moved else ""
    margin = "" if v.margin is None else f" against ±{v.margin:g}"
    return (
        f"{v.metric} {_g(v.better_value)} vs {_g(v.than_value)}: d = {v.difference:+.3g}{plugin}, "
        f"{level}% interval [{v.lo:+.3g}, {v.hi:+.3g}]{margin} ({df}, {v.units} {v.unit}); "
        f"resolves |d| ≥ {v.resolvable:.3g}"
    )


def what_would_resolve(v: Verdict, cost_per_sample_s: float | None = None, samples: int = 0) -> str:
    """A sentence on what would settle an undecided claim: the factor on the samples (or on the
    independent trainings) that brings the interval's half-width down to the corrected |d| (to
    the room left inside the margin, for an equivalence claim), with its cost when the cost of
    a sample is known. It assumes the corrected d stays put as the samples grow, which is what
    the bias correction is for (the plug-in d drifts with n)."""
    if v.verdict not in ("within noise", "inconclusive") or v.samples_factor is None:
        return ""
    factor = v.samples_factor
    goal = "resolving" if v.margin is None else "showing equivalence at"
    if v.unit.endswith("values"):  # replicates: more trainings
        return f"{goal} d = {v.difference:+.3g} would need about {factor:.0f}× the trainings"
    text = f"{goal} d = {v.difference:+.3g} would need about {factor:.0f}× the samples"
    if cost_per_sample_s is not None and samples:
        minutes = 2 * (factor - 1.0) * samples * cost_per_sample_s / 60.0  # both rows
        cost = f"≈ {minutes:.0f} more minutes" if minutes >= 1 else "under a minute more"
        text += f" ({cost} of sampling on this machine)"
    return text


def verdict_block(
    verdicts: Sequence[Verdict], settings: Settings | None = None, resolve: Callable | None = None
) -> str:
    """Markdown: the families with their claims, then the rule and its error rate."""
    settings = settings or Settings()
    lines = ["**What this run says about the paper's claims**", ""]
    families = list(dict.fromkeys(v.family for v in verdicts))
    for fam in families:
        members = [v for v in verdicts if v.family == fam]
        judged = sum(v.verdict != NOT_JUDGED for v in members)
        if len(families) > 1:
            lines.append(f"*{fam}* ({judged} judged claim{'s' if judged != 1 else ''})")
            lines.append("")
        for v in members:
            extra = resolve(v) if resolve is not None else what_would_resolve(v)
            extra = f" — {extra}" if extra else ""
            lines.append(f"- {v.text}: **{v.verdict}** ({verdict_detail(v)}){extra}")
        lines.append("")
    alpha = 100 * settings.alpha
    judged = sum(v.verdict != NOT_JUDGED for v in verdicts)
    equivalence = any(v.margin is not None for v in verdicts)
    lines.append(
        f"Rule (error rate): the table's {judged} judged claim{'s' if judged != 1 else ''} "
        f"share one {alpha:g}% error rate (Bonferroni over the table, whatever the families): "
        f"each interval is a (1 − {settings.alpha:g}/{max(judged, 1)}) two-sided interval for "
        "d = (claimed better) − (other), so the chance that any verdict of this table is "
        f"decisive while its rows do not differ is at most {alpha:g}%. supported: the interval "
        "lies on the claimed side of 0; contradicted: on the other side; within noise: it "
        "contains 0; 'resolves' is its half-width. "
        + (
            f"An equivalence claim (±δ stated with it) is two one-sided tests at "
            f"{settings.alpha:g}/{max(judged, 1)} each: equivalent when the (1 − "
            f"2·{settings.alpha:g}/{max(judged, 1)}) interval lies inside ±δ, different when "
            "it lies wholly beyond ±δ, else inconclusive. "
            if equivalence
            else ""
        )
        + "Rows are paired by seed and sample index (shared noise and labels); d is the "
        "jackknife's bias-corrected difference of the pooled paired samples (a claim about the "
        "distributions: FID's O(1/n) bias differs between rows of different diversity), with "
        "the plug-in d of these samples beside it; its standard error is the delete-one-group "
        "jackknife over independent groups (blocks of sample indices, or seeds; every metric, "
        "k-NN radii included, recomputed on what each group leaves) with Student's critical "
        "value on groups − 1 degrees of freedom; claims about a training method use Student's "
        "interval over its independent trainings."
    )
    return "\n".join(lines)


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
    parser.add_argument("--device", help="where the leave-one-group-out metrics run (cpu, cuda)")
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
    for name, key in (("block_size", "block_size"), ("alpha", "alpha")):
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
            json.dumps(
                [{**dataclasses.asdict(v), "detail": verdict_detail(v)} for v in verdicts],
                indent=2,
            )
            + "\n",
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
