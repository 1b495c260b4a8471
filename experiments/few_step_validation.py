"""DPM-Solver++(2M) against the 250-step DDPM chain: the Gaussian-mixture lab and digits.

    python experiments/few_step_validation.py --part lab       # ~2 min
    python experiments/few_step_validation.py --part digits    # ~12 min
    python experiments/few_step_validation.py                  # both; writes docs/few_step/

**Lab** (exact target): vanilla at scales 1 and 3, JS and RKL at 3, with the exact noise-aware
classifier, at 10, 15, 20 and 25 network evaluations and with DDPM at 250 steps, each on
``--lab-seeds`` seeds: mode TV, per-class energy distance and log p(x|y) against the exact
target. DDPM 250's noise band is its mean ± 2 sd over the seeds; a few-step value is "in" when
its mean lies in that band.

**Digits**: FID and KID (pooled samples, jackknife intervals over blocks of 20, as every
calguide verdict) of unguided sampling, EluCD (vanilla on EluCD's score, additive schedule)
and JS at the miniature's setting (unconditional denoiser, scale 0.7, 480 samples, seed 0), at
10, 15, 20 and 25 network evaluations and with DDPM at 100 and 250 steps. The figure plots FID
against NFE per strategy with DDPM's bands.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from calguide.config import compose_spec
from calguide.io import atomic_path, atomic_write_report
from calguide.tables.records import collect_runs
from calguide.verdicts import Settings, row_interval

NFES = (10, 15, 20, 25)
LAB_RUNS = (
    "[{guidance: none},{guidance: vanilla, scale: 1.0},{guidance: vanilla, scale: 3.0},"
    "{guidance: js, scale: 3.0},{guidance: rkl, scale: 3.0}]"
)
LAB_METRICS = ("mode_tv", "energy", "log_density")
DIGITS_ROWS = {
    "none": ["guidance=none"],
    "vanilla": ["guidance=vanilla", "guidance.scale=0.7"],
    "js": ["guidance=js", "guidance.scale=0.7"],
}
SOLVERS = {"dpmpp": "dpmpp", "dpmpp-sde": "dpmpp_sde"}  # label -> conf/diffusion option
SAMPLERS = {
    **{
        f"{label} {n}": [f"diffusion={option}", f"diffusion.respacing='{n}'"]
        for label, option in SOLVERS.items()
        for n in NFES
    },
    "ddpm 100": ["diffusion.respacing='100'"],
    "ddpm 250": ["diffusion.respacing='250'"],
}


def lab_part(seeds: int, work: Path) -> tuple[str, dict]:
    from calguide.jobs.lab import run_lab

    found: dict[str, dict[str, list[dict]]] = {}
    lab_samplers = {k: v for k, v in SAMPLERS.items() if k != "ddpm 100"}
    for name, sampler in lab_samplers.items():
        for seed in range(seeds):
            overrides = [
                *sampler, "diffusion.clip_denoised=false",  # the mixture is unbounded
                f"seed={seed}", f"lab.runs={LAB_RUNS}", "~lab.classifiers.overconfident",
                "~lab.classifiers.mlp_ce", "~lab.classifiers.mlp_smece",
            ]  # fmt: skip
            folder = work / "lab" / name.replace(" ", "") / str(seed)
            spec = compose_spec("lab", overrides, output_dir=folder)
            started = time.perf_counter()
            record = run_lab(spec)
            print(f"  lab {name} seed {seed}: {time.perf_counter() - started:.0f} s", flush=True)
            for row in record["rows"]:
                label = row["guidance"] if row["guidance"] == "none" else (
                    f"{row['guidance']} s={row['scale']:g}")  # fmt: skip
                found.setdefault(label, {}).setdefault(name, []).append(row)
    lines = [
        f"Lab, exact classifier, {seeds} seeds each: mean ± sd over the seeds; DDPM 250's band "
        "is its mean ± 2 sd; ✓ = the few-step mean lies in it; 'in band from': the NFE from "
        "which it stays in.",
        "",
        "| run | metric | DDPM 250 | solver | "
        + " | ".join(f"{n} NFE" for n in NFES)
        + " | in band from |",
        "| :-- | :-- | --: | :-- | " + " | ".join("--:" for _ in NFES) + " | :-- |",
    ]
    summary: dict = {}
    for label, per in found.items():
        for metric in LAB_METRICS:
            scale = 1e3 if metric == "energy" else 1.0
            ref = [r[metric] * scale for r in per["ddpm 250"]]
            lo = statistics.fmean(ref) - 2 * statistics.stdev(ref)
            hi = statistics.fmean(ref) + 2 * statistics.stdev(ref)
            name = "energy ×10³" if metric == "energy" else metric
            ref_text = f"{statistics.fmean(ref):.3f} ± {statistics.stdev(ref):.3f}"
            for solver in SOLVERS:
                cells, first_in = [], None
                for n in NFES:
                    vals = [r[metric] * scale for r in per[f"{solver} {n}"]]
                    mean = statistics.fmean(vals)
                    inside = lo <= mean <= hi
                    if inside and first_in is None:
                        first_in = n
                    if not inside:
                        first_in = None  # must stay in from there on
                    mark = " ✓" if inside else ""
                    cells.append(f"{mean:.3f} ± {statistics.stdev(vals):.3f}{mark}")
                entered = f"{first_in} NFE" if first_in else "not by 25"
                lines.append(
                    f"| {label} | {name} | {ref_text} | {solver} | "
                    + " | ".join(cells)
                    + f" | {entered} |"
                )
                summary[f"{label} {metric} {solver}"] = {"band": [lo, hi], "enters_at": first_in}
    return "\n".join(lines) + "\n", summary


def digits_part(work: Path, samples: int) -> tuple[str, dict, dict]:
    from calguide.jobs.sample import run_sampling

    settings = Settings(block_size=20)
    table: dict[str, dict[str, dict]] = {}
    timings: dict[str, float] = {}
    for sampler, s_over in SAMPLERS.items():
        for row, r_over in DIGITS_ROWS.items():
            folder = work / "digits" / sampler.replace(" ", "") / row
            spec = compose_spec(
                "sample",
                ["experiment=digits_miniature", "denoiser=unet_tiny_uncond", *r_over, *s_over,
                 "seed=0", f"sampling.num_samples={samples}", "sampling.progress=false",
                 "trainer.enable_progress_bar=false"],
                output_dir=folder,
            )  # fmt: skip
            started = time.perf_counter()
            run_sampling(spec)
            took = time.perf_counter() - started
            timings[f"{sampler} {row}"] = took
            (record,) = collect_runs([folder])
            table.setdefault(row, {})[sampler] = {
                m: _interval(row_interval([record], m, settings)) for m in ("fid", "kid")
            }
            fid = table[row][sampler]["fid"]["estimate"]
            print(f"  digits {sampler:9} {row:8}: FID {fid:.2f} ({took:.0f} s)", flush=True)
    lines = [
        f"Digits, unconditional denoiser, scale 0.7 (EluCD's score and additive schedule), "
        f"{samples} samples, seed 0 for every row (the same noise): the metric of the pooled "
        "samples [95% jackknife interval, 24 blocks of 20].",
        "",
        "| row | metric | " + " | ".join(SAMPLERS) + " |",
        "| :-- | :-- | " + " | ".join("--:" for _ in SAMPLERS) + " |",
    ]
    for row, per in table.items():
        for metric in ("fid", "kid"):
            cells = []
            for sampler in SAMPLERS:
                v = per[sampler][metric]
                fmt = "{:.2f}" if metric == "fid" else "{:.3f}"
                cells.append(
                    f"{fmt.format(v['estimate'])} [{fmt.format(v['lo'])}, {fmt.format(v['hi'])}]"
                )
            lines.append(f"| {row} | {metric.upper()} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n", table, timings


def _interval(interval) -> dict:
    return {"estimate": interval.estimate, "lo": interval.lo, "hi": interval.hi}


def figure(table: dict, path: Path) -> Path:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.add_subplot()
    for k, (row, per) in enumerate(table.items()):
        color = f"C{k}"
        for solver, marker, shift in (("dpmpp", "o", -0.3), ("dpmpp-sde", "s", 0.3)):
            xs = [n + shift for n in NFES]
            ys = [per[f"{solver} {n}"]["fid"]["estimate"] for n in NFES]
            lo = [per[f"{solver} {n}"]["fid"]["lo"] for n in NFES]
            hi = [per[f"{solver} {n}"]["fid"]["hi"] for n in NFES]
            ax.errorbar(
                xs, ys, yerr=[[y - a for y, a in zip(ys, lo)], [b - y for y, b in zip(ys, hi)]],
                marker=marker, capsize=3, color=color, label=f"{row}: {solver}",
                linestyle="-" if solver == "dpmpp" else "-.",
            )  # fmt: skip
        for steps, style in ((250, "--"), (100, ":")):
            ref = per[f"ddpm {steps}"]["fid"]
            ax.axhline(ref["estimate"], color=color, linestyle=style, linewidth=1,
                       label=f"{row}: DDPM {steps}")  # fmt: skip
            if steps == 250:
                ax.axhspan(ref["lo"], ref["hi"], color=color, alpha=0.08, linewidth=0)
    ax.set_xlabel("network evaluations (NFE)")
    ax.set_ylabel("FID (480 samples, 95% interval)")
    ax.set_title("digits: FID vs NFE, unconditional denoiser, scale 0.7")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="x-small", ncol=2)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("lab", "digits", "all"), default="all")
    parser.add_argument("--lab-seeds", type=int, default=5)
    parser.add_argument("--samples", type=int, default=480)
    parser.add_argument("--work", type=Path, default=Path("logs/few-step"))
    parser.add_argument("--out", type=Path, default=Path("docs/few_step"))
    args = parser.parse_args(argv)
    work = args.work.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if args.part in ("lab", "all"):
        text, summary = lab_part(args.lab_seeds, work)
        atomic_write_report(args.out, "lab", summary, text)
        print(text)
    if args.part in ("digits", "all"):
        text, table, timings = digits_part(work, args.samples)
        atomic_write_report(args.out, "digits", {"table": table, "seconds": timings}, text)
        figure(table, args.out / "fid_vs_nfe.png")
        print(text)
    print(f"few-step validation: {(time.perf_counter() - started) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
