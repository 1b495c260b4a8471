"""Metrics: the feature extractor (an evaluation classifier or Inception-v3), the reference
statistics (a data split or ADM's reference batch, cached by content) and the streaming
``GenerativeMetrics`` callback."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from calguide.assembly.models import datamodule
from calguide.config.shared import DataConfig, MetricsConfig
from calguide.io import content_sha256
from calguide.metrics.features import ClassifierFeatureExtractor, InceptionExtractor
from calguide.metrics.reference import (
    REFERENCE_SPLITS,
    cached_reference,
    iter_adm_reference_batch,
    reference_features,
)
from calguide.modules.metrics import GenerativeMetrics
from calguide.nets.classifiers import load_classifier


def file_identity(path: str | os.PathLike) -> str:
    """Size + sha256 of the file's bytes (hashed once per size and mtime): what the reference
    statistics' cache key names a file by, so a replaced file is never mistaken for the old."""
    return f"{Path(path).stat().st_size}:{content_sha256(path)[:16]}"


def evaluation_extractor(spec: MetricsConfig) -> ClassifierFeatureExtractor:
    """The evaluation classifier's penultimate features (and its logits for class accuracy)."""
    if not spec.evaluator:
        raise FileNotFoundError("metrics.evaluator: an evaluation classifier file is required")
    net, _ = load_classifier(
        spec.evaluator, what="metrics evaluation classifier (metrics.evaluator)"
    )
    return ClassifierFeatureExtractor(
        net.net,
        name=f"domain:{Path(spec.evaluator).stem}:{file_identity(spec.evaluator)}",
        preprocess=net.prepare,
        batch_size=int(spec.batch_size),
    )


def extractor(spec: MetricsConfig) -> tuple[Any, ClassifierFeatureExtractor | None]:
    """(feature extractor, class-accuracy classifier or None) for ``metrics.kind``."""
    evaluator = evaluation_extractor(spec) if spec.evaluator else None
    if spec.kind == "domain":
        if evaluator is None:
            raise FileNotFoundError("metrics=domain needs metrics.evaluator (a classifier file)")
        return evaluator, evaluator
    inception = InceptionExtractor(
        weights_path=spec.inception_weights,
        download=bool(spec.download),
        batch_size=int(spec.batch_size),
    )
    return inception, evaluator


def reference_images(data: DataConfig, spec: MetricsConfig) -> Iterator[torch.Tensor]:
    """Reference images in batches: a data split, or an ADM ``.npz`` (``arr_0``)."""
    source = str(spec.reference)
    if source.endswith(".npz"):
        yield from iter_adm_reference_batch(source, batch_size=int(spec.batch_size))
        return
    if source not in REFERENCE_SPLITS:
        raise ValueError(
            f"metrics.reference={source!r}: must be one of {list(REFERENCE_SPLITS)} or a .npz path"
        )
    dm = datamodule(data, seed=0)
    dm.setup("fit")
    dataset = dm.heldout if source == "heldout" else dm.train
    loader = torch.utils.data.DataLoader(dataset, batch_size=int(spec.batch_size))
    for images, _ in loader:
        yield images


def reference_key(data: DataConfig, spec: MetricsConfig, features: Any) -> dict[str, Any]:
    """Everything the reference statistics depend on: their cache key."""
    source = str(spec.reference)
    key: dict[str, Any] = {"extractor": features.name, "reference": source}
    if source.endswith(".npz"):
        key["file"] = file_identity(source)
    else:
        key.update(
            data=str(data.name),
            image_size=int(data.image_size),
            split_seed=int(data.split_seed),
            heldout_fraction=float(data.heldout_fraction),
        )
    key["max_pr_samples"] = spec.max_pr_samples
    key["features_dtype"] = "float16"  # reference_features' storage of the kept rows
    return key


def reference(data: DataConfig, spec: MetricsConfig, features: Any) -> dict[str, Any]:
    return cached_reference(
        spec.cache_dir,
        reference_key(data, spec, features),
        lambda: reference_features(
            features,
            reference_images(data, spec),
            batch_size=int(spec.batch_size),
            max_features=spec.max_pr_samples,
        ),
    )


def metrics_callback(
    spec: MetricsConfig, data: DataConfig, output_dir: str | os.PathLike | None
) -> GenerativeMetrics | None:
    """The configured ``GenerativeMetrics`` callback, or None for ``metrics=none``."""
    if spec.kind == "none":
        return None
    features, accuracy = extractor(spec)
    return GenerativeMetrics(
        features,
        lambda: reference(data, spec, features),
        classifier=accuracy,
        metrics=list(spec.compute),
        output_dir=output_dir,
        k=int(spec.k),
        max_pr_samples=spec.max_pr_samples,
        keep_features=bool(spec.keep_features),
    )
