"""What a table says about each claim of the paper, decided by a stated rule (never by hand).

A claim compares two rows of an aggregated table (``calguide-aggregate``'s summary) on one
metric: "row A has a lower FID than row B". When both rows ran the same seeds (a seed's noise
is shared by every row), the comparison is paired: d = the mean of the per-seed differences,
se = their sample std / √n. Otherwise, with the seeds' means m_A, m_B, standard deviations
s_A, s_B and counts n_A, n_B: d = m_A − m_B, se = sqrt(s_A²/n_A + s_B²/n_B). The claim is

- **supported** when d is on the claimed side by more than ``k``·se (k = 2 by default),
- **not supported** when d is on the other side by more than k·se,
- **within noise** otherwise.

A deterministic metric (one value per row, e.g. a classifier's calibration error) has no
spread across seeds; it then uses a relative tolerance instead: se = ``rel_tol``·|m_B|.

Claims are listed in YAML (the experiment's ``experiment.claims``, or a file given to
``calguide-aggregate --claims``)::

    - id: js_beats_elucd
      text: JS-regularized guidance gives a lower FID than EluCD's
      metric: fid
      lower_is_better: true
      better: {guidance.name: js, denoiser.name: unet_tiny}
      than: {guidance.name: vanilla, denoiser.name: unet_tiny}
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

VERDICTS = ("supported", "not supported", "within noise")


@dataclass(frozen=True)
class Verdict:
    claim: str
    text: str
    verdict: str
    difference: float | None
    stderr: float | None
    detail: str


def difference_verdict(
    mean_a: float,
    std_a: float | None,
    n_a: int,
    mean_b: float,
    std_b: float | None,
    n_b: int,
    *,
    lower_is_better: bool = True,
    k: float = 2.0,
    rel_tol: float = 0.05,
) -> tuple[str, float, float]:
    """(verdict, d = mean_a − mean_b, se) for the claim "a is better than b" (see module)."""
    d = mean_a - mean_b
    spread = [(s or 0.0) ** 2 / max(n, 1) for s, n in ((std_a, n_a), (std_b, n_b))]
    se = math.sqrt(sum(spread))
    if se == 0.0:
        se = rel_tol * abs(mean_b)
    signed = -d if lower_is_better else d  # > 0: on the claimed side
    if signed > k * se:
        return "supported", d, se
    if signed < -k * se:
        return "not supported", d, se
    return "within noise", d, se


def _matches(entry: Mapping[str, Any], selector: Mapping[str, Any]) -> bool:
    return all(str(entry.get(key)) == str(value) for key, value in selector.items())


def find_row(summary: Sequence[Mapping[str, Any]], selector: Mapping[str, Any]) -> Mapping | None:
    hits = [e for e in summary if _matches(e, selector)]
    return hits[0] if len(hits) == 1 else None


def paired_differences(
    records: Sequence[Mapping[str, Any]],
    better: Mapping[str, Any],
    than: Mapping[str, Any],
    metric: str,
) -> list[float] | None:
    """Per-seed differences better − than when both rows ran the same seeds (each seed's noise
    is shared by every row, so the comparison is paired); None otherwise."""

    def by_seed(selector: Mapping[str, Any]) -> dict[Any, float]:
        values = {}
        for record in records:
            if _matches(record, selector) and record.get(metric) is not None:
                values[record.get("seed")] = float(record[metric])
        return values

    a, b = by_seed(better), by_seed(than)
    if len(a) < 2 or set(a) != set(b):
        return None
    return [a[seed] - b[seed] for seed in sorted(a, key=str)]


def judge(
    summary: Sequence[Mapping[str, Any]],
    claims: Sequence[Mapping[str, Any]],
    k: float = 2.0,
    records: Sequence[Mapping[str, Any]] = (),
) -> list[Verdict]:
    """One :class:`Verdict` per claim; a claim whose rows are not (uniquely) in the table is
    reported as such instead of judged. With the runs' ``records`` and the same seeds in both
    rows, the comparison is paired: d = mean of the per-seed differences, se = their sample
    std / √n."""
    verdicts = []
    for claim in claims:
        metric = claim["metric"]
        lower = bool(claim.get("lower_is_better", True))
        diffs = paired_differences(records, claim["better"], claim["than"], metric)
        if diffs is not None and any(diffs):
            mean_d = statistics.fmean(diffs)
            spread = statistics.stdev(diffs)
            verdict, d, se = difference_verdict(
                mean_d, spread, len(diffs), 0.0, 0.0, 1, lower_is_better=lower, k=k,
                rel_tol=0.0,
            )  # fmt: skip
            a, b = find_row(summary, claim["better"]), find_row(summary, claim["than"])
            flat = max(diffs) - min(diffs) <= 1e-9 * max(1.0, abs(mean_d))
            if flat and b is not None:  # the same difference every seed: relative tolerance
                verdict, _, se = difference_verdict(
                    a[f"{metric}_mean"], None, 1, b[f"{metric}_mean"], None, 1,
                    lower_is_better=lower, k=k, rel_tol=float(claim.get("rel_tol", 0.05)),
                )  # fmt: skip
            means = (
                f"{a[f'{metric}_mean']:.4g} vs {b[f'{metric}_mean']:.4g}, "
                if a is not None and b is not None
                else ""
            )
            detail = (
                f"{metric} {means}paired over {len(diffs)} seeds: d = {d:+.3g}, "
                f"{k:g}·se = {k * se:.3g}"
            )
            verdicts.append(Verdict(claim["id"], claim["text"], verdict, d, se, detail))
            continue
        a, b = find_row(summary, claim["better"]), find_row(summary, claim["than"])
        if (
            a is None
            or b is None
            or a.get(f"{metric}_mean") is None
            or b.get(f"{metric}_mean") is None
        ):
            verdicts.append(
                Verdict(claim["id"], claim["text"], "not measured", None, None, "rows missing")
            )
            continue
        verdict, d, se = difference_verdict(
            a[f"{metric}_mean"],
            a.get(f"{metric}_std"),
            int(a.get(f"{metric}_n") or 1),
            b[f"{metric}_mean"],
            b.get(f"{metric}_std"),
            int(b.get(f"{metric}_n") or 1),
            lower_is_better=lower,
            k=k,
            rel_tol=float(claim.get("rel_tol", 0.05)),
        )
        detail = (
            f"{metric} {a[f'{metric}_mean']:.4g} vs {b[f'{metric}_mean']:.4g}: "
            f"d = {d:+.3g}, 2·se = {k * se:.3g}"
        )
        verdicts.append(Verdict(claim["id"], claim["text"], verdict, d, se, detail))
    return verdicts


def verdict_block(verdicts: Sequence[Verdict], k: float = 2.0) -> str:
    """Markdown: one line per claim, then the rule."""
    lines = ["**What this run says about the paper's claims**", ""]
    for v in verdicts:
        lines.append(f"- {v.text}: **{v.verdict}** ({v.detail})")
    lines += [
        "",
        "Rule: every row runs the same seeds and a seed's noise is shared by all rows, so a "
        "claim is judged on the per-seed differences d_i = (claimed better) − (other): d = "
        "mean d_i, se = sd(d_i)/√n; supported if d is on the claimed side by more than "
        f"{k:g}·se, not supported if on the other side by more than {k:g}·se, within noise "
        "otherwise. Rows without common seeds use the unpaired se = √(s₁²/n₁ + s₂²/n₂); a "
        "metric without spread (one value per row) uses 5% of the other row's value as se.",
    ]
    return "\n".join(lines)
