"""The sampling job behind ``calguide-sample``: build, predict into shards, merge, report."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from calguide import assembly
from calguide.config import is_guided, job_config
from calguide.io import atomic_write_text, log_image
from calguide.metrics.callback import GenerativeMetrics
from calguide.metrics.evaluate import evaluate_samples
from calguide.sampling.diagnostics import plot_diagnostics, save_snapshots, write_diagnostics_csv
from calguide.sampling.grid import save_image_grid
from calguide.sampling.labels import LabelDataModule
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
        f"{cfg.denoiser.name}-{cfg.classifier.name if is_guided(cfg) else 'noclf'}"
        f"-{cfg.guidance.name}-s{cfg.guidance.scale:g}-seed{cfg.seed}"
        f"-{run_identity(cfg, batch_dependent)}"
    )
    return Path(cfg.paths.artifacts) / cfg.data.name / "samples" / name


def classifier_smece(meta: dict[str, Any]) -> float | None:
    """The guidance classifier's held-out smECE (mean over its noisy buckets) as recorded at
    export by ``calguide-calibrate``; None for published weights, which carry no record."""
    buckets = (meta.get("meta") or {}).get("metrics") or {}
    values = [float(v["smece"]) for k, v in buckets.items() if k != "clean" and "smece" in v]
    return sum(values) / len(values) if values else None


def run_sampling(cfg: DictConfig) -> dict[str, Any]:
    check_required_files(cfg)
    L.seed_everything(cfg.seed, workers=True)
    setup = assembly.sampling_setup(cfg)
    out_dir = output_dir(cfg, setup.batch_dependent)
    shard_dir = out_dir / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        OmegaConf.to_yaml(job_config(cfg)),
        out_dir / "config.yaml",
    )
    datamodule = LabelDataModule(
        cfg.sampling.num_samples,
        setup.num_classes,
        batch_size=cfg.sampling.batch_size,
        protocol=cfg.sampling.labels,
        seed=cfg.seed,
        fixed_class=cfg.sampling.fixed_class,
        done=lambda: written_indices(shard_dir),
    )
    writer = ShardWriter(shard_dir)
    metrics = assembly.metrics_callback(cfg, out_dir)
    already = len(written_indices(shard_dir))
    if already:
        print(f"calguide: resuming {out_dir}: {already} of {cfg.sampling.num_samples} samples done")
    # Streaming metrics only see this process's batches: after a resume they are computed from
    # the merged set instead (see finish).
    streaming = [metrics] if metrics is not None and not already else []
    trainer: L.Trainer = assembly.trainer(
        cfg, callbacks=[writer, *streaming], use_distributed_sampler=False
    )
    trainer.predict(setup.module, datamodule=datamodule, return_predictions=False)
    trainer.strategy.barrier()
    if not trainer.is_global_zero:
        return {}
    return finish(
        cfg,
        trainer,
        out_dir,
        writer,
        setup.num_classes,
        metrics,
        resumed=bool(already),
        classifier_meta=setup.classifier_meta,
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
        "classifier": cfg.classifier.checkpoint if is_guided(cfg) else None,
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
