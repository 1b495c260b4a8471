"""Shared helpers: uint8 → [−1, 1] conversion, in-memory array datasets, stratified splits.

Kept in one place so every dataset maps pixels identically (0 → −1, 255 → 1, ADM's convention).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["ArrayImageDataset", "stratified_split_indices", "uint8_hwc_to_signed"]


def uint8_hwc_to_signed(array: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Map an H×W×C uint8 image to a float32 C×H×W tensor in [−1, 1].

    Dividing by 127.5 keeps the end points exact (0 → −1.0, 255 → 1.0), which tests rely on.
    """
    if isinstance(array, np.ndarray) and not array.flags.writeable:
        array = array.copy()  # e.g. np.asarray(PIL image); torch warns on read-only buffers
    tensor = torch.as_tensor(array)
    if tensor.dtype != torch.uint8:
        raise TypeError(f"expected a uint8 image, got dtype {tensor.dtype}")
    if tensor.ndim == 2:
        tensor = tensor.unsqueeze(-1)
    return tensor.permute(2, 0, 1).to(torch.float32).div(127.5).sub(1.0).contiguous()


class ArrayImageDataset(Dataset):
    """Images held in memory as N×H×W×C uint8, converted to [−1, 1] per item.

    Storing uint8 rather than float keeps memory at a quarter; conversion per item is cheap.
    """

    def __init__(
        self,
        images: np.ndarray | torch.Tensor,
        labels: np.ndarray | torch.Tensor | Sequence[int] | None = None,
        classes: Sequence[str] | None = None,
    ) -> None:
        images_t = _as_uint8_nhwc(images)
        n = images_t.shape[0]
        if labels is None:
            labels_t = torch.zeros(n, dtype=torch.int64)
        else:
            labels_t = torch.as_tensor(np.asarray(labels)).to(torch.int64).reshape(-1)
        if labels_t.shape[0] != n:
            raise ValueError(f"got {n} images but {labels_t.shape[0]} labels")
        if n and int(labels_t.min()) < 0:
            raise ValueError("labels must be non-negative class indices")
        self.images = images_t
        self.labels = labels_t
        self.classes = list(classes) if classes is not None else None

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return uint8_hwc_to_signed(self.images[index]), self.labels[index].clone()

    @property
    def num_classes(self) -> int:
        """Number of classes: the class list if given, else the largest label + 1."""
        if self.classes is not None:
            return len(self.classes)
        return int(self.labels.max()) + 1 if len(self) else 0

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of every item."""
        _, h, w, c = self.images.shape
        return (int(c), int(h), int(w))


def _as_uint8_nhwc(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Validate and wrap an image stack without copying when it is already usable."""
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8:
            raise TypeError(f"expected uint8 images, got dtype {images.dtype}")
        images = torch.from_numpy(np.require(images, requirements=["C", "W"]))
    if images.dtype != torch.uint8:
        raise TypeError(f"expected uint8 images, got dtype {images.dtype}")
    if images.ndim == 3:  # N×H×W grayscale
        images = images.unsqueeze(-1)
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(
            f"expected images shaped N×H×W×C with C in (1, 3), got {tuple(images.shape)}"
        )
    return images


def stratified_split_indices(
    labels: torch.Tensor | Sequence[int], heldout_fraction: float, split_seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split indices per class so each class keeps ``heldout_fraction`` of its items held out.

    A private generator seeded only by ``split_seed`` makes the split reproducible and
    independent of global RNG state, image size or anything else; classes are visited in
    sorted order so the draw sequence is fixed. Returns sorted (train, heldout) index tensors.
    """
    if not 0.0 <= heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must be in [0, 1), got {heldout_fraction}")
    labels_t = torch.as_tensor(labels, dtype=torch.int64).reshape(-1)
    generator = torch.Generator().manual_seed(int(split_seed))
    train_parts: list[torch.Tensor] = []
    heldout_parts: list[torch.Tensor] = []
    for cls in torch.unique(labels_t, sorted=True).tolist():
        members = torch.nonzero(labels_t == cls, as_tuple=False).reshape(-1)
        members = members[torch.randperm(members.numel(), generator=generator)]
        n_heldout = math.floor(heldout_fraction * members.numel() + 0.5)
        heldout_parts.append(members[:n_heldout])
        train_parts.append(members[n_heldout:])
    empty = torch.empty(0, dtype=torch.int64)
    train = torch.sort(torch.cat(train_parts)).values if train_parts else empty
    heldout = torch.sort(torch.cat(heldout_parts)).values if heldout_parts else empty
    return train, heldout
