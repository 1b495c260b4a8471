"""The evaluation job behind ``calguide-eval``: FID, precision, recall, class accuracy of an
ADM-layout ``.npz`` of samples."""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig

from calguide import assembly
from calguide.config import ConfigError, checked
from calguide.modules.evaluate import evaluate_samples, npz_array_shape, read_samples


def run_evaluation(cfg: DictConfig) -> dict:
    path = Path(cfg.samples)
    if not path.is_file():
        raise FileNotFoundError(f"samples: no file at {path} (expected an ADM-layout .npz)")
    out_dir = Path(cfg.output_dir) if cfg.output_dir else path.parent
    callback = assembly.metrics_callback(cfg, out_dir)
    if callback is None:
        raise ConfigError("metrics=none: calguide-eval needs metrics=domain or metrics=inception")
    run = checked(cfg)
    images, labels = read_samples(
        path,
        channels=int(getattr(callback.extractor, "in_channels", None) or 3),
        num_classes=int(run.data.num_classes),
        image_size=reference_image_size(run),
    )
    results = evaluate_samples(callback, images, labels, output_dir=out_dir)
    print(json.dumps(results, indent=2))
    print(f"calguide: metrics -> {out_dir / 'metrics.json'}")
    return results


def reference_image_size(run) -> tuple[int, int] | None:
    """(H, W) of the images the reference statistics are computed from."""
    reference = str(run.metrics.reference)
    if reference.endswith(".npz"):
        shape = npz_array_shape(reference, "arr_0")
        return (shape[1], shape[2]) if shape is not None and len(shape) == 4 else None
    return (int(run.data.image_size), int(run.data.image_size))
