"""scikit-learn's bundled 8×8 handwritten digits: a tiny, offline, 10-class image set.

Useful for fast end-to-end runs (diffusion + classifier + guidance) without any download.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from calguide.data._arrays import stratified_split_indices
from calguide.data.registry import DatasetRequest, DatasetSplits, register_dataset

__all__ = ["DIGITS_NUM_CLASSES", "build_digits", "digits_split", "load_digits_tensors"]

DIGITS_NUM_CLASSES = 10
_NATIVE_SIZE = 8
_DEFAULT_SIZE = 16
_MAX_VALUE = 16.0


@functools.lru_cache(maxsize=8)
def _digits_cached(image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Load and resize once per size; callers get clones so the cache cannot be mutated."""
    from sklearn.datasets import load_digits  # local: keeps `import calguide.data` light

    bunch = load_digits()
    pixels = torch.as_tensor(bunch.images, dtype=torch.float32)  # N×8×8, values 0..16
    images = (pixels / _MAX_VALUE * 2.0 - 1.0).unsqueeze(1)
    if image_size != _NATIVE_SIZE:
        images = F.interpolate(
            images,
            size=(image_size, image_size),
            mode="bilinear",
            align_corners=False,
            antialias=image_size < _NATIVE_SIZE,
        )
    images = images.clamp_(-1.0, 1.0).contiguous()
    labels = torch.as_tensor(bunch.target, dtype=torch.int64)
    return images, labels


def load_digits_tensors(image_size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (images N×1×S×S float32 in [−1, 1], labels N int64) for all 1,797 digits."""
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 8:
        raise ValueError(f"image_size must be an int >= 8 for the digits data, got {image_size!r}")
    images, labels = _digits_cached(image_size)
    return images.clone(), labels.clone()


def digits_split(
    image_size: int = 16, heldout_fraction: float = 0.2, split_seed: int = 0
) -> dict[str, TensorDataset]:
    """Fixed stratified train / held-out split; depends only on ``heldout_fraction`` and seed.

    The held-out part is meant for classifier calibration and evaluation, so each class keeps
    the same share in both parts.
    """
    images, labels = load_digits_tensors(image_size)
    train_idx, heldout_idx = stratified_split_indices(labels, heldout_fraction, split_seed)
    return {
        "train": TensorDataset(images[train_idx], labels[train_idx]),
        "heldout": TensorDataset(images[heldout_idx], labels[heldout_idx]),
    }


@register_dataset("digits", num_classes=DIGITS_NUM_CLASSES)
def build_digits(request: DatasetRequest) -> DatasetSplits:
    """The ``digits`` source: resized to ``image_size`` (16 when unset), stratified split."""
    size = _DEFAULT_SIZE if request.image_size is None else request.image_size
    parts = digits_split(size, request.heldout_fraction, request.split_seed)
    return DatasetSplits(parts["train"], parts["heldout"], DIGITS_NUM_CLASSES, (1, size, size))
