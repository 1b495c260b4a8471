"""Metrics of a finished sample set, without a Trainer (after a resume, and for calguide-eval),
and the checks a sample file given to calguide-eval must pass."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from calguide.errors import InputFileError
from calguide.io import atomic_write_json
from calguide.metrics.reference import read_npy_header
from calguide.modules.metrics import GenerativeMetrics


def evaluate_samples(
    callback: GenerativeMetrics,
    images: Any,
    labels: Any,
    *,
    batch_size: int = 500,
    output_dir: str | os.PathLike | None = None,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """Metrics of a finished sample set (uint8 N×H×W×C and labels), without a Trainer: used
    after a resumed run (the streaming pass saw only the new batches) and by calguide-eval."""
    images = torch.as_tensor(images)
    labels = torch.as_tensor(labels).long()
    callback.reset()
    for model in {id(m): m for m in (callback.extractor, callback.classifier) if m}.values():
        model.to(device)
    for start in range(0, images.shape[0], batch_size):
        stop = min(start + batch_size, images.shape[0])
        callback.update(
            {
                "images": images[start:stop],
                "labels": labels[start:stop],
                "indices": torch.arange(start, stop),
            }
        )
    results = callback.compute(device)
    callback.reset()
    if output_dir is not None:
        atomic_write_json(results, Path(output_dir) / "metrics.json")
    return results


SAMPLES_LAYOUT = "ADM's layout: arr_0 N×H×W×C uint8 with C in {1, 3}, arr_1 N labels in [0, K)"


def npz_array_shape(path: str | os.PathLike, key: str) -> tuple[int, ...] | None:
    """The shape of array ``key`` in an ``.npz``, read from its header (nothing else is
    loaded); None when the file or the key cannot be read."""
    try:
        with zipfile.ZipFile(path) as archive, archive.open(f"{key}.npy") as member:
            shape, _, _ = read_npy_header(member)
            return tuple(int(s) for s in shape)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None


def read_samples(
    path: str | os.PathLike,
    *,
    channels: int,
    num_classes: int,
    image_size: tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The images and labels of a sample file, checked against what the evaluation expects:
    ``channels`` of the feature extractor (grey images are replicated to 3 channels, and the
    conversion is said), labels in [0, ``num_classes``), the reference's ``image_size``
    (H, W). Anything else is one :class:`InputFileError` naming the file, the key and what
    was expected."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"samples: no file at {p} (expected an ADM-layout .npz)")
    if not zipfile.is_zipfile(p):  # numpy would try to unpickle it and say so instead
        raise InputFileError(
            f"samples: {p} is not a valid .npz (not a zip archive: garbage or truncated); "
            f"expected {SAMPLES_LAYOUT}"
        )
    try:
        with np.load(p, allow_pickle=False) as npz:
            keys = sorted(npz.files)
            images = npz["arr_0"] if "arr_0" in keys else None
            labels = npz["arr_1"] if "arr_1" in keys else None
    except Exception as exc:  # zipfile, numpy and OS errors on garbage or truncated files
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputFileError(
            f"samples: {p} is not a valid .npz ({reason}); expected {SAMPLES_LAYOUT}"
        ) from None
    if images is None:
        raise InputFileError(
            f"samples: {p} has no 'arr_0' (keys: {keys}); expected {SAMPLES_LAYOUT}"
        )
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise InputFileError(
            f"samples: {p} arr_0 is {images.dtype} of shape {images.shape}; expected "
            "N×H×W×C uint8 with C in {1, 3}"
        )
    if image_size is not None and tuple(images.shape[1:3]) != tuple(image_size):
        h, w = image_size
        raise InputFileError(
            f"samples: {p} arr_0 holds {images.shape[1]}×{images.shape[2]} images; the "
            f"reference statistics are of {h}×{w} images (metrics.reference, data.image_size)"
        )
    c = images.shape[-1]
    if c != channels:
        if c != 1:
            raise InputFileError(
                f"samples: {p} arr_0 has {c} channels; the evaluation network takes {channels} "
                "(metrics.evaluator / data.channels)"
            )
        print(f"calguide: {p}: grey images, replicated to {channels} channels for the features")
    if labels is None:
        labels = np.zeros(len(images), dtype=np.int64)
    elif labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
        raise InputFileError(
            f"samples: {p} arr_1 is {labels.dtype} of shape {labels.shape}; expected "
            f"{len(images)} integer labels"
        )
    elif len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        bad = sorted({int(v) for v in labels if not 0 <= v < num_classes})
        raise InputFileError(
            f"samples: {p} arr_1 holds labels {bad[:5]} outside [0, {num_classes}) "
            "(data.num_classes)"
        )
    return images, labels.astype(np.int64)
