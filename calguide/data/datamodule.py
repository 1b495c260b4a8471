"""One Lightning data module for every image source, built from plain (Hydra-friendly) values."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from calguide.data._arrays import stratified_split_indices
from calguide.data.cifar10 import cifar10_dataset
from calguide.data.digits import DIGITS_NUM_CLASSES, digits_split
from calguide.data.image_folder import ImageFolderDataset, NpzImageDataset

__all__ = ["DATASET_NAMES", "ImageDataModule"]

DATASET_NAMES = ("digits", "cifar10", "image_folder", "npz")


class ImageDataModule(L.LightningDataModule):
    """Train / held-out loaders for ``digits``, ``cifar10``, ``image_folder`` or ``npz`` data.

    The held-out part feeds classifier calibration and evaluation. For digits, image folders
    and npz files it is a stratified split seeded by ``split_seed`` alone; for CIFAR-10 it is
    the official test set. ``image_size`` / ``channels`` left as ``None`` take the data's own
    values; given values that the data cannot honour raise instead of silently differing.
    """

    def __init__(
        self,
        name: str = "digits",
        image_size: int | None = None,
        channels: int | None = None,
        batch_size: int = 64,
        num_workers: int = 0,
        root: str | None = None,
        path: str | None = None,
        heldout_fraction: float = 0.2,
        split_seed: int = 0,
        download: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if name not in DATASET_NAMES:
            raise ValueError(f"unknown dataset name {name!r}; allowed names: {list(DATASET_NAMES)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if not 0.0 <= heldout_fraction < 1.0:
            raise ValueError(f"heldout_fraction must be in [0, 1), got {heldout_fraction}")
        if name in ("cifar10", "image_folder") and root is None:
            raise ValueError(f"dataset {name!r} needs `root` (a folder)")
        if name == "npz" and path is None:
            raise ValueError("dataset 'npz' needs `path` (an ADM-style .npz file)")
        if name == "image_folder" and image_size is None:
            raise ValueError("dataset 'image_folder' needs `image_size`")
        self.save_hyperparameters()
        self.name = name
        self.image_size = image_size
        self.channels = channels
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.root = root
        self.path = path
        self.heldout_fraction = float(heldout_fraction)
        self.split_seed = int(split_seed)
        self.download = bool(download)
        self.seed = int(seed)
        self.train: Dataset | None = None
        self.heldout: Dataset | None = None
        self._num_classes: int | None = None
        self._image_shape: tuple[int, int, int] | None = None

    def prepare_data(self) -> None:
        """Download CIFAR-10 once (rank 0 only under Lightning); other sources are local."""
        if self.name == "cifar10" and self.download:
            for train in (True, False):
                cifar10_dataset(self._root(), train=train, download=True)

    def setup(self, stage: str | None = None) -> None:
        """Build ``train`` and ``heldout`` once; later calls are no-ops."""
        if self.train is not None:
            return
        if self.name == "digits":
            size = 16 if self.image_size is None else self.image_size
            parts = digits_split(size, self.heldout_fraction, self.split_seed)
            train, heldout = parts["train"], parts["heldout"]
            num_classes, shape = DIGITS_NUM_CLASSES, (1, size, size)
        elif self.name == "cifar10":
            self._require_size(32, "CIFAR-10")
            train = cifar10_dataset(self._root(), train=True, download=self.download)
            heldout = cifar10_dataset(self._root(), train=False, download=self.download)
            num_classes, shape = train.num_classes, train.image_shape
        else:
            full: ImageFolderDataset | NpzImageDataset
            if self.name == "image_folder":
                assert self.image_size is not None  # checked in __init__
                channels = 3 if self.channels is None else self.channels
                full = ImageFolderDataset(self._root(), self.image_size, channels)
                labels = torch.as_tensor(full.targets, dtype=torch.int64)
            else:
                full = NpzImageDataset(Path(str(self.path)))
                self._require_size(full.image_shape[1], f"npz file {self.path!r}")
                labels = full.labels
            train_idx, heldout_idx = stratified_split_indices(
                labels, self.heldout_fraction, self.split_seed
            )
            train, heldout = Subset(full, train_idx.tolist()), Subset(full, heldout_idx.tolist())
            num_classes, shape = full.num_classes, full.image_shape
        if self.channels is not None and self.channels != shape[0]:
            raise ValueError(
                f"dataset {self.name!r} has {shape[0]} channel(s) but channels={self.channels}"
            )
        self.train, self.heldout = train, heldout
        self._num_classes, self._image_shape = num_classes, shape

    def train_dataloader(self) -> DataLoader:
        """Shuffled loader whose order depends only on ``seed``; full batches when possible."""
        self.setup()
        assert self.train is not None
        generator = torch.Generator().manual_seed(self.seed)
        return self._loader(
            self.train,
            shuffle=True,
            drop_last=len(self.train) > self.batch_size,
            generator=generator,
        )

    def val_dataloader(self) -> DataLoader:
        """Held-out loader in fixed order, for validation and calibration."""
        self.setup()
        assert self.heldout is not None
        return self._loader(self.heldout, shuffle=False, drop_last=False)

    @property
    def num_classes(self) -> int:
        """Number of classes (builds the datasets if needed, so models can size their heads)."""
        if self.name == "digits":
            return DIGITS_NUM_CLASSES
        self.setup()
        assert self._num_classes is not None
        return self._num_classes

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images the loaders yield."""
        self.setup()
        assert self._image_shape is not None
        return self._image_shape

    def _loader(
        self,
        dataset: Dataset,
        shuffle: bool,
        drop_last: bool,
        generator: torch.Generator | None = None,
    ) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            generator=generator,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def _root(self) -> Path:
        return Path(str(self.root)).expanduser()

    def _require_size(self, native: int, what: str) -> None:
        """Reject an ``image_size`` the source cannot provide (no silent resizing)."""
        if self.image_size is not None and self.image_size != native:
            raise ValueError(f"{what} has image size {native}, but image_size={self.image_size}")
