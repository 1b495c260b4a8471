"""The verdict rule on simulated rows whose truth is known: error rates, coverage and power.

    python experiments/verdict_simulation.py                 # docs/calibration/ (~15 min, 2 CPUs)
    python experiments/verdict_simulation.py --repeats 100   # a quick look

Rows are Gaussian feature sets (64-d, 480 samples in 24 blocks of 20: the miniature's design),
judged with calguide's own pieces (``metrics.per_sample.leave_one_out``,
``stats.jackknife_interval``, ``stats.verdict_of``) against a reference whose population is
N(0, I) (its exact mean and covariance for FID and KID; 480 fixed draws for precision and
recall). Every case has a known answer:

- **A/A** (both rows N(0, I)): unpaired, and paired with correlation ρ = 0.95 between the
  rows' samples (shared noise): the decisive rate of each metric is the rule's error rate.
- **Diversity differs, same FID**: N(0, 0.9²I) against N(0, 1.1²I) have the same FID to the
  reference at infinite samples (D·0.01), so d = 0, but FID's O(1/n) bias differs between them:
  how often the interval covers d = 0 and how often "A has a lower FID" comes out supported,
  centred on the plug-in d (the old rule) and on the jackknife's bias-corrected d (the rule).
- **Power**: mean shifts with infinite-sample d = −0.2 and −0.5 FID, paired and unpaired.
- **Recall's jackknife**: weakly paired A/A rows (ρ = 0.3), recall's decisive rate with the
  whole set's k-NN radii kept in every leave-one-group-out value (the old reweighting), with
  the radii recomputed on what is kept (the rule), and the latter centred on the jackknife's
  bias correction (why the rule does not correct precision and recall).

FID and KID intervals are centred on the jackknife's bias-corrected d, precision's and
recall's on the plug-in d, as ``calguide.verdicts`` does.

Rates come with Clopper–Pearson 95% intervals. Writes ``verdict_simulation.{json,md}``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from calguide.io import atomic_write_report
from calguide.metrics.per_sample import SMOOTH_METRICS, PerSample, leave_one_out, replicates
from calguide.stats import (
    clopper_pearson,
    jackknife_interval,
    per_claim_level,
    verdict_of,
)

D, N, BLOCK, REF_ROWS = 64, 480, 20, 480
TABLE_CLAIMS = 10  # the miniature's table: its judged claims share one 5% error rate
METRICS = ("fid", "kid", "precision", "recall", "class_acc")


def rows(x: torch.Tensor, correct: torch.Tensor) -> PerSample:
    n = x.shape[0]
    return PerSample(
        torch.arange(n), torch.zeros(n, dtype=torch.int64), x.half(), correct.to(torch.int8)
    )


def pair(gen: torch.Generator, rho: float = 0.0, scales=(1.0, 1.0), shifts=(0.0, 0.0)):
    """Two rows of N samples: A = scale_a·z + shift_a, B = scale_b·(ρz + √(1−ρ²)z') + shift_b;
    each sample is 'classified correctly' with probability 0.8, B's the same as A's with
    probability ρ (paired rows share labels and noise)."""
    z = torch.randn(N, D, generator=gen)
    other = torch.randn(N, D, generator=gen)
    zb = rho * z + math.sqrt(1 - rho**2) * other
    a = scales[0] * z + shifts[0]
    b = scales[1] * zb + shifts[1]
    u = torch.rand(N, generator=gen)
    ub = torch.where(torch.rand(N, generator=gen) < rho, u, torch.rand(N, generator=gen))
    return rows(a, u < 0.8), rows(b, ub < 0.8)


def true_fid(scale: float, shift: float) -> float:
    """FID of N(shift·1, scale²I) to N(0, I) in D dimensions: |μ|² + D·(scale − 1)²."""
    return D * shift**2 + D * (scale - 1.0) ** 2


def judge_pair(a, b, reference, metrics, groups, level: float):
    """Per metric: (plug-in d, corrected interval at ``level``)."""
    la = leave_one_out(a, groups, reference, metrics)
    lb = leave_one_out(b, groups, reference, metrics)
    out = {}
    for m in metrics:
        d = la[m][0] - lb[m][0]
        loo = (la[m][1] - lb[m][1]).tolist()
        out[m] = (d, jackknife_interval(d, loo, level, bias_corrected=m in SMOOTH_METRICS), loo)
    return out


def rate(hits: int, total: int) -> dict:
    lo, hi = clopper_pearson(hits, total)
    return {"hits": hits, "repeats": total, "rate": hits / total, "lo": lo, "hi": hi}


def pct(r: dict) -> str:
    return f"{100 * r['rate']:.2f}% [{100 * r['lo']:.2f}, {100 * r['hi']:.2f}]"


@dataclass
class Setting:
    """What every case shares: the draws, the reference, the blocks, the table's level."""

    gen: torch.Generator
    reference: dict
    groups: torch.Tensor
    family: float
    repeats: int
    started: float

    def done(self, what: str) -> None:
        print(f"{what}: done ({time.perf_counter() - self.started:.0f} s)", flush=True)


def aa_case(s: Setting) -> dict:
    """A/A: decisive rates per metric, unpaired and paired."""
    gen, reference, groups, family = s.gen, s.reference, s.groups, s.family
    aa: dict = {}
    for label, rho in (("unpaired", 0.0), ("paired ρ=0.95", 0.95)):
        counts = {m: [0, 0] for m in METRICS}
        for _ in range(s.repeats):
            a, b = pair(gen, rho)
            found = judge_pair(a, b, reference, METRICS, groups, 0.95)
            for m, (_, interval, loo) in found.items():
                counts[m][0] += verdict_of(interval) != "within noise"
                plugin = interval.estimate if interval.plugin is None else interval.plugin
                at_family = jackknife_interval(
                    plugin, loo, family, bias_corrected=m in SMOOTH_METRICS
                )
                counts[m][1] += verdict_of(at_family) != "within noise"
        aa[label] = {
            m: {"at_95": rate(c[0], s.repeats), "at_family": rate(c[1], s.repeats)}
            for m, c in counts.items()
        }
        s.done(f"A/A {label}")
    return aa


def diversity_case(s: Setting) -> dict:
    """Diversity differs, infinite-sample d = 0: coverage and false 'supported'."""
    gen, reference, groups, family = s.gen, s.reference, s.groups, s.family
    diversity: dict = {}
    for label, rho in (("unpaired", 0.0), ("paired ρ=0.95", 0.95)):
        cover = {"plug-in": 0, "corrected": 0}
        supported = {"plug-in": 0, "corrected": 0}
        supported_family = {"plug-in": 0, "corrected": 0}
        moved = []
        for _ in range(s.repeats):
            a, b = pair(gen, rho, scales=(0.9, 1.1))
            d, interval, loo = judge_pair(a, b, reference, ["fid"], groups, 0.95)["fid"]
            plugin = jackknife_interval(d, loo, 0.95, bias_corrected=False)
            moved.append(interval.estimate - d)
            for name, iv in (("plug-in", plugin), ("corrected", interval)):
                cover[name] += iv.lo <= 0.0 <= iv.hi
                supported[name] += verdict_of(iv) == "supported"
                fam = jackknife_interval(d, loo, family, bias_corrected=name == "corrected")
                supported_family[name] += verdict_of(fam) == "supported"
        diversity[label] = {
            "true_d": true_fid(0.9, 0.0) - true_fid(1.1, 0.0),
            "mean_correction": sum(moved) / len(moved),
            **{
                name: {
                    "coverage_95": rate(cover[name], s.repeats),
                    "supported_95": rate(supported[name], s.repeats),
                    "supported_family": rate(supported_family[name], s.repeats),
                }
                for name in cover
            },
        }
        s.done(f"diversity {label}")
    return diversity


def aa_coverage_case(s: Setting) -> dict:
    """A/A coverage of d = 0 (FID), plug-in against corrected, on fresh unpaired draws."""
    gen, reference, groups = s.gen, s.reference, s.groups
    cover_aa = {"plug-in": 0, "corrected": 0}
    for _ in range(s.repeats):
        a, b = pair(gen, 0.0)
        d, interval, loo = judge_pair(a, b, reference, ["fid"], groups, 0.95)["fid"]
        plugin = jackknife_interval(d, loo, 0.95, bias_corrected=False)
        cover_aa["plug-in"] += plugin.lo <= 0.0 <= plugin.hi
        cover_aa["corrected"] += interval.lo <= 0.0 <= interval.hi
    s.done("A/A coverage")
    return {k: rate(v, s.repeats) for k, v in cover_aa.items()}


def power_case(s: Setting) -> dict:
    """Power: FID(A) − FID(B) = −0.2 and −0.5 at infinite samples."""
    gen, reference, groups, family = s.gen, s.reference, s.groups, s.family
    power: dict = {}
    b_shift = math.sqrt(0.5 / D)  # FID(B) = 0.5
    for effect in (0.2, 0.5):
        a_shift = math.sqrt(max(0.5 - effect, 0.0) / D)
        for label, rho in (("unpaired", 0.0), ("paired ρ=0.95", 0.95)):
            hits = [0, 0]
            for _ in range(s.repeats):
                a, b = pair(gen, rho, shifts=(a_shift, b_shift))
                d, interval, loo = judge_pair(a, b, reference, ["fid"], groups, 0.95)["fid"]
                hits[0] += verdict_of(interval) == "supported"
                hits[1] += verdict_of(jackknife_interval(d, loo, family)) == "supported"
            power[f"d = -{effect:g}, {label}"] = {
                "true_d": true_fid(1.0, a_shift) - true_fid(1.0, b_shift),
                "supported_95": rate(hits[0], s.repeats),
                "supported_family": rate(hits[1], s.repeats),
            }
        s.done(f"power {effect}")
    return power


def recall_case(s: Setting) -> dict:
    """Recall: the old reweighting (whole-set radii) against the real jackknife."""
    gen, reference, groups = s.gen, s.reference, s.groups
    recall = {
        "kept radii (before)": 0,
        "recomputed radii (now)": 0,
        "recomputed radii, bias-corrected (not used)": 0,
    }
    keep = torch.ones(N // BLOCK + 1, N, dtype=torch.float64)
    keep[torch.arange(1, N // BLOCK + 1)[groups], torch.arange(N)] = 0.0
    for _ in range(s.repeats):
        a, b = pair(gen, 0.3)
        ra = replicates(a, keep, reference, ["recall"])["recall"]
        rb = replicates(b, keep, reference, ["recall"])["recall"]
        old = jackknife_interval(float(ra[0] - rb[0]), (ra[1:] - rb[1:]).tolist(), 0.95)
        recall["kept radii (before)"] += verdict_of(old) != "within noise"
        d, interval, loo = judge_pair(a, b, reference, ["recall"], groups, 0.95)["recall"]
        recall["recomputed radii (now)"] += verdict_of(interval) != "within noise"
        corrected = jackknife_interval(d, loo, 0.95)
        recall["recomputed radii, bias-corrected (not used)"] += (
            verdict_of(corrected) != "within noise"
        )
    s.done("recall")
    return {k: rate(v, s.repeats) for k, v in recall.items()}


def report(result: dict) -> str:
    """The markdown tables of every case."""
    aa, diversity, power = result["aa"], result["diversity"], result["power"]
    repeats = result["repeats"]
    lines = [
        "# The verdict rule on simulated rows (experiments/verdict_simulation.py)",
        "",
        f"{D}-d Gaussian features, {N} samples per row in {N // BLOCK} blocks of {BLOCK} (the "
        f"miniature's design), {repeats} repeats per case, reference population N(0, I). "
        "Rates with Clopper–Pearson 95% intervals. 'table level': each interval at "
        f"1 − 0.05/{TABLE_CLAIMS} (the miniature's {TABLE_CLAIMS} judged claims), where a "
        f"rule at its stated rate is decisive at most {100 * 0.05 / TABLE_CLAIMS:.2f}% of the "
        "time under A/A.",
        "",
        "**A/A: decisive rate per metric** (the rows cannot differ; at 95% the rule is right "
        "when it is decisive at most 5% of the time)",
        "",
        "| metric | unpaired, 95% | unpaired, table level | paired ρ=0.95, 95% "
        "| paired, table level |",
        "| --- | --- | --- | --- | --- |",
    ]
    for m in METRICS:
        u, p = aa["unpaired"][m], aa["paired ρ=0.95"][m]
        lines.append(
            f"| {m} | {pct(u['at_95'])} | {pct(u['at_family'])} | {pct(p['at_95'])} | "
            f"{pct(p['at_family'])} |"
        )
    lines += [
        "",
        "**Diversity differs, d = 0 at infinite samples** (FID of N(0, 0.9²I) − N(0, 1.1²I)): "
        "coverage of d = 0 by the 95% interval and how often 'A has a lower FID' is supported",
        "",
        "| pairing | centred on | covers d = 0 (95%) | supported (95%) | supported (table level) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for label, entry in diversity.items():
        for name in ("plug-in", "corrected"):
            e = entry[name]
            lines.append(
                f"| {label} | {name} | {pct(e['coverage_95'])} | {pct(e['supported_95'])} | "
                f"{pct(e['supported_family'])} |"
            )
    lines += [
        "",
        "Mean correction of d (corrected − plug-in): "
        + ", ".join(f"{k} {v['mean_correction']:+.3f}" for k, v in diversity.items())
        + ".",
        "",
        "**A/A coverage of d = 0 (FID, unpaired, 95%)**: "
        + ", ".join(f"{k} {pct(v)}" for k, v in result["aa_coverage"].items())
        + ".",
        "",
        "**Power** ('A has a lower FID' supported; A's FID lower by the stated infinite-sample d):",
        "",
        "| case | supported (95%) | supported (table level) |",
        "| --- | --- | --- |",
    ]
    for label, entry in power.items():
        lines.append(
            f"| {label} | {pct(entry['supported_95'])} | {pct(entry['supported_family'])} |"
        )
    lines += [
        "",
        "**Recall's jackknife** (A/A, weakly paired ρ = 0.3; decisive at 95%): "
        + ", ".join(f"{k}: {pct(v)}" for k, v in result["recall"].items())
        + ".",
        "",
        f"{result['seconds'] / 60:.1f} min on this machine.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("docs/calibration"))
    args = parser.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    gen = torch.Generator().manual_seed(args.seed)
    reference = {
        "mean": torch.zeros(D, dtype=torch.float64),
        "cov": torch.eye(D, dtype=torch.float64),
        "features": torch.randn(REF_ROWS, D, generator=gen),
    }
    family = per_claim_level(TABLE_CLAIMS)
    s = Setting(gen, reference, torch.arange(N) // BLOCK, family, args.repeats, time.perf_counter())
    result: dict = {
        "design": {"dims": D, "samples": N, "block": BLOCK, "groups": N // BLOCK},
        "repeats": args.repeats,
        "table_claims": TABLE_CLAIMS,
        "family_level": family,
        "aa": aa_case(s),
        "diversity": diversity_case(s),
        "aa_coverage": aa_coverage_case(s),
        "power": power_case(s),
        "recall": recall_case(s),
    }
    result["seconds"] = time.perf_counter() - s.started
    text = report(result)
    atomic_write_report(args.out, "verdict_simulation", result, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
