"""CIFAR-10 through torchvision, converted to the package's [−1, 1] C×H×W convention."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from calguide.data._arrays import ArrayImageDataset
from calguide.data.registry import DatasetRequest, DatasetSplits, register_dataset

__all__ = ["CIFAR10_URL", "build_cifar10", "cifar10_dataset", "prepare_cifar10"]

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
_BASE_FOLDER = "cifar-10-batches-py"


def cifar10_dataset(
    root: str | Path, train: bool = True, download: bool = False
) -> ArrayImageDataset:
    """Load the CIFAR-10 train or test split as an in-memory uint8 dataset.

    torchvision only fetches and verifies the files; the pixels are then kept as uint8 and
    mapped to [−1, 1] per item, skipping a PIL round trip. A missing or failed download becomes
    a one-line ``FileNotFoundError`` instead of torchvision's generic ``RuntimeError``.
    """
    from torchvision.datasets import CIFAR10  # local: torchvision is only needed here

    root = Path(root).expanduser()
    expected = root / _BASE_FOLDER
    try:
        raw = CIFAR10(root=str(root), train=train, download=download)
    except (RuntimeError, OSError) as err:  # URLError is an OSError
        how = (
            "the download failed (no network?)"
            if download
            else "pass download=True on a machine with network access"
        )
        raise FileNotFoundError(
            f"CIFAR-10 files not found or corrupted in {str(expected)!r}: {how}, or extract "
            f"{CIFAR10_URL} into {str(root)!r} so that {_BASE_FOLDER}/ sits there ({err})"
        ) from err
    images = np.ascontiguousarray(raw.data, dtype=np.uint8)
    labels = np.asarray(raw.targets, dtype=np.int64)
    return ArrayImageDataset(images, labels, classes=list(raw.classes))


def prepare_cifar10(request: DatasetRequest) -> None:
    """Download both splits once when ``download`` is set (rank 0 only under Lightning)."""
    if request.download:
        for train in (True, False):
            cifar10_dataset(request.root_path(), train=train, download=True)


@register_dataset("cifar10", requires={"root": "a folder"}, prepare=prepare_cifar10)
def build_cifar10(request: DatasetRequest) -> DatasetSplits:
    """The ``cifar10`` source: 32×32 RGB; the official test set is the held-out split."""
    request.require_size(32, "CIFAR-10")
    train = cifar10_dataset(request.root_path(), train=True, download=request.download)
    heldout = cifar10_dataset(request.root_path(), train=False, download=request.download)
    return DatasetSplits(train, heldout, train.num_classes, train.image_shape)
