"""The sampling job behind ``calguide-sample``: build, predict into shards, merge, report."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from calguide.builders import loggers_from
from calguide.callbacks import log_image
from calguide.config import job_config
from calguide.denoiser import load_denoiser
from calguide.diffusion import GaussianDiffusion
from calguide.guidance import GuidanceClassifier, build_schedule, build_strategy, make_guidance
from calguide.io import atomic_write_text
from calguide.metrics.callback import GenerativeMetrics
from calguide.metrics.setup import evaluate_samples, metrics_callback
from calguide.nets.classifiers import load_classifier
from calguide.sampling.diagnostics import plot_diagnostics, save_snapshots, write_diagnostics_csv
from calguide.sampling.grid import save_image_grid
from calguide.sampling.labels import LabelDataModule
from calguide.sampling.module import SamplingModule
from calguide.sampling.requirements import check_required_files
from calguide.sampling.writer import ShardWriter, merge_shards, save_npz, written_indices

# Config sections whose values change the samples (batch size only for batch-level strategies).
IDENTITY_SECTIONS = ("data", "denoiser", "diffusion", "classifier", "guidance")
IDENTITY_SAMPLING_KEYS = ("num_samples", "labels", "fixed_class", "precision", "noise")


def run_identity(cfg: DictConfig, batch_dependent: bool) -> str:
    """A short hash of everything that determines the samples: the output folder's suffix, so
    a rerun of the same command resumes and any change of a knob starts a fresh folder."""
    ident = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in IDENTITY_SECTIONS}
    ident["sampling"] = {k: cfg.sampling.get(k) for k in IDENTITY_SAMPLING_KEYS}
    if ident["sampling"]["noise"] in (None, "per_sample"):  # the default keeps older hashes
        del ident["sampling"]["noise"]
    ident["seed"] = int(cfg.seed)
    if batch_dependent:
        ident["batch_size"] = int(cfg.sampling.batch_size)
    blob = json.dumps(ident, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:8]


def output_dir(cfg: DictConfig, batch_dependent: bool) -> Path:
    if cfg.sampling.out_dir:
        return Path(cfg.sampling.out_dir)
    name = (
        f"{cfg.denoiser.name}-{cfg.classifier.name if cfg.guidance.name != 'none' else 'noclf'}"
        f"-{cfg.guidance.name}-s{cfg.guidance.scale:g}-seed{cfg.seed}"
        f"-{run_identity(cfg, batch_dependent)}"
    )
    return Path(cfg.paths.artifacts) / cfg.data.name / "samples" / name


def denoiser_from(cfg: DictConfig) -> tuple[torch.nn.Module, dict[str, Any]]:
    path = (
        cfg.denoiser.checkpoint
        or f"{cfg.paths.artifacts}/{cfg.data.name}/{cfg.denoiser.name}/denoiser.pt"
    )
    flags = OmegaConf.to_container(cfg.denoiser.flags, resolve=True)
    net, meta = load_denoiser(path, flags=flags, what=f"denoiser '{cfg.denoiser.name}'")
    return net, meta


def guidance_from(cfg: DictConfig, denoise_fn) -> Any:
    spec = cfg.guidance
    strategy = build_strategy(spec.name, **OmegaConf.to_container(spec.params, resolve=True))
    if not strategy.is_active:
        return None, {}
    clf_spec = cfg.classifier
    classifier, meta = load_classifier(
        clf_spec.checkpoint,
        arch=clf_spec.arch,
        params=OmegaConf.to_container(clf_spec.params, resolve=True),
        normalize=clf_spec.normalize,
        input_size=clf_spec.input_size,
        what=f"guidance classifier '{clf_spec.name}'",
    )
    temperature = float(meta.get("temperature", 1.0)) * float(spec.temperature)
    wrapped = GuidanceClassifier(
        classifier,
        input_mode="noisy" if classifier.noise_aware else "x0",
        temperature=temperature,
        softplus_beta=clf_spec.softplus_beta,
        through_denoiser=bool(spec.through_denoiser),
    )
    schedule = build_schedule(
        spec.schedule, spec.scale, **OmegaConf.to_container(spec.schedule_params, resolve=True)
    )
    hook = make_guidance(
        wrapped, strategy, schedule, int(cfg.diffusion.steps), denoise_fn=denoise_fn
    )
    return hook, meta


def classifier_smece(meta: dict[str, Any]) -> float | None:
    """The guidance classifier's held-out smECE (mean over its noisy buckets) as recorded at
    export by ``calguide-calibrate``; None for published weights, which carry no record."""
    buckets = (meta.get("meta") or {}).get("metrics") or {}
    values = [float(v["smece"]) for k, v in buckets.items() if k != "clean" and "smece" in v]
    return sum(values) / len(values) if values else None


def run_sampling(cfg: DictConfig) -> dict[str, Any]:
    check_required_files(cfg)
    L.seed_everything(cfg.seed, workers=True)
    denoiser, meta = denoiser_from(cfg)
    flags = meta["flags"]
    settings = {**OmegaConf.to_container(cfg.diffusion, resolve=True), **meta.get("diffusion", {})}
    build = dict(
        steps=int(settings["steps"]),
        schedule=str(settings["schedule"]),
        learn_sigma=bool(flags.get("learn_sigma", False)),
        sigma_small=bool(settings.get("sigma_small", False)),
    )
    chain = GaussianDiffusion.from_config(respacing=str(cfg.diffusion.respacing), **build)
    base = GaussianDiffusion.from_config(**build)
    class_cond = bool(flags.get("class_cond", False))

    def denoise_fn(x_t: torch.Tensor, t_model: torch.Tensor) -> torch.Tensor:
        # x̂₀(x_t) with gradients, for through_denoiser guidance (not clipped: clipping would
        # zero the gradient of saturated pixels).
        labels = guidance.labels if class_cond else None
        out = denoiser(x_t, t_model, labels).float()
        eps, _ = base.split_output(out, x_t)
        return base.predict_x0_from_eps(x_t, t_model, eps)

    guidance, clf_meta = guidance_from(cfg, denoise_fn)
    batch_dependent = bool(getattr(guidance, "batch_dependent", False))
    out_dir = output_dir(cfg, batch_dependent)
    shard_dir = out_dir / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        OmegaConf.to_yaml(job_config(cfg)),
        out_dir / "config.yaml",
    )

    num_classes = int(flags.get("num_classes") or cfg.data.num_classes)
    sample_shape = (
        int(flags.get("in_channels", 3)),
        int(flags["image_size"]),
        int(flags["image_size"]),
    )
    module = SamplingModule(
        denoiser,
        chain,
        sample_shape=sample_shape,
        class_cond=class_cond,
        guidance=guidance,
        sampler=cfg.diffusion.sampler,
        eta=cfg.diffusion.eta,
        clip_denoised=cfg.diffusion.clip_denoised,
        seed=cfg.seed,
        precision=str(cfg.sampling.precision),
        snapshot_timesteps=tuple(cfg.sampling.snapshot_timesteps),
        snapshot_count=int(cfg.sampling.snapshot_count),
        progress=bool(cfg.sampling.progress),
        noise=str(cfg.sampling.noise),
        channels_last=bool(cfg.sampling.channels_last),
        compile=bool(cfg.sampling.compile),
    )
    datamodule = LabelDataModule(
        cfg.sampling.num_samples,
        num_classes,
        batch_size=cfg.sampling.batch_size,
        protocol=cfg.sampling.labels,
        seed=cfg.seed,
        fixed_class=cfg.sampling.fixed_class,
        done=lambda: written_indices(shard_dir),
    )
    writer = ShardWriter(shard_dir)
    metrics = metrics_callback(cfg, out_dir)
    already = len(written_indices(shard_dir))
    if already:
        print(f"calguide: resuming {out_dir}: {already} of {cfg.sampling.num_samples} samples done")
    # Streaming metrics only see this process's batches: after a resume they are computed from
    # the merged set instead (see finish).
    streaming = [metrics] if metrics is not None and not already else []
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        callbacks=[writer, *streaming],
        logger=loggers_from(cfg) or False,
        use_distributed_sampler=False,
    )
    trainer.predict(module, datamodule=datamodule, return_predictions=False)
    trainer.strategy.barrier()
    if not trainer.is_global_zero:
        return {}
    return finish(
        cfg,
        trainer,
        out_dir,
        writer,
        num_classes,
        metrics,
        resumed=bool(already),
        classifier_meta=clf_meta,
    )


def finish(
    cfg: DictConfig,
    trainer: L.Trainer,
    out_dir: Path,
    writer: ShardWriter,
    num_classes: int,
    metrics: GenerativeMetrics | None,
    *,
    resumed: bool,
    classifier_meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    merged = merge_shards(out_dir / "shards", int(cfg.sampling.num_samples))
    npz = save_npz(out_dir / "samples.npz", arr_0=merged["images"], arr_1=merged["labels"])
    grid = save_image_grid(
        torch.from_numpy(grid_selection(merged["images"], merged["labels"], num_classes, 10)),
        out_dir / "grid.png",
        ncols=10,
        upscale=4 if merged["images"].shape[1] <= 64 else 1,
    )
    log_image(trainer, "samples/grid", grid, f"{cfg.guidance.name} scale {cfg.guidance.scale}")
    record: dict[str, Any] = {
        "samples": str(npz),
        "grid": str(grid),
        "num_samples": int(merged["images"].shape[0]),
        "guidance": cfg.guidance.name,
        "scale": float(cfg.guidance.scale),
        "classifier": cfg.classifier.checkpoint if cfg.guidance.name != "none" else None,
        "temperature": float(cfg.guidance.temperature),
        "seed": int(cfg.seed),
        "out_dir": str(out_dir),
        "classifier_smece": classifier_smece(classifier_meta or {}),
        # The resolved job config, so a multirun folder can be aggregated from these files alone.
        "config": job_config(cfg),
    }
    if record["classifier_smece"] is not None:
        for logger in trainer.loggers:
            logger.log_metrics({"classifier_smece": record["classifier_smece"]})
    if metrics is not None:
        if resumed:
            metrics.results = evaluate_samples(
                metrics,
                merged["images"],
                merged["labels"],
                output_dir=out_dir,
                device=trainer.strategy.root_device,
            )
            for logger in trainer.loggers:
                logger.log_metrics(
                    {k: v for k, v in metrics.results.items() if isinstance(v, (int, float))}
                )
        record["metrics"] = metrics.results
        print("calguide: metrics " + json.dumps(metrics.results))
    if merged["diagnostics"]:
        record["diagnostics_csv"] = str(
            write_diagnostics_csv(merged["diagnostics"], out_dir / "diagnostics.csv")
        )
        curves = plot_diagnostics(
            {f"{cfg.guidance.name} s={cfg.guidance.scale:g}": merged["diagnostics"]},
            out_dir / "diagnostics.png",
        )
        log_image(trainer, "diagnostics/curves", curves)
        record["diagnostics_png"] = str(curves)
    if writer.snapshots:
        steps: dict[int, dict[str, torch.Tensor]] = {}
        for part in writer.snapshots:
            for t, tensors in part["steps"].items():
                entry = steps.setdefault(t, {"pred_x0": [], "grad": []})
                entry["pred_x0"].append(tensors["pred_x0"])
                entry["grad"].append(tensors["grad"])
        stacked = {t: {k: torch.cat(v) for k, v in e.items()} for t, e in steps.items()}
        snap = save_snapshots(stacked, out_dir / "snapshots.png")
        if snap is not None:
            record["snapshots_png"] = str(snap)
    text = json.dumps(record, indent=2)
    atomic_write_text(text, out_dir / "sampling.json")
    # Also in Hydra's run folder, where multirun aggregation looks for it.
    atomic_write_text(text, Path(cfg.paths.output_dir) / "sampling.json")
    print(f"calguide: {record['num_samples']} samples -> {npz}\ncalguide: grid -> {grid}")
    return record


def grid_selection(
    images: np.ndarray, labels: np.ndarray, num_classes: int, per_class: int
) -> np.ndarray:
    """Up to ``per_class`` samples of each class (first ones by index), one row per class; at
    most 10 classes (the first ones) so ImageNet grids stay readable."""
    rows = []
    for c in range(min(num_classes, 10)):
        chosen = images[labels == c][:per_class]
        if len(chosen) == 0:
            continue
        if len(chosen) < per_class:
            pad = np.full((per_class - len(chosen), *images.shape[1:]), 255, dtype=np.uint8)
            chosen = np.concatenate([chosen, pad])
        rows.append(chosen)
    return np.concatenate(rows) if rows else images[:per_class]
