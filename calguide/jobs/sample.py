"""The sampling job behind ``calguide-sample``: build, predict into shards, merge, report."""

from __future__ import annotations

import hashlib
import json
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import OmegaConf

from calguide import assembly
from calguide.assembly.requirements import check_required_files
from calguide.config.sample import SampleSpec
from calguide.diffusion.samplers import sampler_class
from calguide.errors import ConfigError, RunStateError
from calguide.io import (
    atomic_write_json,
    atomic_write_text,
    content_sha256,
    folder_lock,
    log_image,
)
from calguide.jobs.records import sampling_line, sampling_record
from calguide.metrics.per_sample import EVAL_FEATURES
from calguide.metrics.reference import REFERENCE_SPLITS
from calguide.modules.evaluate import evaluate_samples
from calguide.modules.metrics import GenerativeMetrics
from calguide.samples.diagnostics import (
    plot_diagnostics,
    read_diagnostics_csv,
    save_snapshots,
    write_diagnostics_csv,
)
from calguide.samples.grid import save_image_grid
from calguide.samples.labels import LabelDataModule
from calguide.samples.writer import (
    ShardWriter,
    heal_shards,
    merge_shards,
    save_npz,
    written_indices,
)

# Config sections whose values change the samples (batch size only for batch-level strategies).
IDENTITY_SECTIONS = ("data", "denoiser", "diffusion", "classifier", "guidance")
IDENTITY_SAMPLING_KEYS = ("num_samples", "labels", "fixed_class", "precision", "noise")
# Paths inside those sections: the files they name count by content (``inputs``) instead.
PATH_KEYS = (
    ("denoiser", "checkpoint"),
    ("classifier", "checkpoint"),
    ("data", "root"),
    ("data", "path"),
)


def input_files(spec: SampleSpec) -> dict[str, Path]:
    """The files whose contents decide the samples: the denoiser, and the classifier when
    guided."""
    files = {"denoiser": assembly.denoiser_path(spec.denoiser, spec.data, spec.paths.artifacts)}
    if spec.guided:
        files["classifier"] = Path(str(spec.classifier.checkpoint))
    return files


def input_identity(spec: SampleSpec) -> dict[str, str]:
    """role -> sha256 of the file's bytes (cached by size and mtime: large files hash once)."""
    return {role: content_sha256(path) for role, path in input_files(spec).items()}


def run_identity(spec: SampleSpec, batch_dependent: bool, inputs: dict[str, str]) -> str:
    """A short hash of everything that determines the samples: the output folder's suffix, so
    a rerun of the same command resumes and any change of a knob starts a fresh folder.

    Files count by content (``inputs``), not by path: replacing the classifier file starts a
    new run, moving the artifacts folder does not. A sampler whose update changed says so by
    its ``revision``, so its new samples never reuse an older folder.
    """
    ident = {k: json.loads(json.dumps(spec.config[k])) for k in IDENTITY_SECTIONS}
    for section, key in PATH_KEYS:
        ident[section].pop(key, None)
    ident["inputs"] = inputs
    ident["sampling"] = {k: spec.config["sampling"].get(k) for k in IDENTITY_SAMPLING_KEYS}
    if ident["sampling"]["noise"] in (None, "per_sample"):  # the default keeps older hashes
        del ident["sampling"]["noise"]
    if spec.sampling.fused_attention:  # another kernel: other rounding, other guided samples
        ident["sampling"]["fused_attention"] = True
    ident["seed"] = spec.seed
    revision = sampler_class(spec.diffusion.sampler).revision
    if revision != 1:  # the sampler's math changed: older folders are not these samples
        ident["sampler_revision"] = revision
    if batch_dependent:
        ident["batch_size"] = spec.sampling.batch_size
    blob = json.dumps(ident, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:8]


def output_dir(spec: SampleSpec, batch_dependent: bool, inputs: dict[str, str]) -> Path:
    if spec.sampling.out_dir:
        return Path(spec.sampling.out_dir)
    name = (
        f"{spec.denoiser.name}-{spec.classifier.name if spec.guided else 'noclf'}"
        f"-{spec.guidance.name}-s{spec.guidance.scale:g}-seed{spec.seed}"
        f"-{run_identity(spec, batch_dependent, inputs)}"
    )
    return Path(spec.paths.artifacts) / spec.data.name / "samples" / name


def check_inputs_record(out_dir: Path, inputs: dict[str, str]) -> None:
    """Record the inputs' hashes in a new run folder; refuse one made from other inputs (a
    fixed ``sampling.out_dir`` reused after a file changed)."""
    record = out_dir / "inputs.json"
    if record.is_file():
        try:
            before = json.loads(record.read_text())
        except ValueError:
            before = None
        if before != inputs:
            changed = sorted(
                k for k in {*inputs, *(before or {})} if (before or {}).get(k) != inputs.get(k)
            )
            raise RunStateError(
                f"sampling.out_dir={out_dir} holds samples of other inputs ({', '.join(changed)} "
                "changed since it was started); delete it or choose another folder"
            )
    else:
        atomic_write_json(inputs, record)


def check_against_model(spec: SampleSpec, setup: assembly.SamplingSetup) -> None:
    """Values that only the loaded denoiser can check, before any sampling."""
    sampling = spec.sampling
    if sampling.labels == "fixed" and sampling.fixed_class >= setup.num_classes:
        raise ConfigError(
            f"sampling.fixed_class={sampling.fixed_class}: must be in "
            f"[0, {setup.num_classes}) (the denoiser's classes)"
        )
    channels, size, _ = setup.module.sample_shape
    metrics, data = spec.metrics, spec.data
    against_data = metrics.kind != "none" and metrics.reference in REFERENCE_SPLITS
    if against_data and (size, channels) != (data.image_size, data.channels):
        raise ConfigError(
            f"data.image_size={data.image_size}, data.channels={data.channels}: "
            f"the denoiser makes {channels}×{size}×{size} samples, and metrics.reference="
            f"{metrics.reference} compares them with the data at its own size; set data "
            "to the denoiser's size"
        )


def run_record(
    spec: SampleSpec, setup: assembly.SamplingSetup, inputs: dict[str, str]
) -> dict[str, Any]:
    """What this run runs (:func:`calguide.jobs.records.sampling_record`), files by content."""
    files = input_files(spec)
    denoiser = {"name": spec.denoiser.name, "file": str(files["denoiser"])}
    denoiser["sha256"] = inputs["denoiser"]
    classifier = None
    if spec.guided:
        classifier = {"name": spec.classifier.name, "arch": spec.classifier.arch}
        classifier.update(file=str(files["classifier"]), sha256=inputs["classifier"])
    return sampling_record(
        setup.module.describe(),
        respacing=spec.diffusion.respacing,
        denoiser=denoiser,
        classifier=classifier,
        device=assembly.device_name(spec.trainer),
        samples=spec.sampling.num_samples,
        batch_size=spec.sampling.batch_size,
        labels=spec.sampling.labels,
        seed=spec.seed,
    )


def classifier_smece(meta: dict[str, Any]) -> float | None:
    """The guidance classifier's held-out smECE (mean over its noisy buckets) as recorded at
    export by ``calguide-calibrate``; None for published weights, which carry no record."""
    buckets = (meta.get("meta") or {}).get("metrics") or {}
    values = [float(v["smece"]) for k, v in buckets.items() if k != "clean" and "smece" in v]
    return sum(values) / len(values) if values else None


class Preempted(Exception):
    """SIGTERM arrived (SLURM's notice before preemption): the batch in progress is dropped."""


@contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM into :class:`Preempted` while sampling (main thread only). A shard is
    written atomically, so the batch in progress is abandoned and no half file is left."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise Preempted

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_sampling(spec: SampleSpec) -> dict[str, Any]:
    """Sample ``spec`` into its run folder (resuming what is there), merge, report."""
    check_required_files(spec)
    L.seed_everything(spec.seed, workers=True, verbose=False)
    setup = assembly.sampling_setup(spec)
    check_against_model(spec, setup)
    inputs = input_identity(spec)
    out_dir = output_dir(spec, setup.batch_dependent, inputs)
    record = run_record(spec, setup, inputs)
    if rank_zero_only.rank != 0:  # DDP ranks > 0: rank 0 holds the folder for all of them
        return sample_into(spec, setup, out_dir, record)
    print(sampling_line("calguide-sample", record), flush=True)
    with folder_lock(out_dir, wait_s=spec.sampling.lock_wait_s, what="run folder"):
        check_inputs_record(out_dir, inputs)
        try:
            with stop_on_sigterm():
                return sample_into(spec, setup, out_dir, record)
        except Preempted:
            done = len(written_indices(out_dir / "shards"))
            print(
                f"calguide: SIGTERM: stopped; {done} of {spec.sampling.num_samples} samples are "
                f"in {out_dir / 'shards'}; rerun the same command to resume"
            )
            raise SystemExit(143) from None


def sample_into(
    spec: SampleSpec, setup: assembly.SamplingSetup, out_dir: Path, record: dict[str, Any]
) -> dict[str, Any]:
    """Generate the missing samples into ``out_dir``'s shards, merge, report."""
    num_samples = spec.sampling.num_samples
    finished = finished_run(out_dir, num_samples)
    shard_dir = out_dir / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    if finished is None and rank_zero_only.rank == 0:
        channels, size, _ = setup.module.sample_shape
        heal_shards(shard_dir, num_samples, (size, size, channels))
    atomic_write_text(OmegaConf.to_yaml(spec.config), out_dir / "config.yaml")
    datamodule = LabelDataModule(
        num_samples,
        setup.num_classes,
        batch_size=spec.sampling.batch_size,
        protocol=spec.sampling.labels,
        seed=spec.seed,
        fixed_class=spec.sampling.fixed_class,
        done=lambda: written_indices(shard_dir),
    )
    writer = ShardWriter(shard_dir)
    metrics = assembly.metrics_callback(spec.metrics, spec.data, out_dir)
    already = num_samples if finished else len(written_indices(shard_dir))
    if finished:
        print(f"calguide: {out_dir} is finished ({num_samples} samples); nothing to sample")
    elif already:
        print(f"calguide: resuming {out_dir}: {already} of {num_samples} samples done")
    # Streaming metrics only see this process's batches: after a resume they are computed from
    # the merged set instead (see finish).
    streaming = [metrics] if metrics is not None and not already else []
    trainer: L.Trainer = assembly.trainer(
        spec, record, callbacks=[writer, *streaming], use_distributed_sampler=False
    )
    if not finished:
        trainer.predict(setup.module, datamodule=datamodule, return_predictions=False)
        trainer.strategy.barrier()
    if not trainer.is_global_zero:
        return {}
    record = {**record, "network_evaluations_counted": setup.module.evaluations_per_sample}
    return finish(
        spec,
        trainer,
        out_dir,
        writer,
        setup.num_classes,
        metrics,
        record=record,
        resumed=bool(already),
        classifier_meta=setup.classifier_meta,
        finished=finished,
    )


def finished_run(out_dir: Path, num_samples: int) -> dict[str, Any] | None:
    """The completion record of a finished run whose ``samples.npz`` is still the one it
    wrote (same size and modification time), else None."""
    try:
        record = json.loads((out_dir / "complete.json").read_text())
        stat = (out_dir / "samples.npz").stat()
    except (OSError, ValueError):
        return None
    same = (record.get("size"), record.get("mtime_ns")) == (stat.st_size, stat.st_mtime_ns)
    return record if same and record.get("num_samples") == num_samples else None


def finish(
    spec: SampleSpec,
    trainer: L.Trainer,
    out_dir: Path,
    writer: ShardWriter,
    num_classes: int,
    metrics: GenerativeMetrics | None,
    *,
    record: dict[str, Any],
    resumed: bool,
    classifier_meta: dict[str, Any] | None = None,
    finished: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Merge the shards into ADM's ``samples.npz`` (or reuse a finished one), then the grid,
    metrics, diagnostics and snapshots, and ``sampling.json``: the run's record of what it
    ran, the numbers, and the resolved config."""
    npz = out_dir / "samples.npz"
    merged = finished_samples(out_dir) if finished else merge_into_npz(out_dir, spec, npz)
    label = f"{spec.guidance.name} scale {spec.guidance.scale:g}"
    grid = save_grid(trainer, merged, num_classes, out_dir / "grid.png", label)
    smece = classifier_smece(classifier_meta or {})
    result: dict[str, Any] = {
        "samples": str(npz),
        "grid": str(grid),
        "num_samples": int(merged["images"].shape[0]),
        "out_dir": str(out_dir),
        "run": record,
        "classifier_smece": smece,
        # The resolved job config, so a multirun folder can be aggregated from these files alone.
        "config": spec.config,
    }
    if smece is not None:
        for logger in trainer.loggers:
            logger.log_metrics({"classifier_smece": smece})
    if metrics is not None:
        result.update(report_metrics(trainer, metrics, merged, out_dir, resumed=resumed))
    result.update(save_diagnostics(spec, trainer, merged, writer, out_dir))
    text = json.dumps(result, indent=2)
    atomic_write_text(text, out_dir / "sampling.json")
    # Also in Hydra's run folder, where multirun aggregation looks for it.
    atomic_write_text(text, Path(spec.paths.output_dir) / "sampling.json")
    print(f"calguide: {result['num_samples']} samples -> {npz}\ncalguide: grid -> {grid}")
    return result


def merge_into_npz(out_dir: Path, spec: SampleSpec, npz: Path) -> dict[str, Any]:
    """The shards merged into ``samples.npz``, with its completion record."""
    merged = merge_shards(out_dir / "shards", spec.sampling.num_samples)
    save_npz(npz, arr_0=merged["images"], arr_1=merged["labels"])
    stat = npz.stat()
    atomic_write_json(
        {
            "num_samples": int(merged["images"].shape[0]),
            "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
        },
        out_dir / "complete.json",
    )
    return merged


def save_grid(
    trainer: L.Trainer, merged: dict[str, Any], num_classes: int, path: Path, caption: str
) -> Path:
    grid = save_image_grid(
        torch.from_numpy(grid_selection(merged["images"], merged["labels"], num_classes, 10)),
        path,
        ncols=10,
        upscale=4 if merged["images"].shape[1] <= 64 else 1,
    )
    log_image(trainer, "samples/grid", grid, caption)
    return grid


def report_metrics(
    trainer: L.Trainer,
    metrics: GenerativeMetrics,
    merged: dict[str, Any],
    out_dir: Path,
    *,
    resumed: bool,
) -> dict[str, Any]:
    """The metrics (recomputed from the merged set after a resume) and the kept features."""
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
    found: dict[str, Any] = {"metrics": metrics.results}
    kept = out_dir / EVAL_FEATURES
    if metrics.keep_features and kept.is_file():
        found["eval_features"] = str(kept)
    print("calguide: metrics " + json.dumps(metrics.results))
    return found


def save_diagnostics(
    spec: SampleSpec,
    trainer: L.Trainer,
    merged: dict[str, Any],
    writer: ShardWriter,
    out_dir: Path,
) -> dict[str, str]:
    """The per-timestep diagnostics (CSV, figure) and the x̂₀ / gradient snapshots."""
    saved: dict[str, str] = {}
    diagnostics = merged["diagnostics"]
    if diagnostics:
        csv = write_diagnostics_csv(diagnostics, out_dir / "diagnostics.csv")
        saved["diagnostics_csv"] = str(csv)
        if spec.sampling.figures:
            label = f"{spec.guidance.name} s={spec.guidance.scale:g}"
            curves = plot_diagnostics({label: diagnostics}, out_dir / "diagnostics.png")
            log_image(trainer, "diagnostics/curves", curves)
            saved["diagnostics_png"] = str(curves)
    if writer.snapshots:
        steps: dict[int, dict[str, list[torch.Tensor]]] = {}
        for part in writer.snapshots:
            for t, tensors in part["steps"].items():
                entry = steps.setdefault(t, {"pred_x0": [], "grad": []})
                entry["pred_x0"].append(tensors["pred_x0"])
                entry["grad"].append(tensors["grad"])
        stacked = {t: {k: torch.cat(v) for k, v in e.items()} for t, e in steps.items()}
        snap = save_snapshots(stacked, out_dir / "snapshots.png")
        if snap is not None:
            saved["snapshots_png"] = str(snap)
    return saved


def finished_samples(out_dir: Path) -> dict[str, Any]:
    """A finished run's arrays from its ``samples.npz`` and diagnostics from its CSV."""
    with np.load(out_dir / "samples.npz") as npz:
        images, labels = npz["arr_0"], npz["arr_1"]
    csv_path = out_dir / "diagnostics.csv"
    diagnostics = read_diagnostics_csv(csv_path) if csv_path.is_file() else {}
    return {"images": images, "labels": labels, "diagnostics": diagnostics}


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
