"""Few-step DPM-Solver++ against the 250-step DDPM chain: equivalence verdicts on digits, the lab.

    python experiments/few_step_validation.py --part digits    # ~1 h on a 2-core CPU
    python experiments/few_step_validation.py --part lab       # ~5 min
    python experiments/few_step_validation.py                  # both; writes docs/few_step/

**Digits** (the miniature's setting: unconditional denoiser, the bundled clean ResNet on x̂₀
with EluCD's score and additive schedule, scale 0.7; ``--samples`` per row, 1,920 by default,
random labels, seed 0 for every row, so every row shares each sample index's label and x_T):
rows none, vanilla (EluCD's recipe), JS and RKL with ``diffusion=dpmpp_sde`` at 10, 15, 20 and
25 NFE (``logsnrN:6``, the options' grid family), unguided also with ``diffusion=dpmpp`` (and
at 100 NFE, where the ODE has converged), each against DDPM at 250 steps
(``diffusion=adm250``). "Few-step equals DDPM-250" is an equivalence claim: the paired,
bias-corrected jackknife interval of the FID difference (blocks of 20 sample indices) must lie
inside ±δ, two one-sided tests with a 5% error rate shared by the table's
claims (calguide.verdicts, docs/verdicts.md). The margins below were fixed before any run.
KID and class accuracy get their own tables of claims.

**Lab** (exact target): every strategy of ``calguide-lab``'s default runs with its exact
classifier, ``--lab-seeds`` seeds, the SDE and the ODE at 10, 15, 20 and 25 NFE and DDPM at 250
steps: mode TV, per-class energy distance and log p(x|y) against the exact target; the paired
difference to DDPM 250 over the seeds (Student's interval) and an equivalence verdict on the
energy distance.
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
from calguide.verdicts import Settings, judge, row_interval

NFES = (10, 15, 20, 25)
REFERENCE = "ddpm 250"
DIGITS_ROWS = {
    "none": ["guidance=none"],
    "vanilla": ["guidance=vanilla", "guidance.scale=0.7"],
    "js": ["guidance=js", "guidance.scale=0.7"],
    "rkl": ["guidance=rkl", "guidance.scale=0.7"],
}
SOLVERS = {"dpmpp-sde": "dpmpp_sde", "dpmpp": "dpmpp"}  # label -> conf/diffusion option
ODE_ROWS = ("none",)  # a guided score is not a score: the ODE samples another distribution
ODE_CONVERGED = 100  # the ODE also at 100 NFE: where its own distribution lies
# Where the guided SDE converges, beside DDPM's own step count (no claims: a table):
CONVERGENCE_ROW = "vanilla"
CONVERGENCE = {"dpmpp-sde": (50, 100), "ddpm": (20, 50)}
# Equivalence margins, fixed before the runs (the goals): FID ±1, guided rows ±2 at 10
# NFE; KID ±0.03 (about FID ±1 at these values); class accuracy ±0.03.
FID_MARGIN = {
    "guided": {10: 2.0, 15: 1.0, 20: 1.0, 25: 1.0},
    "none": dict.fromkeys((*NFES, ODE_CONVERGED), 1.0),
}
KID_MARGIN = 0.03
ACC_MARGIN = 0.03
LAB_ENERGY_MARGIN = 0.01  # per-class energy distance (×10³: ±10)
LAB_METRICS = ("mode_tv", "energy", "log_density")


def digits_runs() -> dict[str, list[str]]:
    """Run name ("<row> | <sampler>") -> overrides."""
    runs = {}
    for row, r_over in DIGITS_ROWS.items():
        runs[f"{row} | {REFERENCE}"] = [*r_over, "diffusion=adm250"]
        for label, option in SOLVERS.items():
            if label == "dpmpp" and row not in ODE_ROWS:
                continue
            for n in NFES + ((ODE_CONVERGED,) if label == "dpmpp" else ()):
                runs[f"{row} | {label} {n}"] = [
                    *r_over,
                    f"diffusion={option}",
                    f"diffusion.respacing=logsnr{n}:6",
                ]
    return runs


def convergence_runs() -> dict[str, list[str]]:
    """EluCD's row with the SDE at more NFE and with DDPM at fewer steps."""
    r_over = DIGITS_ROWS[CONVERGENCE_ROW]
    runs = {}
    for n in CONVERGENCE["dpmpp-sde"]:
        grid = ["diffusion=dpmpp_sde", f"diffusion.respacing=logsnr{n}:6"]
        runs[f"{CONVERGENCE_ROW} | dpmpp-sde {n}"] = [*r_over, *grid]
    for n in CONVERGENCE["ddpm"]:
        grid = ["diffusion=adm250", f"diffusion.respacing={n}"]
        runs[f"{CONVERGENCE_ROW} | ddpm {n}"] = [*r_over, *grid]
    return runs


def folder_of(work: Path, name: str) -> Path:
    row, sampler = name.split(" | ")
    return work / "digits" / sampler.replace(" ", "").replace("-", "_") / row


def run_digits(work: Path, samples: int) -> tuple[dict[str, dict], dict[str, float]]:
    """Every run (a finished one, with its sampling.json, is read back): records and seconds."""
    from calguide.jobs.sample import run_sampling

    records, seconds = {}, {}
    for name, overrides in {**digits_runs(), **convergence_runs()}.items():
        folder = folder_of(work, name)
        if not (folder / "sampling.json").exists():
            spec = compose_spec(
                "sample",
                [
                    "experiment=digits_miniature",
                    "denoiser=unet_tiny_uncond",
                    *overrides,
                    "seed=0",
                    f"sampling.num_samples={samples}",
                    "sampling.progress=false",
                    "trainer.enable_progress_bar=false",
                ],
                output_dir=folder,
            )
            started = time.perf_counter()
            run_sampling(spec)
            seconds[name] = time.perf_counter() - started
            print(f"  digits {name}: {seconds[name]:.0f} s", flush=True)
        (records[name],) = collect_runs([folder])
    return records, seconds


def digits_claims(metric: str) -> list[dict]:
    claims = []
    for name in digits_runs():
        row, sampler = name.split(" | ")
        if sampler == REFERENCE:
            continue
        label, n = sampler.rsplit(" ", 1)
        if metric == "fid":
            margin = FID_MARGIN["none" if row == "none" else "guided"][int(n)]
        else:
            margin = KID_MARGIN if metric == "kid" else ACC_MARGIN
        option = SOLVERS[label]
        sampler_name = {"dpmpp_sde": "dpmpp_2m_sde", "dpmpp": "dpmpp_2m"}[option]
        claims.append(
            {
                "id": f"{row}_{label}_{n}_{metric}",
                "text": f"{row}: {label} at {n} NFE equals DDPM 250 within ±{margin:g} {metric}",
                "metric": metric,
                "margin": margin,
                "lower_is_better": metric != "class_acc",
                "a": {
                    "guidance.name": row,
                    "diffusion.sampler": sampler_name,
                    "diffusion.respacing": f"logsnr{n}:6",
                },
                "b": {
                    "guidance.name": row,
                    "diffusion.sampler": "ddpm",
                    "diffusion.respacing": "250",
                },
            }
        )
    return claims


def digits_part(work: Path, samples: int) -> tuple[str, dict]:
    records, seconds = run_digits(work, samples)
    settings = Settings(block_size=20)
    runs = [records[name] for name in digits_runs()]
    verdicts = {m: judge(runs, digits_claims(m), settings) for m in ("fid", "kid", "class_acc")}
    rows = {}
    for name, record in records.items():
        rows[name] = {
            m: _interval(row_interval([record], m, settings)) for m in ("fid", "kid", "class_acc")
        }
    fmt = {"fid": "{:+.2f}", "kid": "{:+.3f}", "class_acc": "{:+.3f}"}
    value_fmt = {"fid": "{:.2f}", "kid": "{:.3f}", "class_acc": "{:.3f}"}
    lines = [
        f"Digits, unconditional denoiser, EluCD's score and additive schedule at scale 0.7, "
        f"{samples} samples per row, random labels, seed 0 (every row shares each sample's "
        "label and x_T). Each row's value [95% jackknife interval]; the difference to DDPM 250 "
        "of the same row, paired and bias-corrected, with its equivalence interval (two "
        "one-sided tests, 5% error rate shared by the table's claims) and verdict.",
        "",
    ]
    for metric, judged in verdicts.items():
        level = judged[0].level if judged and judged[0].level else float("nan")
        lines += [
            f"**{metric.upper() if metric != 'class_acc' else 'class accuracy'}** "
            f"(interval level {100 * level:.2f}%)",
            "",
            "| row | sampler | value | DDPM 250 | difference [interval] | margin | verdict |",
            "| :-- | :-- | --: | --: | --: | --: | :-- |",
        ]
        for v in judged:
            row, label, n = v.claim.split("_")[0], v.claim.split("_")[1], v.claim.split("_")[2]
            name = f"{row} | {label} {n}"
            ref = rows[f"{row} | {REFERENCE}"][metric]
            own = rows[name][metric]
            f, vf = fmt[metric], value_fmt[metric]
            diff = (
                "—"
                if v.difference is None
                else (f"{f.format(v.difference)} [{f.format(v.lo)}, {f.format(v.hi)}]")
            )
            lines.append(
                f"| {row} | {label} {n} NFE | {vf.format(own['estimate'])} | "
                f"{vf.format(ref['estimate'])} | {diff} | ±{v.margin:g} | {v.verdict} |"
            )
        lines.append("")
    ref = f"{CONVERGENCE_ROW} | {REFERENCE}"
    lines += [
        f"**Convergence** of the {CONVERGENCE_ROW} row (EluCD's recipe): the guided SDE at more "
        "NFE and DDPM at fewer steps; each value [95% jackknife interval].",
        "",
        "| sampler | NFE | FID | class accuracy |",
        "| :-- | --: | --: | --: |",
    ]
    order = [f"{CONVERGENCE_ROW} | dpmpp-sde {n}" for n in (*NFES, *CONVERGENCE["dpmpp-sde"])]
    order += [f"{CONVERGENCE_ROW} | ddpm {n}" for n in CONVERGENCE["ddpm"]] + [ref]
    for name in order:
        cells = rows[name]
        sampler, n = name.split(" | ")[1].rsplit(" ", 1)
        lines.append(
            f"| {sampler} | {n} | {cells['fid']['estimate']:.2f} [{cells['fid']['lo']:.2f}, "
            f"{cells['fid']['hi']:.2f}] | {cells['class_acc']['estimate']:.3f} "
            f"[{cells['class_acc']['lo']:.3f}, {cells['class_acc']['hi']:.3f}] |"
        )
    lines.append("")
    walls = [f"{name}: {s:.0f} s" for name, s in seconds.items()]
    if walls:
        lines += ["Wall times (this machine): " + "; ".join(walls), ""]
    data = {
        "samples": samples,
        "rows": rows,
        "verdicts": {m: [v.__dict__ for v in vs] for m, vs in verdicts.items()},
        "seconds": seconds,
        "margins": {"fid": FID_MARGIN, "kid": KID_MARGIN, "class_acc": ACC_MARGIN},
    }
    return "\n".join(lines) + "\n", data


def _interval(interval) -> dict:
    if interval is None:
        return {"estimate": float("nan"), "lo": float("nan"), "hi": float("nan")}
    return {"estimate": interval.estimate, "lo": interval.lo, "hi": interval.hi}


def lab_part(seeds: int, work: Path) -> tuple[str, dict]:
    from calguide.jobs.lab import run_lab

    samplers = {REFERENCE: ["diffusion=adm250"]}
    for label, option in SOLVERS.items():
        for n in NFES:
            samplers[f"{label} {n}"] = [f"diffusion={option}", f"diffusion.respacing=logsnr{n}:6"]
    found: list[dict] = []
    seconds: dict[str, float] = {}
    for name, sampler in samplers.items():
        started = time.perf_counter()
        for seed in range(seeds):
            overrides = [
                *sampler,
                "diffusion.clip_denoised=false",
                f"seed={seed}",
                "~lab.classifiers.overconfident",
                "~lab.classifiers.mlp_ce",
                "~lab.classifiers.mlp_smece",
            ]
            folder = work / "lab" / name.replace(" ", "") / str(seed)
            record = run_lab(compose_spec("lab", overrides, output_dir=folder))
            for row in record["rows"]:
                run = (
                    row["guidance"]
                    if row["guidance"] == "none"
                    else (f"{row['guidance']} s={row['scale']:g}")
                )
                found.append(
                    {"sampler": name, "run": run, "seed": seed, **{m: row[m] for m in LAB_METRICS}}
                )
        seconds[name] = time.perf_counter() - started
        print(f"  lab {name}: {seconds[name]:.0f} s", flush=True)
    runs = sorted({r["run"] for r in found}, key=[r["run"] for r in found].index)
    claims = [
        {
            "id": f"{run} | {label} {n}",
            "metric": "energy",
            "margin": LAB_ENERGY_MARGIN,
            "text": f"{run}: {label} at {n} NFE equals DDPM 250 in energy "
            f"within ±{LAB_ENERGY_MARGIN}",
            "a": {"sampler": f"{label} {n}", "run": run},
            "b": {"sampler": REFERENCE, "run": run},
        }
        for run in runs
        for label in SOLVERS
        for n in (10, 20)
    ]
    verdicts = {v.claim: v for v in judge(found, claims, Settings())}
    lines = [
        f"Lab, exact classifier, {seeds} seeds: mean over the seeds of each metric; energy ×10³ "
        "with the paired difference to DDPM 250 [Student's interval over the seeds, level "
        f"{100 * next(iter(verdicts.values())).level:.2f}%] and its equivalence verdict "
        f"(±{LAB_ENERGY_MARGIN * 1e3:g} ×10³) at 10 and 20 NFE.",
        "",
        "| run | sampler | mode TV | energy ×10³ | log p(x|y) | energy − DDPM 250 | verdict |",
        "| :-- | :-- | --: | --: | --: | --: | :-- |",
    ]
    summary: dict = {"seeds": seeds, "seconds": seconds, "cells": {}, "verdicts": {}}
    for run in runs:
        for name in samplers:
            cell = {
                m: statistics.fmean(r[m] for r in found if r["run"] == run and r["sampler"] == name)
                for m in LAB_METRICS
            }
            summary["cells"][f"{run} | {name}"] = cell
            v = verdicts.get(f"{run} | {name}")
            diff, word = "", ""
            if v is not None and v.difference is not None:
                diff = f"{1e3 * v.difference:+.1f} [{1e3 * v.lo:+.1f}, {1e3 * v.hi:+.1f}]"
                word = v.verdict
                summary["verdicts"][f"{run} | {name}"] = v.__dict__
            lines.append(
                f"| {run} | {name} | {cell['mode_tv']:.3f} | {1e3 * cell['energy']:.1f} | "
                f"{cell['log_density']:.2f} | {diff} | {word} |"
            )
    return "\n".join(lines) + "\n", summary


def figure(data: dict, path: Path) -> Path:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.add_subplot()
    rows = data["rows"]
    for k, row in enumerate(DIGITS_ROWS):
        color = f"C{k}"
        for label, marker, shift in (("dpmpp-sde", "s", 0.25), ("dpmpp", "o", -0.25)):
            names = [f"{row} | {label} {n}" for n in NFES]
            if names[0] not in rows:
                continue
            ys = [rows[n]["fid"]["estimate"] for n in names]
            lo = [y - rows[n]["fid"]["lo"] for y, n in zip(ys, names)]
            hi = [rows[n]["fid"]["hi"] - y for y, n in zip(ys, names)]
            ax.errorbar(
                [n + shift for n in NFES],
                ys,
                yerr=[lo, hi],
                marker=marker,
                capsize=3,
                color=color,
                linestyle="-" if label == "dpmpp-sde" else ":",
                label=f"{row}: {label}",
            )
        ref = rows[f"{row} | {REFERENCE}"]["fid"]
        ax.axhline(ref["estimate"], color=color, linestyle="--", linewidth=1)
        ax.axhspan(ref["lo"], ref["hi"], color=color, alpha=0.08, linewidth=0)
    ax.set_xlabel("network evaluations (NFE); dashed: DDPM 250 with its 95% band")
    ax.set_ylabel(f"FID ({data['samples']} samples, 95% interval)")
    ax.set_title("digits: FID vs NFE (grid logsnrN:6), unconditional denoiser, scale 0.7")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="x-small", ncol=2)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("lab", "digits", "all"), default="all")
    parser.add_argument("--lab-seeds", type=int, default=5)
    parser.add_argument("--samples", type=int, default=1920)
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
        text, data = digits_part(work, args.samples)
        atomic_write_report(args.out, "digits", data, text)
        figure(data, args.out / "fid_vs_nfe.png")
        print(text)
    print(f"few-step validation: {(time.perf_counter() - started) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
