"""One Lightning data module for every registered image source, built from plain values."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from calguide.data.registry import DatasetRequest, DatasetSplits, get_dataset

__all__ = ["ImageDataModule"]


class ImageDataModule(L.LightningDataModule):
    """Train / held-out loaders for any source in the dataset registry (``dataset_names()``).

    The built-in sources are ``digits``, ``cifar10``, ``image_folder`` and ``npz``; see
    :func:`calguide.data.register_dataset` to add one. The held-out part feeds classifier
    calibration and evaluation. For digits, image folders and npz files it is a stratified
    split seeded by ``split_seed`` alone; for CIFAR-10 it is the official test set.
    ``image_size`` / ``channels`` left as ``None`` take the data's own values; given values
    that the data cannot honour raise instead of silently differing.
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
        entry = get_dataset(name)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if not 0.0 <= heldout_fraction < 1.0:
            raise ValueError(f"heldout_fraction must be in [0, 1), got {heldout_fraction}")
        request = DatasetRequest(
            image_size=image_size,
            channels=channels,
            root=root,
            path=path,
            heldout_fraction=float(heldout_fraction),
            split_seed=int(split_seed),
            download=bool(download),
        )
        entry.check(request)
        self.save_hyperparameters()
        self.entry = entry
        self.request = request
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
        """Run the source's one-time preparation, e.g. CIFAR-10's download (rank 0 only under
        Lightning); sources without one are local and need nothing."""
        if self.entry.prepare is not None:
            self.entry.prepare(self.request)

    def setup(self, stage: str | None = None) -> None:
        """Build ``train`` and ``heldout`` once; later calls are no-ops."""
        if self.train is not None:
            return
        splits = self.entry.build(self.request)
        if not isinstance(splits, DatasetSplits):
            raise TypeError(
                f"dataset {self.name!r}: the builder returned {type(splits).__name__}, "
                "expected DatasetSplits"
            )
        c, h, w = splits.image_shape
        shape = (int(c), int(h), int(w))
        if self.channels is not None and self.channels != shape[0]:
            raise ValueError(
                f"dataset {self.name!r} has {shape[0]} channel(s) but channels={self.channels}"
            )
        self.train, self.heldout = splits.train, splits.heldout
        self._num_classes, self._image_shape = int(splits.num_classes), shape

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
        if self.entry.num_classes is not None:  # known without building
            return self.entry.num_classes
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
