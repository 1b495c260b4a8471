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
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, TensorDataset

from calguide import assembly
from calguide.calibration.metrics import classification_metrics
from calguide.config import GuidanceConfig, checked, job_config
from calguide.data.gmm import GaussianMixture, mixture_from_config
from calguide.diffusion import GaussianDiffusion
from calguide.guidance import GuidanceClassifier
from calguide.io import atomic_write_json, atomic_write_text
from calguide.lab.evaluate import class_energy, evaluate_samples, exact_reference
from calguide.lab.figure import plot_lab_samples
from calguide.lab.plugins import ExactEpsModel, ExactPosterior
from calguide.modules.classifier import ClassifierModule
from calguide.modules.sampling import SamplingModule
from calguide.nets.classifiers import build_classifier
from calguide.sampling.diagnostics import plot_diagnostics

# Table columns: (key, header, format).
COLUMNS = (
    ("class_acc", "class acc", "{:.3f}"),
    ("mode_tv", "mode TV", "{:.3f}"),
    ("energy", "energy ×10³", "{:.2f}"),
    ("log_density", "log p(x|y)", "{:.2f}"),
    ("grad_high", "‖g‖ t≥700", "{:.3g}"),
    ("grad_mid", "‖g‖ 300≤t<700", "{:.3g}"),
)


def chains(cfg: DictConfig) -> tuple[GaussianDiffusion, GaussianDiffusion]:
    """(base chain, respaced sampling chain) from the ``diffusion`` group."""
    diffusion = checked(cfg).diffusion
    return (
        assembly.chain(diffusion, {}, respaced=False),
        assembly.chain(diffusion, {}),
    )


def train_mlp(
    mixture: GaussianMixture,
    base: GaussianDiffusion,
    spec: DictConfig,
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
    cfg: DictConfig, mixture: GaussianMixture, base: GaussianDiffusion
) -> dict[str, tuple[torch.nn.Module, float]]:
    """Name -> (noise-aware net, temperature τ_c) for every entry of ``lab.classifiers``."""
    built: dict[str, tuple[torch.nn.Module, float]] = {}
    for name, spec in cfg.lab.classifiers.items():
        temperature = float(spec.get("temperature", 1.0))
        if spec.kind == "exact":
            net: torch.nn.Module = ExactPosterior(mixture, base.alphas_cumprod)
        else:
            started = time.perf_counter()
            weight = float(spec.get("calibration_weight", 0.0))
            net = train_mlp(mixture, base, cfg.lab.mlp, weight, int(cfg.seed))
            print(f"calguide-lab: trained {name} in {time.perf_counter() - started:.1f} s")
        built[str(name)] = (net, temperature)
    return built


def sample_run(
    cfg: DictConfig,
    mixture: GaussianMixture,
    base: GaussianDiffusion,
    chain: GaussianDiffusion,
    classifier: tuple[torch.nn.Module, float] | None,
    spec: GuidanceConfig,
) -> tuple[torch.Tensor, torch.Tensor, dict[int, dict[str, float]]]:
    """(samples, target labels, per-timestep diagnostics) of one strategy and classifier."""
    guidance = None
    if spec.strategy_impl.is_active and classifier is not None:
        net, temperature = classifier
        wrapped = GuidanceClassifier(net, input_mode="noisy", temperature=temperature)
        guidance = assembly.guidance_with(spec, wrapped, base.num_timesteps)
    class_cond = bool(cfg.lab.class_cond)
    module = SamplingModule(
        ExactEpsModel(mixture, base.alphas_cumprod),
        chain,
        sample_shape=(mixture.dim,),
        class_cond=class_cond,
        guidance=guidance,
        sampler=assembly.sampler(checked(cfg).diffusion),
        clip_denoised=False,
        seed=int(cfg.seed),
        progress=False,
        as_images=False,
        noise="batch",
    )
    n = int(cfg.lab.num_samples)
    labels = torch.arange(n) % mixture.num_classes
    with torch.no_grad():
        out = module.predict_step({"indices": torch.arange(n), "labels": labels})
    return out["samples"], labels, out["diagnostics"]


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


def run_lab(cfg: DictConfig) -> dict[str, Any]:
    started = time.perf_counter()
    # Tensors here are tiny: extra threads only add synchronisation (and thrash a busy CPU).
    torch.set_num_threads(int(cfg.lab.threads))
    torch.manual_seed(int(cfg.seed))
    mixture = mixture_from_config(OmegaConf.to_container(cfg.lab.mixture.components, resolve=True))
    base, chain = chains(cfg)
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    classifiers = build_classifiers(cfg, mixture, base)
    calibration = {
        name: {
            "temperature": temperature,
            **noisy_calibration(
                net,
                temperature,
                mixture,
                base,
                points=int(cfg.lab.calibration_points),
                seed=int(cfg.seed) + 1,
            ),
        }
        for name, (net, temperature) in classifiers.items()
    }

    n = int(cfg.lab.num_samples)
    labels = torch.arange(n) % mixture.num_classes
    floor = class_energy(
        exact_reference(mixture, labels, seed=int(cfg.seed) + 2),
        exact_reference(mixture, labels, seed=int(cfg.seed) + 3),
        labels,
    )
    rows: list[dict[str, Any]] = []
    panels: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}
    diagnostics: dict[str, dict[str, dict[int, dict[str, float]]]] = {}
    runs = checked(cfg).lab.run_guidance
    for spec in runs:
        active = spec.strategy_impl.is_active
        targets = classifiers.items() if active else [("–", None)]
        for name, classifier in targets:
            x, y, diag = sample_run(cfg, mixture, base, chain, classifier, spec)
            label = spec.name if not active else f"{spec.name} s={spec.scale:g}"
            metrics = evaluate_samples(mixture, x, y, seed=int(cfg.seed) + 4)
            row = {
                "classifier": name,
                "guidance": spec.name,
                "scale": float(spec.scale),
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
            f"{chain.num_timesteps}-step {cfg.diffusion.sampler}; "
            f"{'class-conditional' if cfg.lab.class_cond else 'unconditional'} exact ε)",
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
        "config": job_config(cfg),
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
