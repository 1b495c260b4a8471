"""How much of the guidance shift a few-step DPM-Solver++ keeps, against the same solver converged.

    python experiments/guidance_retention.py                      # writes docs/few_step/retention.*
    python experiments/guidance_retention.py --grids G.json --out D   # another checkout: the
                                                                   # same grids (before/after)

**Toys** (1-D data N(0, 0.5²) with its exact ε, float64, x̂₀ unclipped): the mean of the output
is the guidance shift (unguided it is 0, and the chain is linear in x_T and the step noise, so
x_T = 0 with zero step noise gives the mean exactly, for the ODE and the SDE).
- *x̂₀ gradient*: a constant x̂₀-space gradient g = 1 at s = 1, applied to x_t as EluCD applies
  it, with a constant schedule and with EluCD's additive schedule (γ = 0.3);
- *linear-Gaussian*: the noise-aware classifier of log p(y|x₀) = b·x₀ (b = 1), whose guided
  target at scale s is exactly N(s·b·0.25, 0.25): its x_t gradient is b·α·v/(α²v + σ²).
**Lab** (the Gaussian mixture of ``calguide-lab``, its exact noise-aware classifier): every
strategy at s = 1 and 3, the per-class mean displacement guided − unguided (same seed),
projected on the converged displacement (the same solver on 250 steps uniform in log-SNR,
``logsnr250:6``, where the step's second-order error is ~1e-3 of the toys').

Retention = shift at N NFE / shift of the same solver converged (every base step down to the
grid's end). Grids: uniform in log-SNR down to log-SNR 6 (``logsnrN:6``). The DDPM chain at 250
and 1000 steps is given beside the toys' converged values: the SDE converges to it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

from calguide.diffusion import GaussianDiffusion
from calguide.diffusion.samplers import build_sampler, sample_loop
from calguide.diffusion.schedules import beta_schedule, respace_betas, space_timesteps
from calguide.guidance.schedules import elucd_extra_variance
from calguide.io import atomic_write_report

NFES = (5, 10, 20, 40)
SOLVERS = {"ODE": "dpmpp_2m", "SDE": "dpmpp_2m_sde"}
VARIANCE = 0.25  # the toys' data variance
BASE_BETAS = beta_schedule("linear", 1000)
BASE = torch.cumprod(1.0 - BASE_BETAS, 0)
LAB_STRATEGIES = ("vanilla", "tilted", "entropy", "rkl", "fkl", "js", "hellinger")


def grids() -> dict[str, list[int]]:
    """Kept base timesteps: logsnrN:6 for every NFE, and the converged grid (every base step
    from the noisiest down to that grid's least noisy one)."""
    found = {str(n): space_timesteps(1000, f"logsnr{n}:6", BASE) for n in NFES}
    found["converged"] = list(range(found[str(NFES[0])][0], 1000))
    found["converged-lab"] = space_timesteps(1000, "logsnr250:6", BASE)
    found["ddpm250"] = space_timesteps(1000, "250")
    found["ddpm1000"] = list(range(1000))
    return found


def chain(kept: list[int]) -> GaussianDiffusion:
    betas, timestep_map = respace_betas(BASE_BETAS, kept)
    return GaussianDiffusion(betas, timestep_map=timestep_map, base_betas=BASE_BETAS)


def exact_eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    a = BASE[t].to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
    return (1 - a).sqrt() * x / (a * VARIANCE + 1 - a)


class XZeroGradient:
    """A constant x̂₀-space gradient (s·g = scale), optionally with EluCD's additive schedule."""

    space = "x0"

    def __init__(self, scale: float, additive: bool) -> None:
        self.scale, self.adds_variance = scale, additive

    def __call__(self, x_t, pred_x0, t):
        return torch.full_like(x_t, self.scale)

    def extra_variance(self, index, num_steps, variance_max):
        return elucd_extra_variance(index, num_steps, variance_max) if self.adds_variance else None


class LinearGaussian:
    """s·∇ log p(y|x_t) for log p(y|x₀) = x₀ and data N(0, v): exact guided target N(s·v, v)."""

    space = "x_t"
    adds_variance = False

    def __init__(self, scale: float) -> None:
        self.scale = scale

    def __call__(self, x_t, pred_x0, t):
        a = BASE[t].to(x_t.dtype).reshape(-1, *([1] * (x_t.dim() - 1)))
        return self.scale * a.sqrt() * VARIANCE / (a * VARIANCE + 1 - a) * torch.ones_like(x_t)

    def extra_variance(self, index, num_steps, variance_max):
        return None


def toy_shift(kept: list[int], sampler: str, guidance) -> float:
    x_T = torch.zeros(1, 1, dtype=torch.float64)
    out = sample_loop(
        chain(kept),
        exact_eps,
        x_T,
        sampler=sampler,
        guidance=guidance,
        clip_denoised=False,
        noise_fn=lambda i, x: torch.zeros_like(x),
    )
    return float(out.reshape(-1)[0])


TOYS = {
    "x̂₀ gradient, constant schedule": lambda: XZeroGradient(1.0, additive=False),
    "x̂₀ gradient, EluCD schedule": lambda: XZeroGradient(1.0, additive=True),
    "linear-Gaussian s=1": lambda: LinearGaussian(1.0),
    "linear-Gaussian s=3": lambda: LinearGaussian(3.0),
}


def toy_part(kept: dict[str, list[int]]) -> dict:
    rows = {}
    for toy, make in TOYS.items():
        ddpm = {steps: toy_shift(kept[steps], "ddpm", make()) for steps in ("ddpm250", "ddpm1000")}
        for label, sampler in SOLVERS.items():
            converged = toy_shift(kept["converged"], sampler, make())
            row = {"converged": converged, **ddpm}
            for n in NFES:
                row[str(n)] = toy_shift(kept[str(n)], sampler, make()) / converged
            rows[f"{toy} | {label}"] = row
    return rows


def lab_part(kept: dict[str, list[int]], seeds: int, samples: int) -> dict:
    from calguide.config import compose_spec
    from calguide.config.lab import guidance_config
    from calguide.data.gmm import mixture_from_config
    from calguide.jobs.lab import build_classifiers, chains, sample_run

    rows: dict[str, dict[str, list[float]]] = {}
    overrides = [
        "diffusion.clip_denoised=false",
        f"lab.num_samples={samples}",
        "~lab.classifiers.overconfident",
        "~lab.classifiers.mlp_ce",
        "~lab.classifiers.mlp_smece",
    ]
    for seed in range(seeds):
        spec = compose_spec("lab", [*overrides, f"seed={seed}"])
        mixture = mixture_from_config(spec.lab.mixture.get("components") or [])
        base, _ = chains(spec)
        classifier = build_classifiers(spec, mixture, base)["exact"]
        sampler_spec = {}
        for label, sampler in SOLVERS.items():
            sampler_spec[label] = compose_spec(
                "lab", [*overrides, f"seed={seed}", f"diffusion.sampler={sampler}"]
            )
        for label in SOLVERS:
            s = sampler_spec[label]
            shifts = {}
            for key in ("converged-lab", *map(str, NFES)):
                sampling_chain = chain(kept[key])
                unguided, labels, _ = sample_run(
                    s, mixture, base, sampling_chain, None, guidance_config("none")
                )
                for strategy in LAB_STRATEGIES:
                    for scale in (1.0, 3.0):
                        run = guidance_config(strategy, scale=scale)
                        guided, _, _ = sample_run(s, mixture, base, sampling_chain, classifier, run)
                        per_class = torch.stack(
                            [
                                (guided - unguided)[labels == c].mean(0)
                                for c in range(mixture.num_classes)
                            ]
                        )
                        shifts[(key, strategy, scale)] = per_class
            for strategy in LAB_STRATEGIES:
                for scale in (1.0, 3.0):
                    ref = shifts[("converged-lab", strategy, scale)]
                    for n in NFES:
                        got = shifts[(str(n), strategy, scale)]
                        value = float((got * ref).sum() / (ref * ref).sum())
                        name = f"{strategy} s={scale:g} | {label}"
                        rows.setdefault(name, {}).setdefault(str(n), []).append(value)
        print(f"  lab seed {seed} done", flush=True)
    return rows


def weight_table() -> dict[str, float]:
    """Mean and range of EluCD's w(t) = 1 + a(t)/Σ(t) over the base chain, per reference chain."""
    out = {}
    probe = XZeroGradient(1.0, additive=True)
    for steps in (20, 100, 250, 1000):
        sampler = build_sampler("dpmpp_2m", reference_steps=steps)
        full = chain(list(range(1000)))
        x = torch.zeros(1, 1, dtype=torch.float64)
        running, values = None, []
        for t in range(999, -1, -1):
            w, running = sampler.guidance_weight(full, probe, None, x, torch.tensor([t]), running)
            values.append(float(w.reshape(-1)[0]))
        out[str(steps)] = {"mean": statistics.fmean(values), "max": max(values)}
    return out


def markdown(result: dict, label: str) -> str:
    lines = [
        f"Guidance retention ({label}): the shift at N NFE over the same solver's converged "
        "shift (every base step to log-SNR 6); grids logsnrN:6.",
        "",
        "| case | solver | converged shift | DDPM 250 | DDPM 1000 | "
        + " | ".join(f"{n} NFE" for n in NFES)
        + " |",
        "| :-- | :-- | --: | --: | --: | " + " | ".join("--:" for _ in NFES) + " |",
    ]
    for name, row in result["toys"].items():
        case, solver = name.split(" | ")
        cells = " | ".join(f"{100 * row[str(n)]:.2f}%" for n in NFES)
        lines.append(
            f"| {case} | {solver} | {row['converged']:.4f} | {row['ddpm250']:.4f} | "
            f"{row['ddpm1000']:.4f} | {cells} |"
        )
    if result.get("lab"):
        lines += [
            "",
            f"Lab, exact classifier, {result['lab_seeds']} seeds × "
            f"{result['lab_samples']} samples: the per-class mean displacement (guided − "
            "unguided) projected on the converged one (the same solver on logsnr250:6), "
            "mean ± sd over the seeds.",
            "",
            "| run | solver | " + " | ".join(f"{n} NFE" for n in NFES) + " |",
            "| :-- | :-- | " + " | ".join("--:" for _ in NFES) + " |",
        ]
        for name, row in result["lab"].items():
            run, solver = name.split(" | ")
            cells = []
            for n in NFES:
                vals = row[str(n)]
                sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
                cells.append(f"{100 * statistics.fmean(vals):.1f}% ± {100 * sd:.1f}")
            lines.append(f"| {run} | {solver} | " + " | ".join(cells) + " |")
    if result.get("weights"):
        lines += [
            "",
            "EluCD's weight w(t) = 1 + a(t)/Σ(t) over the 1000 base steps, per reference "
            "chain (`reference_steps`):",
            "",
            "| reference steps | mean w | max w |",
            "| --: | --: | --: |",
        ]
        for steps, w in result["weights"].items():
            lines.append(f"| {steps} | {w['mean']:.3f} | {w['max']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grids", type=Path, help="kept timesteps from another run (JSON)")
    parser.add_argument("--out", type=Path, default=Path("docs/few_step"))
    parser.add_argument("--name", default="retention")
    parser.add_argument("--label", default="after: δ integrated against its kernel")
    parser.add_argument("--lab-seeds", type=int, default=5)
    parser.add_argument("--lab-samples", type=int, default=2400)
    parser.add_argument("--no-lab", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    started = time.perf_counter()
    kept = json.loads(args.grids.read_text()) if args.grids else grids()
    result = {"grids": kept, "toys": toy_part(kept)}
    if not args.no_lab:
        result["lab"] = lab_part(kept, args.lab_seeds, args.lab_samples)
        result["lab_seeds"], result["lab_samples"] = args.lab_seeds, args.lab_samples
    with contextlib.suppress(TypeError):  # an older checkout's guidance_weight signature
        result["weights"] = weight_table()
    result["seconds"] = time.perf_counter() - started
    args.out.mkdir(parents=True, exist_ok=True)
    text = markdown(result, args.label)
    atomic_write_report(args.out, args.name, result, text)
    print(text)
    print(f"{result['seconds']:.0f} s")
    return 0 if math.isfinite(result["seconds"]) else 1


if __name__ == "__main__":
    sys.exit(main())
