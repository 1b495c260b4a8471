"""The evaluation job behind ``calguide-eval``: FID, precision, recall, class accuracy of an
ADM-layout ``.npz`` of samples."""

from __future__ import annotations

import json
from pathlib import Path

from calguide import assembly
from calguide.config.evaluate import EvalSpec
from calguide.errors import ConfigError
from calguide.modules.evaluate import evaluate_samples, npz_array_shape, read_samples


def run_evaluation(spec: EvalSpec) -> dict:
    """The configured metrics of ``spec.samples``, written beside it (or to ``output_dir``)."""
    path = Path(spec.samples)
    if not path.is_file():
        raise FileNotFoundError(f"samples: no file at {path} (expected an ADM-layout .npz)")
    out_dir = Path(spec.output_dir) if spec.output_dir else path.parent
    callback = assembly.metrics_callback(spec.metrics, spec.data, out_dir)
    if callback is None:
        raise ConfigError("metrics=none: calguide-eval needs metrics=domain or metrics=inception")
    images, labels = read_samples(
        path,
        channels=int(getattr(callback.extractor, "in_channels", None) or 3),
        num_classes=int(spec.data.num_classes),
        image_size=reference_image_size(spec),
    )
    results = evaluate_samples(callback, images, labels, output_dir=out_dir)
    print(json.dumps(results, indent=2))
    print(f"calguide: metrics -> {out_dir / 'metrics.json'}")
    return results


def reference_image_size(spec: EvalSpec) -> tuple[int, int] | None:
    """(H, W) of the images the reference statistics are computed from."""
    reference = str(spec.metrics.reference)
    if reference.endswith(".npz"):
        shape = npz_array_shape(reference, "arr_0")
        return (shape[1], shape[2]) if shape is not None and len(shape) == 4 else None
    return (int(spec.data.image_size), int(spec.data.image_size))
