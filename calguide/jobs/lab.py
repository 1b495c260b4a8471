"""The lab job behind ``calguide-lab``: every strategy × classifier against the exact target.

Samples come from the same :class:`SamplingModule` and guidance hook as images, with the
mixture's exact ε as the denoiser. Classifiers: the exact posterior at temperature τ_c (τ_c < 1
is overconfident) and small MLPs trained by :class:`ClassifierModule` with CE or CE + λ·Smooth ECE
(the paper's Huber-style loss).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from calguide import assembly
from calguide.calibration.metrics import classification_metrics
from calguide.config.lab import LabMLPConfig, LabSpec
from calguide.config.sample import GuidanceConfig
from calguide.data.gmm import GaussianMixture, mixture_from_config
from calguide.diffusion import GaussianDiffusion
from calguide.io import atomic_write_json, atomic_write_text
from calguide.jobs.records import chain_words
from calguide.lab.evaluate import class_energy, evaluate_samples, exact_reference
from calguide.lab.figure import plot_lab_samples
from calguide.lab.plugins import ExactEpsModel, ExactPosterior
from calguide.modules.classifier import ClassifierModule
from calguide.modules.sampling import SamplingModule
from calguide.nets.classifiers import build_classifier
from calguide.samples.diagnostics import plot_diagnostics

# Table columns: (key, header, format).
COLUMNS = (
    ("class_acc", "class acc", "{:.3f}"),
    ("mode_tv", "mode TV", "{:.3f}"),
    ("energy", "energy ×10³", "{:.2f}"),
    ("log_density", "log p(x|y)", "{:.2f}"),
    ("grad_high", "‖g‖ t≥700", "{:.3g}"),
    ("grad_mid", "‖g‖ 300≤t<700", "{:.3g}"),
)


def chains(spec: LabSpec) -> tuple[GaussianDiffusion, GaussianDiffusion]:
    """(base chain, respaced sampling chain) from the ``diffusion`` group."""
    return (
        assembly.chain(spec.diffusion, {}, respaced=False),
        assembly.chain(spec.diffusion, {}),
    )


def train_mlp(
    mixture: GaussianMixture,
    base: GaussianDiffusion,
    spec: LabMLPConfig,
    calibration_weight: float,
    seed: int,
) -> torch.nn.Module:
    """A noise-aware MLP fitted by ClassifierModule (``inputs.mode=noisy``) on a finite sample.

    The loss is CE + ``calibration_weight``·L_ECE with the paper's smooth ECE at its defaults
    (binned form, β = 1e-4, 15 bins); weight 0 is plain cross-entropy.
    """
    L.seed_everything(seed, workers=False, verbose=False)
    classifier = build_classifier(
        "noisy_mlp",
        {
            "in_dim": mixture.dim,
            "num_classes": mixture.num_classes,
            "width": int(spec.width),
            "depth": int(spec.depth),
        },
    )
    module = ClassifierModule(
        classifier,
        base,
        mode="noisy",
        loss="smooth_ece",
        weight=float(calibration_weight),
        lr=float(spec.lr),
        weight_decay=float(spec.weight_decay),
    )
    x, y, _ = mixture.sample(int(spec.train_size), generator=torch.Generator().manual_seed(seed))
    loader = DataLoader(
        TensorDataset(x, y), batch_size=int(spec.batch_size), shuffle=True, drop_last=True
    )
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=int(spec.steps),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(module, loader)
    return classifier.eval()


def noisy_calibration(
    net: torch.nn.Module,
    temperature: float,
    mixture: GaussianMixture,
    base: GaussianDiffusion,
    *,
    points: int,
    seed: int,
) -> dict[str, float]:
    """Accuracy / ECE / smECE of p(y | x_t) on fresh points, t ~ U{0..T−1}, and at t ≥ 700."""
    generator = torch.Generator().manual_seed(seed)
    x0, y, _ = mixture.sample(points, generator=generator)
    t = torch.randint(0, base.num_timesteps, (points,), generator=generator)
    x_t = base.q_sample(x0, t, torch.randn(x0.shape, generator=generator))
    with torch.no_grad():
        logits = net(x_t, t).float() / temperature
    every = classification_metrics(logits, y)
    high = t >= int(0.7 * base.num_timesteps)
    noisy = classification_metrics(logits[high], y[high])
    return {
        "acc": every["acc"],
        "ece": every["ece"],
        "smece": every["smece"],
        "smece_high": noisy["smece"],
        "confidence_high": noisy["confidence"],
        "acc_high": noisy["acc"],
    }


def build_classifiers(
    spec: LabSpec, mixture: GaussianMixture, base: GaussianDiffusion
) -> dict[str, tuple[torch.nn.Module, float]]:
    """Name -> (noise-aware net, temperature τ_c) for every entry of ``lab.classifiers``."""
    built: dict[str, tuple[torch.nn.Module, float]] = {}
    for name, entry in spec.lab.classifiers.items():
        temperature = float(entry.get("temperature", 1.0))
        if entry["kind"] == "exact":
            net: torch.nn.Module = ExactPosterior(mixture, base.alphas_cumprod)
        else:
            started = time.perf_counter()
            weight = float(entry.get("calibration_weight", 0.0))
            net = train_mlp(mixture, base, spec.lab.mlp, weight, spec.seed)
            print(f"calguide-lab: trained {name} in {time.perf_counter() - started:.1f} s")
        built[str(name)] = (net, temperature)
    return built


def lab_module(
    spec: LabSpec,
    mixture: GaussianMixture,
    base: GaussianDiffusion,
    chain: GaussianDiffusion,
    guidance: Any = None,
) -> SamplingModule:
    """The sampling module of one lab run: the mixture's exact ε as the denoiser."""
    return SamplingModule(
        ExactEpsModel(mixture, base.alphas_cumprod),
        chain,
        sample_shape=(mixture.dim,),
        class_cond=bool(spec.lab.class_cond),
        guidance=guidance,
        sampler=assembly.sampler(spec.diffusion),
        clip_denoised=spec.diffusion.clip_denoised,
        seed=spec.seed,
        progress=False,
        as_images=False,
        noise="batch",
    )


def sample_run(
    spec: LabSpec,
    mixture: GaussianMixture,
    base: GaussianDiffusion,
    chain: GaussianDiffusion,
    classifier: tuple[torch.nn.Module, float] | None,
    run: GuidanceConfig,
) -> tuple[torch.Tensor, torch.Tensor, dict[int, dict[str, float]]]:
    """(samples, target labels, per-timestep diagnostics) of one strategy and classifier."""
    guidance = None
    if run.active and classifier is not None:
        net, temperature = classifier
        guidance = assembly.guidance_of(
            run, net, input_mode="noisy", temperature=temperature, num_timesteps=base.num_timesteps
        )
    module = lab_module(spec, mixture, base, chain, guidance)
    n = spec.lab.num_samples
    labels = torch.arange(n) % mixture.num_classes
    with torch.no_grad():
        out = module.predict_step({"indices": torch.arange(n), "labels": labels})
    return out["samples"], labels, out["diagnostics"]


def lab_line(spec: LabSpec, chain_record: dict[str, Any], classifiers: list[str]) -> str:
    """The first line of a lab run: the chain, the runs and classifiers, samples, device, seed."""
    names = ", ".join(classifiers)
    denoiser = "class-conditional" if spec.lab.class_cond else "unconditional"
    return (
        f"calguide-lab: {chain_words(chain_record)} · {len(spec.runs)} runs × "
        f"{len(classifiers)} classifiers ({names}) · {spec.lab.num_samples} samples · "
        f"{denoiser} exact ε · cpu, {spec.lab.threads} thread(s) · seed {spec.seed}"
    )


def gradient_summary(diagnostics: dict[int, dict[str, float]], num_timesteps: int) -> dict:
    """Mean unscaled ‖g‖ over the high-noise (t ≥ 0.7T) and mid (0.3T ≤ t < 0.7T) steps."""

    def mean_over(lo: float, hi: float) -> float | None:
        values = [
            d["grad_norm"]
            for t, d in diagnostics.items()
            if lo * num_timesteps <= t < hi * num_timesteps
        ]
        return sum(values) / len(values) if values else None

    return {"grad_high": mean_over(0.7, 2.0), "grad_mid": mean_over(0.3, 0.7)}


def _cell(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return fmt.format(value)


def results_table(rows: list[dict[str, Any]], floor: float) -> str:
    header = "| classifier | guidance | scale | " + " | ".join(h for _, h, _ in COLUMNS) + " |"
    lines = [header, "|" + " --- |" * (len(COLUMNS) + 3)]
    lines.append(
        "| exact samples | – | – | 1.000* | 0.000* | "
        f"{_cell(floor * 1e3, '{:.2f}')} (floor) | – | – | – |"
    )
    for row in rows:
        cells = []
        for key, _, fmt in COLUMNS:
            value = row.get(key)
            if key == "energy" and value is not None:
                value *= 1e3
            cells.append(_cell(value, fmt))
        scale = "–" if row["guidance"] == "none" else f"{row['scale']:g}"
        lines.append(
            f"| {row['classifier']} | {row['guidance']} | {scale} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines)


def calibration_table(calibration: dict[str, dict[str, float]]) -> str:
    lines = [
        "| classifier | τ_c | acc | ECE | smECE | smECE t≥700 | confidence t≥700 | acc t≥700 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, c in calibration.items():
        lines.append(
            f"| {name} | {c['temperature']:g} | {c['acc']:.3f} | {c['ece']:.3f} | "
            f"{c['smece']:.3f} | {c['smece_high']:.3f} | {c['confidence_high']:.3f} | "
            f"{c['acc_high']:.3f} |"
        )
    return "\n".join(lines)


def run_lab(spec: LabSpec) -> dict[str, Any]:
    """Every run of ``lab.runs`` × every guidance classifier against the exact target."""
    started = time.perf_counter()
    # Tensors here are tiny: extra threads only add synchronisation (and thrash a busy CPU).
    torch.set_num_threads(spec.lab.threads)
    torch.manual_seed(spec.seed)
    mixture = mixture_from_config(spec.lab.mixture.get("components") or [])
    base, chain = chains(spec)
    out_dir = Path(spec.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    chain_record = {
        "respacing": spec.diffusion.respacing,
        **lab_module(spec, mixture, base, chain).describe(),
    }
    print(lab_line(spec, chain_record, list(spec.lab.classifiers)), flush=True)

    classifiers = build_classifiers(spec, mixture, base)
    calibration = {
        name: {
            "temperature": temperature,
            **noisy_calibration(
                net,
                temperature,
                mixture,
                base,
                points=spec.lab.calibration_points,
                seed=spec.seed + 1,
            ),
        }
        for name, (net, temperature) in classifiers.items()
    }

    n = spec.lab.num_samples
    labels = torch.arange(n) % mixture.num_classes
    floor = class_energy(
        exact_reference(mixture, labels, seed=spec.seed + 2),
        exact_reference(mixture, labels, seed=spec.seed + 3),
        labels,
    )
    rows: list[dict[str, Any]] = []
    panels: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}
    diagnostics: dict[str, dict[str, dict[int, dict[str, float]]]] = {}
    for run in spec.runs:
        active = run.active
        targets = classifiers.items() if active else [("–", None)]
        for name, classifier in targets:
            x, y, diag = sample_run(spec, mixture, base, chain, classifier, run)
            label = run.name if not active else f"{run.name} s={run.scale:g}"
            metrics = evaluate_samples(mixture, x, y, seed=spec.seed + 4)
            row = {
                "classifier": name,
                "guidance": run.name,
                "scale": float(run.scale),
                **metrics,
                **gradient_summary(diag, base.num_timesteps),
            }
            rows.append(row)
            for panel_row in classifiers if not active else [name]:
                panels.setdefault(panel_row, {})[label] = (x, y)
            if diag:
                diagnostics.setdefault(name, {})[label] = diag
            print(
                f"calguide-lab: {name:>14} {label:<18} acc {metrics['class_acc']:.3f} "
                f"mode TV {metrics['mode_tv']:.3f} energy×10³ {metrics['energy'] * 1e3:.2f}"
            )

    figure = plot_lab_samples(mixture, panels, out_dir / "samples.png")
    curves = {}
    for name, per_run in diagnostics.items():
        curves[name] = str(
            plot_diagnostics(
                per_run, out_dir / f"diagnostics_{name}.png", title=f"lab: classifier {name}"
            )
        )
    text = "\n\n".join(
        [
            "**Guidance classifiers** (noisy points, t ~ U{0..999}; exact labels)",
            calibration_table(calibration),
            f"**Strategies** ({n} samples, balanced over {mixture.num_classes} classes; "
            f"{chain.num_timesteps}-step {spec.diffusion.sampler}; "
            f"{'class-conditional' if spec.lab.class_cond else 'unconditional'} exact ε)",
            results_table(rows, floor),
            "*by construction. energy: per-class energy distance to exact p(x|y) samples; "
            "floor: two exact sample sets of the same size. mode TV: total variation between "
            "the samples' component shares and the true within-class weights.",
        ]
    )
    elapsed = time.perf_counter() - started
    record = {
        "rows": rows,
        "calibration": calibration,
        "energy_floor": floor,
        "figure": str(figure),
        "diagnostics": curves,
        "seconds": elapsed,
        "run": chain_record,
        "config": spec.config,
    }
    atomic_write_text(text + "\n", out_dir / "lab.md")
    atomic_write_json(record, out_dir / "lab.json")
    print(text)
    print(f"\ncalguide-lab: {len(rows)} runs in {elapsed:.1f} s")
    print(f"calguide-lab: table   -> {out_dir / 'lab.md'}")
    print(f"calguide-lab: figure  -> {figure}")
    for path in curves.values():
        print(f"calguide-lab: curves  -> {path}")
    return record
