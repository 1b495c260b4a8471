"""A/A calibration of the verdict rule: how often it is decisive when the two rows cannot differ.

    python experiments/verdict_calibration.py        # docs/verdicts.md's numbers (~25 min)
    python experiments/verdict_calibration.py --repeats 20 --samples-per-row 120   # a quick look

The rule (calguide/tools/claims.py) claims a 5% family-wise error rate: with Bonferroni, each
claim of an m-claim family is decisive with probability at most 5%/m when its rows do not
differ. This script measures the per-claim rate at a nominal 5% (the 95% interval excludes 0),
and the rate at 5%/6 (the miniature's largest family), on pairs of rows that cannot differ:

- **disjoint**: one configuration, two disjoint sets of sample indices (independent samples of
  one distribution), paired by position;
- **perturbed**: the bundled models against copies with every weight times (1 + 1e-6·N(0,1))
  (experiments/perturb_weights.py; the evaluation network is left as it is, so both rows are
  measured by one network), paired by sample index: the same noise, and guided samples that
  the chaos of guidance sends elsewhere.

Each repeat takes ``--samples-per-row`` fresh samples per row (disjoint index ranges of one
large run per configuration, so repeats are independent), cuts them into blocks of
``--block-size`` indices and judges d = metric(A) − metric(B) with the delete-one-block
jackknife and Student's critical value, as every verdict does. Reduced size by default (240
samples, 10 steps instead of the miniature's 480 and 20: FID for 100 repeats of two designs
would otherwise take hours); docs/verdicts.md says so. Writes ``verdict_calibration.{json,md}``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

from calguide.config import compose_spec
from calguide.io import atomic_write_report
from calguide.metrics.per_sample import leave_one_out, read_eval_features
from calguide.metrics.reference import load_reference_file
from calguide.stats import critical_value, jackknife_interval, per_claim_level, verdict_of

METRICS = ("fid", "kid", "precision", "recall", "class_acc")
CONFIGS = {
    "uncond_vanilla": ["denoiser=unet_tiny_uncond", "guidance=vanilla", "guidance.scale=0.7"],
    "uncond_none": ["denoiser=unet_tiny_uncond", "guidance=none"],
    "cond_vanilla": ["denoiser=unet_tiny", "guidance=vanilla", "guidance.scale=1.0"],
}
FAMILY = 6  # the miniature's largest family


def pool(overrides: list[str], count: int, work: Path, name: str, args) -> Path:
    """One run of ``count`` samples of a configuration; its eval_features.npz."""
    from calguide.jobs.sample import run_sampling

    spec = compose_spec(
        "sample",
        ["experiment=digits_miniature", *overrides, f"seed={args.seed}",
         f"sampling.num_samples={count}", f"diffusion.respacing='{args.steps}'",
         "sampling.progress=false", "trainer.enable_progress_bar=false",
         f"metrics.cache_dir={work / 'reference'}", *args.overrides],
        output_dir=work / name,
    )  # fmt: skip
    started = time.perf_counter()
    record = run_sampling(spec)
    took = time.perf_counter() - started
    print(f"  pool {name}: {count} samples in {took:.0f} s", flush=True)
    return Path(record["eval_features"])


def judge_repeat(rows_a, rows_b, ref, block: int) -> dict[str, dict]:
    groups = torch.arange(len(rows_a)) // block
    la = leave_one_out(rows_a, groups, ref, METRICS)
    lb = leave_one_out(rows_b, groups, ref, METRICS)
    out = {}
    for m in METRICS:
        d = la[m][0] - lb[m][0]
        loo = (la[m][1] - lb[m][1]).tolist()
        if max(loo) - min(loo) == 0.0 and d == 0.0:  # identical rows (class_acc at 1.0)
            out[m] = {"d": 0.0, "nominal": False, "family": False}
            continue
        nominal = verdict_of(jackknife_interval(d, loo, 0.95)) != "within noise"
        family = verdict_of(jackknife_interval(d, loo, per_claim_level(FAMILY)))
        out[m] = {"d": d, "nominal": nominal, "family": family != "within noise"}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--samples-per-row", type=int, default=240)
    parser.add_argument("--block-size", type=int, default=20)
    parser.add_argument("--steps", default="10")
    parser.add_argument("--seed", type=int, default=2000)
    parser.add_argument("--configs", default="uncond_vanilla,uncond_none")
    parser.add_argument("--designs", default="disjoint,perturbed")
    parser.add_argument("--work", type=Path, default=Path("logs/verdict-calibration"))
    parser.add_argument("--out", type=Path, default=Path("docs/calibration"))
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run")
    args = parser.parse_args(argv)
    n, r = args.samples_per_row, args.repeats
    work = args.work.resolve()
    designs = args.designs.split(",")
    results = []
    started = time.perf_counter()
    for config in args.configs.split(","):
        overrides = CONFIGS[config]
        for design in designs:
            print(f"{config} / {design}: {r} repeats of {n} samples per row", flush=True)
            if design == "disjoint":
                path = pool(overrides, 2 * n * r, work, f"{config}-disjoint", args)
                rows = read_eval_features(path)
                pairs = [
                    (slice(2 * i * n, (2 * i + 1) * n), slice((2 * i + 1) * n, (2 * i + 2) * n))
                    for i in range(r)
                ]
                a_rows = b_rows = rows
            else:
                perturbed = work / "perturbed-models"
                if not (perturbed / "digits").is_dir():
                    from perturb_weights import main as perturb

                    perturb(["--artifacts", str(perturbed), "--keep", "digits_eval"])
                a_rows = read_eval_features(pool(overrides, n * r, work, f"{config}-bundled", args))
                b_rows = read_eval_features(
                    pool([*overrides, f"paths.artifacts={perturbed}"], n * r, work,
                         f"{config}-perturbed", args)
                )  # fmt: skip
                pairs = [(slice(i * n, (i + 1) * n),) * 2 for i in range(r)]
            ref = load_reference_file(a_rows.reference_file)
            if b_rows.reference_file != a_rows.reference_file:
                raise SystemExit("the two rows were evaluated against different references")
            found = []
            for sa, sb in pairs:
                pa = a_rows.take(torch.arange(len(a_rows))[sa])
                pb = b_rows.take(torch.arange(len(b_rows))[sb])
                found.append(judge_repeat(pa, pb, ref, args.block_size))
            for m in METRICS:
                nominal = sum(f[m]["nominal"] for f in found)
                family = sum(f[m]["family"] for f in found)
                identical = sum(f[m]["d"] == 0.0 for f in found)
                results.append(
                    {"config": config, "design": design, "metric": m, "repeats": r,
                     "decisive_nominal": nominal, "decisive_family": family,
                     "identical": identical}
                )  # fmt: skip
    took = time.perf_counter() - started
    level = per_claim_level(FAMILY)
    lines = [
        f"A/A: {r} repeats per line, {n} samples per row, blocks of {args.block_size} "
        f"({n // args.block_size} groups, t on {n // args.block_size - 1} df, critical "
        f"{critical_value(0.95, n // args.block_size - 1):.2f} at 95%), {args.steps} DDPM steps, "
        f"{took / 60:.0f} min (`python experiments/verdict_calibration.py "
        f"{' '.join(sys.argv[1:])}`).",
        "",
        "| rows | design | metric | repeats | decisive at 5% (stated ≤ 5%) | "
        f"decisive at 5%/{FAMILY} (stated ≤ {100 * (1 - level):.2f}%) |",
        "| :-- | :-- | :-- | --: | --: | --: |",
    ]
    for e in results:
        rate = e["decisive_nominal"] / e["repeats"]
        se = math.sqrt(max(rate * (1 - rate), 1e-12) / e["repeats"])
        note = f" ({e['identical']} identical)" if e["identical"] else ""
        lines.append(
            f"| {e['config']} | {e['design']} | {e['metric']} | {e['repeats']}{note} | "
            f"{100 * rate:.1f}% ± {100 * se:.1f} | "
            f"{100 * e['decisive_family'] / e['repeats']:.1f}% |"
        )
    text = "\n".join(lines) + "\n"
    atomic_write_report(args.out, "verdict_calibration", results, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
