"""A/A calibration of the verdict rule at the miniature's own design: how often it is decisive
when the two rows cannot differ.

    python experiments/verdict_calibration.py        # docs/calibration/ (~12 min, 2 CPUs)
    python experiments/verdict_calibration.py --repeats 50 --pool 960   # a quick look

The rule (calguide.verdicts) claims one 5% error rate per table: with m judged claims, each
interval has level 1 − 0.05/m, so a claim whose rows do not differ is decisive with probability
at most 0.05/m (m from the experiment's own claims: ``--experiment``). This script measures
that rate on real digits samples of the miniature's EluCD row (the unconditional denoiser,
EluCD's score at its tuned scale, the experiment's 20 DDPM steps), judged as ``make run`` judges
them: ``--samples`` samples per row in blocks of ``--block`` (FID and KID centred on the
jackknife's bias-corrected d; every metric recomputed without each block, k-NN radii
included; Student's critical value on blocks − 1 degrees of freedom).

Two pools of ``--pool`` samples are drawn once, by seeds ``--seed`` and ``--seed`` + 1, with
balanced labels, so that a sample index has the same requested label in both pools and
independent noise. Each repeat draws 2 × ``--samples`` distinct indices at random:

- **unpaired**: row A takes the first half's samples of pool 1, row B the second half's;
- **paired by label**: row A as above, row B the *same* indices' samples of pool 2 (the
  same labels, other noise: the miniature's rows also share their noise, so their pairing is
  stronger than this).

Repeats share the pools (a sample is in about 2·samples/pool of the repeats), so they are not
independent; the Clopper–Pearson intervals treat them as if they were. Precision and class
accuracy are means of per-sample 0/1 outcomes (inside the reference manifold; classified as
requested), so their rule is the t-test on block means and is cheap to redraw many more times:
``--indicator-repeats`` draws (unpaired, 95%) on the same pools and blocks, and the same
t-test on simulated Bernoulli blocks for comparison. ``--indicators-only`` skips the 1,000
full repeats (the pools are reused from the artifacts folder once made). Writes
``verdict_calibration.{json,md}`` and ``verdict_calibration_indicators.{json,md}``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from calguide.config import compose_spec
from calguide.io import atomic_write_report
from calguide.metrics.per_sample import (
    SMOOTH_METRICS,
    leave_one_out,
    read_eval_features,
)
from calguide.metrics.reference import load_reference_file
from calguide.stats import (
    clopper_pearson,
    critical_value,
    jackknife_interval,
    per_claim_level,
    verdict_of,
)

METRICS = ("fid", "kid", "precision", "recall", "class_acc")
ROW = ["denoiser=unet_tiny_uncond", "guidance=vanilla", "guidance.scale=0.7"]


def pool(seed: int, count: int, work: Path, args) -> Path:
    """One run of ``count`` samples of the miniature's EluCD row; its eval_features.npz."""
    from calguide.jobs.sample import run_sampling

    spec = compose_spec(
        "sample",
        [f"experiment={args.experiment}", *ROW, f"seed={seed}", f"sampling.num_samples={count}",
         "sampling.labels=balanced", "sampling.progress=false",
         "trainer.enable_progress_bar=false", f"metrics.cache_dir={work / 'reference'}",
         *args.overrides],
        output_dir=work / f"pool-{seed}",
    )  # fmt: skip
    started = time.perf_counter()
    record = run_sampling(spec)
    print(f"  pool seed {seed}: {count} samples in {time.perf_counter() - started:.0f} s")
    return Path(record["eval_features"])


def judged(rows, reference, block: int) -> dict[str, tuple[float, torch.Tensor]]:
    groups = torch.arange(len(rows)) // block
    return leave_one_out(rows, groups, reference, METRICS)


def decisive(a: dict, b: dict, metric: str, level: float) -> bool:
    d = a[metric][0] - b[metric][0]
    loo = (a[metric][1] - b[metric][1]).tolist()
    if d == 0.0 and max(loo) == min(loo):  # identical values (class accuracy at 1.0)
        return False
    interval = jackknife_interval(d, loo, level, bias_corrected=metric in SMOOTH_METRICS)
    return verdict_of(interval) != "within noise"


def indicator_check(first, reference, args, gen: torch.Generator) -> tuple[dict, str]:
    """Precision's and class accuracy's unpaired A/A rate at 95% over many redraws of the same
    pool (their per-sample 0/1 outcomes: the rule is the t-test on block means), beside the same
    t-test on simulated Bernoulli blocks with the pool's rates."""
    from calguide.metrics.prdc import knn_radii

    real = torch.as_tensor(reference["features"]).float()
    fake = first.features.float()
    inside = (torch.cdist(fake, real) <= knn_radii(real, 3).unsqueeze(0)).any(1).double()
    outcomes = {"precision": inside, "class_acc": first.correct.double()}
    n, groups = args.samples, args.samples // args.block

    def decisive_means(a: torch.Tensor, b: torch.Tensor) -> bool:
        d = (a - b).reshape(groups, args.block).mean(1)
        loo = ((d.sum() - d) / (groups - 1)).tolist()
        interval = jackknife_interval(float(d.mean()), loo, 0.95, bias_corrected=False)
        return verdict_of(interval) != "within noise"

    found: dict = {}
    for name, values in outcomes.items():
        hits = simulated = 0
        rate = float(values.mean())
        for _ in range(args.indicator_repeats):
            chosen = torch.randperm(len(values), generator=gen)[: 2 * n]
            a = values[torch.sort(chosen[:n]).values]
            b = values[torch.sort(chosen[n:]).values]
            hits += decisive_means(a, b)
            sa = (torch.rand(n, generator=gen) < rate).double()
            sb = (torch.rand(n, generator=gen) < rate).double()
            simulated += decisive_means(sa, sb)
        found[name] = {
            "pool_rate": rate,
            "pool": {"decisive": hits, "cp": clopper_pearson(hits, args.indicator_repeats)},
            "bernoulli": {
                "decisive": simulated,
                "cp": clopper_pearson(simulated, args.indicator_repeats),
            },
        }
    lines = [
        f"Precision and class accuracy (0/1 outcomes per sample), unpaired A/A at 95%, "
        f"{args.indicator_repeats} redraws of two disjoint {n}-sample rows from pool seed "
        f"{args.seed} ({args.block}-sample blocks), beside Bernoulli blocks with the pool's rate:",
        "",
        "| metric | pool rate | decisive, pool redraws | decisive, Bernoulli blocks |",
        "| :-- | --: | --: | --: |",
    ]
    for name, e in found.items():
        cells = []
        for key in ("pool", "bernoulli"):
            lo, hi = e[key]["cp"]
            share = 100 * e[key]["decisive"] / args.indicator_repeats
            cells.append(f"{share:.2f}% [{100 * lo:.2f}, {100 * hi:.2f}]")
        lines.append(f"| {name} | {e['pool_rate']:.3f} | {cells[0]} | {cells[1]} |")
    return found, "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1000)
    parser.add_argument("--pool", type=int, default=4800, help="samples per pool")
    parser.add_argument("--samples", type=int, default=480, help="samples per row")
    parser.add_argument("--block", type=int, default=20)
    parser.add_argument("--seed", type=int, default=2000)
    parser.add_argument("--experiment", default="digits_miniature")
    parser.add_argument("--indicator-repeats", type=int, default=4000)
    parser.add_argument("--indicators-only", action="store_true")
    parser.add_argument("--work", type=Path, default=Path("logs/verdict-calibration"))
    parser.add_argument("--out", type=Path, default=Path("docs/calibration"))
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for both pools")
    args = parser.parse_args(argv)
    if 2 * args.samples > args.pool:
        raise SystemExit("--pool must hold at least two rows of --samples")
    work = args.work.resolve()
    started = time.perf_counter()
    claims = len(compose_spec("sample", [f"experiment={args.experiment}"]).experiment["claims"])
    table_level = per_claim_level(claims)
    first = read_eval_features(pool(args.seed, args.pool, work, args))
    second = read_eval_features(pool(args.seed + 1, args.pool, work, args))
    if first.reference_file != second.reference_file:
        raise SystemExit("the two pools were evaluated against different references")
    if not torch.equal(first.labels, second.labels):
        raise SystemExit("the pools' labels differ by index: balanced labels were expected")
    reference = load_reference_file(first.reference_file)
    pooled = time.perf_counter() - started
    gen = torch.Generator().manual_seed(args.seed)
    found, text = indicator_check(first, reference, args, torch.Generator().manual_seed(args.seed))
    atomic_write_report(args.out, "verdict_calibration_indicators", found, text)
    print(text)
    if args.indicators_only:
        return 0
    counts = {
        (arm, m, lvl): 0
        for arm in ("unpaired", "paired by label")
        for m in METRICS
        for lvl in ("95", "table")
    }
    n = args.samples
    for rep in range(args.repeats):
        chosen = torch.randperm(args.pool, generator=gen)[: 2 * n]
        pos_a, pos_b = torch.sort(chosen[:n]).values, torch.sort(chosen[n:]).values
        a = judged(first.take(pos_a), reference, args.block)
        arms = {
            "unpaired": judged(first.take(pos_b), reference, args.block),
            "paired by label": judged(second.take(pos_a), reference, args.block),
        }
        for arm, b in arms.items():
            for m in METRICS:
                counts[(arm, m, "95")] += decisive(a, b, m, 0.95)
                counts[(arm, m, "table")] += decisive(a, b, m, table_level)
        if (rep + 1) % 100 == 0:
            print(f"  {rep + 1} repeats ({time.perf_counter() - started:.0f} s)", flush=True)
    took = time.perf_counter() - started
    results = []
    for (arm, m, lvl), hits in counts.items():
        lo, hi = clopper_pearson(hits, args.repeats)
        results.append(
            {"arm": arm, "metric": m, "level": lvl, "decisive": hits, "repeats": args.repeats,
             "rate": hits / args.repeats, "cp_lo": lo, "cp_hi": hi}
        )  # fmt: skip
    groups = n // args.block
    stated = 100 * (1 - table_level)
    lines = [
        f"A/A at the miniature's design (`python experiments/verdict_calibration.py "
        f"{' '.join(argv if argv is not None else sys.argv[1:])}`): {args.repeats} repeats, "
        f"{n} samples per row in {groups} blocks of {args.block} (t on {groups - 1} df, "
        f"critical {critical_value(0.95, groups - 1):.2f} at 95% and "
        f"{critical_value(table_level, groups - 1):.2f} at the table's level 1 − 0.05/{claims}), "
        f"two pools of {args.pool} samples of the miniature's EluCD row (seeds {args.seed}, "
        f"{args.seed + 1}); pools {pooled / 60:.1f} min, in all {took / 60:.1f} min on this "
        "machine. Decisive rates with Clopper–Pearson 95% intervals (repeats share the pools; "
        "the intervals treat them as independent).",
        "",
        "| metric | unpaired, at 95% (stated ≤ 5%) | unpaired, at the table's level "
        f"(stated ≤ {stated:.2f}%) | paired by label, at 95% | paired by label, table level |",
        "| :-- | --: | --: | --: | --: |",
    ]
    by = {(e["arm"], e["metric"], e["level"]): e for e in results}

    def cell(e: dict) -> str:
        bounds = f"[{100 * e['cp_lo']:.2f}, {100 * e['cp_hi']:.2f}]"
        return f"{e['decisive']}/{e['repeats']} = {100 * e['rate']:.1f}% {bounds}"

    for m in METRICS:
        lines.append(
            f"| {m} | {cell(by[('unpaired', m, '95')])} | {cell(by[('unpaired', m, 'table')])} "
            f"| {cell(by[('paired by label', m, '95')])} | "
            f"{cell(by[('paired by label', m, 'table')])} |"
        )
    text = "\n".join(lines) + "\n"
    atomic_write_report(
        args.out,
        "verdict_calibration",
        {
            "claims": claims,
            "table_level": table_level,
            "design": vars(args) | {"work": str(work), "out": str(args.out)},
            "results": results,
        },
        text,
    )
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
