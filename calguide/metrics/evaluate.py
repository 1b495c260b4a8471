"""Metrics of a finished sample set, without a Trainer (after a resume, and for calguide-eval)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from calguide.io import atomic_write_json
from calguide.metrics.callback import GenerativeMetrics


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
