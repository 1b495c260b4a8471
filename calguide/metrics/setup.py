"""Build the metrics callback from the ``metrics`` config group (domain or Inception features).

Reference statistics come from a split of the configured data set or from an ADM reference
batch ``.npz``, and are cached under ``metrics.cache_dir`` keyed by everything they depend on
(extractor and its weights file, data, split, resolution), so they are recomputed exactly when
one of those changes.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from calguide.builders import datamodule_from
from calguide.metrics.callback import GenerativeMetrics
from calguide.metrics.features import ClassifierFeatureExtractor, InceptionExtractor
from calguide.metrics.reference import (
    cached_reference,
    iter_adm_reference_batch,
    reference_features,
)
from calguide.nets.classifiers import load_classifier

KINDS = ("none", "domain", "inception")
SPLITS = ("heldout", "train")


def file_identity(path: str | os.PathLike) -> str:
    """Size + hash of the first MiB: cheap, and changes whenever a retrained file replaces it."""
    p = Path(path)
    with open(p, "rb") as handle:
        head = handle.read(1 << 20)
    return f"{p.stat().st_size}:{hashlib.sha256(head).hexdigest()[:16]}"


def evaluation_extractor(spec: DictConfig) -> ClassifierFeatureExtractor:
    """The evaluation classifier's penultimate features (and its logits for class accuracy)."""
    if not spec.evaluator:
        raise FileNotFoundError("metrics.evaluator: an evaluation classifier file is required")
    classifier, _ = load_classifier(
        spec.evaluator, what="metrics evaluation classifier (metrics.evaluator)"
    )
    return ClassifierFeatureExtractor(
        classifier.net,
        name=f"domain:{Path(spec.evaluator).stem}:{file_identity(spec.evaluator)}",
        preprocess=classifier.prepare,
        batch_size=int(spec.batch_size),
    )


def extractor_from(spec: DictConfig) -> tuple[Any, ClassifierFeatureExtractor | None]:
    """(feature extractor, class-accuracy classifier or None) for ``metrics.kind``."""
    evaluator = evaluation_extractor(spec) if spec.evaluator else None
    if spec.kind == "domain":
        if evaluator is None:
            raise FileNotFoundError("metrics=domain needs metrics.evaluator (a classifier file)")
        return evaluator, evaluator
    weights = spec.get("inception_weights")
    extractor = InceptionExtractor(
        weights_path=weights, download=bool(spec.download), batch_size=int(spec.batch_size)
    )
    return extractor, evaluator


def reference_images(cfg: DictConfig, spec: DictConfig) -> Iterator[torch.Tensor]:
    """Reference images in batches: a data split, or an ADM ``.npz`` (``arr_0``)."""
    source = str(spec.reference)
    if source.endswith(".npz"):
        yield from iter_adm_reference_batch(source, batch_size=int(spec.batch_size))
        return
    if source not in SPLITS:
        raise ValueError(
            f"metrics.reference={source!r}: must be one of {list(SPLITS)} or a .npz path"
        )
    datamodule = datamodule_from(cfg, seed=0)
    datamodule.setup("fit")
    dataset = datamodule.heldout if source == "heldout" else datamodule.train
    loader = torch.utils.data.DataLoader(dataset, batch_size=int(spec.batch_size))
    for images, _ in loader:
        yield images


def reference_key(cfg: DictConfig, spec: DictConfig, extractor: Any) -> dict[str, Any]:
    source = str(spec.reference)
    key: dict[str, Any] = {"extractor": extractor.name, "reference": source}
    if source.endswith(".npz"):
        key["file"] = file_identity(source)
    else:
        key.update(
            data=str(cfg.data.name),
            image_size=int(cfg.data.image_size),
            split_seed=int(cfg.data.split_seed),
            heldout_fraction=float(cfg.data.heldout_fraction),
        )
    key["max_pr_samples"] = spec.max_pr_samples
    key["features_dtype"] = "float16"  # reference_features' storage of the kept rows
    return key


def reference_for(cfg: DictConfig, spec: DictConfig, extractor: Any) -> dict[str, Any]:
    return cached_reference(
        spec.cache_dir,
        reference_key(cfg, spec, extractor),
        lambda: reference_features(
            extractor,
            reference_images(cfg, spec),
            batch_size=int(spec.batch_size),
            max_features=spec.max_pr_samples,
        ),
    )


def metrics_callback(cfg: DictConfig, output_dir: str | os.PathLike) -> GenerativeMetrics | None:
    """The configured ``GenerativeMetrics`` callback, or None for ``metrics=none``."""
    spec = cfg.get("metrics")
    if spec is None or spec.kind == "none":
        return None
    extractor, classifier = extractor_from(spec)
    return GenerativeMetrics(
        extractor,
        lambda: reference_for(cfg, spec, extractor),
        classifier=classifier,
        output_dir=output_dir,
        k=int(spec.k),
        max_pr_samples=spec.max_pr_samples,
    )


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
    from calguide.io import atomic_write_json

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
