"""Which grid for DPM-Solver++: an exact Gaussian's spread, unguided digits and the lab, per grid.

    python experiments/few_step_grids.py          # ~5 min on a 2-core CPU; docs/few_step/grids.*

Grids (every one of N base timesteps, N network evaluations): ``"N"`` uniform in time (the
options' old default, which keeps base step 0), ``logsnrN`` uniform in log-SNR over the whole
chain (to step 0), ``logsnrN:6`` and ``logsnrN:5`` uniform in log-SNR down to log-SNR 6 or 5,
then the first-order jump to the data.

- **Gaussian**: data N(0, 0.5²) per coordinate with its exact ε, 1,000,000 samples, float64, x̂₀
  unclipped, through ``sample_loop`` with the registered samplers: the output's std over 0.5
  (sampling error ±0.07%). DDPM at 100 and 250 steps for reference.
- **Digits**: unguided, the unconditional denoiser, 480 samples, seed 0: FID with its 95%
  jackknife interval (blocks of 20), DDPM 250 beside it.
- **Lab**: unguided, the mixture's exact ε, 8,000 samples × 5 seeds: energy distance to as many
  exact draws (mean ± sd).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch

from calguide.diffusion import GaussianDiffusion
from calguide.diffusion.samplers import largest_logsnr_step, sample_loop
from calguide.diffusion.schedules import beta_schedule, respace_betas, space_timesteps
from calguide.io import atomic_write_report

NFES = (10, 15, 20, 25)
GRIDS = {
    "time-uniform": "{n}",
    "logsnr (to step 0)": "logsnr{n}",
    "logsnr to 6": "logsnr{n}:6",
    "logsnr to 5": "logsnr{n}:5",
}
SOLVERS = {"ODE": "dpmpp_2m", "SDE": "dpmpp_2m_sde"}
BASE_BETAS = beta_schedule("linear", 1000)
BASE = torch.cumprod(1.0 - BASE_BETAS, 0)
VARIANCE = 0.25


def chain(respacing: str) -> GaussianDiffusion:
    kept = space_timesteps(1000, respacing, BASE)
    betas, timestep_map = respace_betas(BASE_BETAS, kept)
    return GaussianDiffusion(betas, timestep_map=timestep_map, base_betas=BASE_BETAS)


def exact_eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    a = BASE[t].to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
    return (1 - a).sqrt() * x / (a * VARIANCE + 1 - a)


def std_ratio(respacing: str, sampler: str, samples: int) -> float:
    gen = torch.Generator().manual_seed(0)
    x_T = torch.randn(samples, 1, generator=gen, dtype=torch.float64)
    out = sample_loop(
        chain(respacing),
        exact_eps,
        x_T,
        sampler=sampler,
        clip_denoised=False,
        noise_fn=lambda i, x: torch.randn(x.shape, generator=gen, dtype=x.dtype),
    )
    return float(out.std()) / math.sqrt(VARIANCE)


def gaussian_part(samples: int) -> tuple[list[str], dict]:
    import warnings

    rows, lines = (
        {},
        [
            f"**Exact Gaussian** N(0, 0.5²), {samples:,} samples, float64: output std / 0.5 "
            "(largest grid interval h in λ = log(α/σ) in brackets).",
            "",
            "| grid | solver | " + " | ".join(f"{n} NFE" for n in NFES) + " |",
            "| :-- | :-- | " + " | ".join("--:" for _ in NFES) + " |",
        ],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the time-uniform grid's warning is the point here
        for grid, pattern in GRIDS.items():
            for label, sampler in SOLVERS.items():
                cells = []
                for n in NFES:
                    respacing = pattern.format(n=n)
                    ratio = std_ratio(respacing, sampler, samples)
                    h = largest_logsnr_step(chain(respacing))[0]
                    rows[f"{grid} | {label} | {n}"] = {"ratio": ratio, "largest_h": h}
                    cells.append(f"{ratio:.3f} ({h:.2f})")
                lines.append(f"| {grid} | {label} | " + " | ".join(cells) + " |")
        for steps in ("100", "250"):
            ratio = std_ratio(steps, "ddpm", samples)
            rows[f"ddpm {steps}"] = {"ratio": ratio}
            lines.append(f"| DDPM {steps} steps | ancestral | {ratio:.3f} | | | |")
    return lines, rows


def digits_part(work: Path, samples: int) -> tuple[list[str], dict]:
    from calguide.config import compose_spec
    from calguide.jobs.sample import run_sampling
    from calguide.tables.records import collect_runs
    from calguide.verdicts import Settings, row_interval

    runs = {
        f"{grid} | {label} | {n}": [
            "diffusion=" + ("dpmpp" if label == "ODE" else "dpmpp_sde"),
            f"diffusion.respacing={pattern.format(n=n)}",
        ]
        for grid, pattern in GRIDS.items()
        for label in SOLVERS
        for n in (10, 20)
    }
    runs["ddpm 250"] = ["diffusion=adm250"]
    rows, settings = {}, Settings(block_size=20)
    for name, overrides in runs.items():
        folder = work / "grids" / name.replace(" | ", "_").replace(" ", "-").replace("(", "")
        folder = Path(str(folder).replace(")", ""))
        if not (folder / "sampling.json").exists():
            spec = compose_spec(
                "sample",
                [
                    "experiment=digits_miniature",
                    "denoiser=unet_tiny_uncond",
                    "guidance=none",
                    *overrides,
                    "seed=0",
                    f"sampling.num_samples={samples}",
                    "sampling.progress=false",
                    "trainer.enable_progress_bar=false",
                ],
                output_dir=folder,
            )
            run_sampling(spec)
        (record,) = collect_runs([folder])
        interval = row_interval([record], "fid", settings)
        rows[name] = {"fid": interval.estimate, "lo": interval.lo, "hi": interval.hi}
        print(f"  digits {name}: FID {interval.estimate:.2f}", flush=True)
    ref = rows["ddpm 250"]
    lines = [
        f"**Digits**, unguided, unconditional denoiser, {samples} samples, seed 0: FID [95% "
        f"jackknife interval]; DDPM 250: {ref['fid']:.2f} [{ref['lo']:.2f}, {ref['hi']:.2f}].",
        "",
        "| grid | solver | 10 NFE | 20 NFE |",
        "| :-- | :-- | --: | --: |",
    ]
    for grid in GRIDS:
        for label in SOLVERS:
            cells = [rows[f"{grid} | {label} | {n}"] for n in (10, 20)]
            lines.append(
                f"| {grid} | {label} | "
                + " | ".join(f"{c['fid']:.2f} [{c['lo']:.2f}, {c['hi']:.2f}]" for c in cells)
                + " |"
            )
    return lines, rows


def lab_part(seeds: int, samples: int) -> tuple[list[str], dict]:
    """Unguided samples of the lab's mixture from its exact ε: energy distance to as many exact
    draws (unconditional; the lab's own metrics are per class, for guided rows)."""
    from calguide.config import compose_spec
    from calguide.data.gmm import mixture_from_config
    from calguide.lab.evaluate import energy_distance
    from calguide.lab.plugins import ExactEpsModel

    spec = compose_spec("lab", ["diffusion.clip_denoised=false"])
    mixture = mixture_from_config(spec.lab.mixture.get("components") or [])
    model = ExactEpsModel(mixture, BASE.float())

    def energy(respacing: str, sampler: str, seed: int) -> float:
        gen = torch.Generator().manual_seed(seed)
        x_T = torch.randn(samples, mixture.dim, generator=gen)
        with torch.no_grad():
            x = sample_loop(
                chain(respacing),
                model,
                x_T,
                sampler=sampler,
                clip_denoised=False,
                noise_fn=lambda i, x: torch.randn(x.shape, generator=gen),
            )
        exact, _, _ = mixture.sample(
            samples, generator=torch.Generator().manual_seed(10_000 + seed)
        )
        return 1e3 * energy_distance(x, exact)

    rows: dict[str, list[float]] = {}
    lines = [
        f"**Lab**, unguided, the mixture's exact ε, {samples} samples × {seeds} seeds: energy "
        "distance ×10³ to as many exact draws (0 in expectation for exact samples), mean ± sd "
        "over the seeds.",
        "",
        "| grid | solver | 10 NFE | 20 NFE |",
        "| :-- | :-- | --: | --: |",
    ]
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for grid, pattern in GRIDS.items():
            for label, sampler in SOLVERS.items():
                cells = []
                for n in (10, 20):
                    values = [energy(pattern.format(n=n), sampler, s) for s in range(seeds)]
                    rows[f"{grid} | {label} | {n}"] = values
                    cells.append(f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f}")
                lines.append(f"| {grid} | {label} | " + " | ".join(cells) + " |")
        for steps in ("100", "250"):
            values = [energy(steps, "ddpm", s) for s in range(seeds)]
            rows[f"ddpm {steps}"] = values
            lines.append(
                f"| DDPM {steps} steps | ancestral | {statistics.fmean(values):.2f} ± "
                f"{statistics.stdev(values):.2f} | |"
            )
    return lines, rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1_000_000)
    parser.add_argument("--digits-samples", type=int, default=480)
    parser.add_argument("--lab-seeds", type=int, default=5)
    parser.add_argument("--lab-samples", type=int, default=8000)
    parser.add_argument("--parts", default="gaussian,digits,lab")
    parser.add_argument("--work", type=Path, default=Path("logs/few-step"))
    parser.add_argument("--out", type=Path, default=Path("docs/few_step"))
    args = parser.parse_args(argv)
    started = time.perf_counter()
    parts = args.parts.split(",")
    lines, data = [], {}
    if "gaussian" in parts:
        text, data["gaussian"] = gaussian_part(args.samples)
        lines += [*text, ""]
    if "digits" in parts:
        text, data["digits"] = digits_part(args.work.resolve(), args.digits_samples)
        lines += [*text, ""]
    if "lab" in parts:
        text, data["lab"] = lab_part(args.lab_seeds, args.lab_samples)
        lines += [*text, ""]
    data["seconds"] = time.perf_counter() - started
    atomic_write_report(args.out, "grids", data, "\n".join(lines))
    print("\n".join(lines))
    print(f"{data['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
