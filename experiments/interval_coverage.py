"""Do a one-run table's intervals cover what another seed would give? Digits rows of 1 seed ×
N samples, aggregated with intervals, against the spread measured across seeds.

    python experiments/interval_coverage.py          # docs/verdicts.md's numbers (~10 min)
    python experiments/interval_coverage.py --seeds 4 --samples 240

Each seed's runs are one table of one run per row, as a 50K ImageNet table is: its intervals
come from that run alone (the jackknife over 20 index blocks that ``calguide-aggregate`` uses,
and, for comparison, the paired bootstrap over samples). Across the seeds the estimates
themselves vary; the script reports, per row and per claim, the mean interval half-width
against 1.96 × the across-seed standard deviation, and how many seeds' 95% intervals contain
the across-seed mean. Writes ``interval_coverage.{json,md}`` and seed 0's ``table.md``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import yaml

from calguide.commands import aggregate
from calguide.config import compose_spec
from calguide.io import atomic_write_report, atomic_write_text
from calguide.tables.records import collect_runs
from calguide.verdicts import Settings, judge, paired_bootstrap, paired_runs, row_interval

ROWS = {
    "none": ["denoiser=unet_tiny_uncond", "guidance=none"],
    "vanilla": ["denoiser=unet_tiny_uncond", "guidance=vanilla", "guidance.scale=0.7"],
    "js": ["denoiser=unet_tiny_uncond", "guidance=js", "guidance.scale=0.7"],
}
CLAIMS = [
    {"id": "vanilla-none", "text": "EluCD vs unguided", "metric": "fid",
     "better": {"guidance.name": "vanilla"}, "than": {"guidance.name": "none"}},
    {"id": "js-vanilla", "text": "JS vs EluCD", "metric": "fid",
     "better": {"guidance.name": "js"}, "than": {"guidance.name": "vanilla"}},
]  # fmt: skip
METRICS = ("fid", "kid")


def run_rows(seed: int, samples: int, work: Path, overrides: list[str]) -> list[Path]:
    from calguide.jobs.sample import run_sampling

    folders = []
    for name, row in ROWS.items():
        folder = work / f"seed{seed}" / name
        spec = compose_spec(
            "sample",
            ["experiment=digits_miniature", *row, f"seed={seed}", f"sampling.num_samples={samples}",
             "sampling.progress=false", "trainer.enable_progress_bar=false", *overrides],
            output_dir=folder,
        )  # fmt: skip
        started = time.perf_counter()
        run_sampling(spec)
        print(f"  seed {seed} {name}: {time.perf_counter() - started:.0f} s", flush=True)
        folders.append(folder)
    return folders


def summary(values: list[float], intervals: list[tuple[float, float]]) -> dict:
    centre = statistics.fmean(values)
    sd = statistics.stdev(values)
    half = statistics.fmean((hi - lo) / 2 for lo, hi in intervals)
    covered = sum(lo <= centre <= hi for lo, hi in intervals)
    return {"mean": centre, "sd": sd, "half_width": half, "ratio": half / (1.96 * sd),
            "covered": covered, "seeds": len(values)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--first-seed", type=int, default=300)
    parser.add_argument("--samples", type=int, default=960)
    parser.add_argument("--bootstrap", type=int, default=200, help="bootstrap replicates")
    parser.add_argument("--work", type=Path, default=Path("logs/interval-coverage"))
    parser.add_argument("--out", type=Path, default=Path("docs/calibration"))
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    work = args.work.resolve()
    started = time.perf_counter()
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    per_seed = {}
    for seed in seeds:
        per_seed[seed] = collect_runs(run_rows(seed, args.samples, work, args.overrides))
    settings = Settings(bootstrap=args.bootstrap)  # one run per row: 20 index blocks
    rows_out, claims_out = {}, {}
    for name in ROWS:
        for metric in METRICS:
            values, intervals = [], []
            for seed in seeds:
                runs = [r for r in per_seed[seed] if r["guidance.name"] == name]
                iv = row_interval(runs, metric, settings)
                values.append(iv.estimate)
                intervals.append((iv.lo, iv.hi))
            rows_out[f"{name} {metric}"] = summary(values, intervals)
    for claim in CLAIMS:
        for metric in METRICS:
            c = {**claim, "metric": metric, "family": claim["id"] + metric}
            values, jack, boot = [], [], []
            for seed in seeds:
                (v,) = judge(per_seed[seed], [c], settings)
                values.append(v.difference)
                jack.append((v.lo, v.hi))
                pairs, _ = paired_runs(per_seed[seed], c)
                ra, rb, _ = pairs[0]
                d, se, _ = paired_bootstrap(
                    aggregate_rows(ra), aggregate_rows(rb), metric, settings
                )
                boot.append((d - 1.96 * se, d + 1.96 * se))
            claims_out[f"{claim['id']} {metric}"] = {
                "jackknife": summary(values, jack),
                "bootstrap": summary(values, boot),
            }
    took = time.perf_counter() - started
    claims_file = work / "claims.yaml"
    atomic_write_text(yaml.safe_dump([{**c, "family": "coverage"} for c in CLAIMS]), claims_file)
    code = aggregate.main(
        [str(work / f"seed{seeds[0]}"), "--out", str(args.out), "--rows", "guidance.name",
         "--claims", str(claims_file),
         "--title", f"digits, one seed × {args.samples} samples per row (seed {seeds[0]})"]
    )  # fmt: skip
    if code:
        return code
    (args.out / "table.md").rename(args.out / "one_seed_table.md")
    lines = [
        f"{len(seeds)} seeds × {args.samples} samples per row, unconditional denoiser, 20 "
        f"steps, scale 0.7; intervals from one run each (20 index blocks); {took / 60:.0f} min "
        f"(`python experiments/interval_coverage.py {' '.join(sys.argv[1:])}`).",
        "",
        "| quantity | across-seed mean | across-seed sd | mean 95% half-width | "
        "half-width / (1.96 sd) | seeds whose interval holds the mean |",
        "| :-- | --: | --: | --: | --: | --: |",
    ]
    for key, s in rows_out.items():
        lines.append(_line(f"row {key} (jackknife)", s))
    for key, both in claims_out.items():
        for method, s in both.items():
            lines.append(_line(f"{key} ({method})", s))
    text = "\n".join(lines) + "\n"
    record = {"rows": rows_out, "claims": claims_out}
    atomic_write_report(args.out, "interval_coverage", record, text)
    print(text)
    return 0


def aggregate_rows(record: dict):
    from calguide.metrics.per_sample import read_eval_features

    return read_eval_features(record["eval_features"])


def _line(name: str, s: dict) -> str:
    return (
        f"| {name} | {s['mean']:.4g} | {s['sd']:.3g} | {s['half_width']:.3g} | "
        f"{s['ratio']:.2f} | {s['covered']}/{s['seeds']} |"
    )


if __name__ == "__main__":
    sys.exit(main())
