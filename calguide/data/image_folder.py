"""Image datasets read from disk: a class-per-subfolder tree and ADM's ``.npz`` sample files."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Subset

from calguide.data._arrays import ArrayImageDataset, stratified_split_indices, uint8_hwc_to_signed
from calguide.data.registry import DatasetRequest, DatasetSplits, register_dataset

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageFolderDataset",
    "NpzImageDataset",
    "build_image_folder",
    "build_npz",
    "center_crop_resize",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
_LAYOUT = "root/<class_name>/<image>.png|jpg|jpeg|bmp|webp (one subfolder per class)"


def center_crop_resize(image: Image.Image, image_size: int) -> Image.Image:
    """Scale the shorter side to ``image_size`` and crop the centre square, as ADM does.

    Large images are first halved with a box filter so the final bicubic step does not alias.
    """
    while min(image.size) >= 2 * image_size:
        image = image.resize((image.width // 2, image.height // 2), resample=Image.Resampling.BOX)
    scale = image_size / min(image.size)
    new_size = (
        max(image_size, round(image.width * scale)),
        max(image_size, round(image.height * scale)),
    )
    image = image.resize(new_size, resample=Image.Resampling.BICUBIC)
    left = (image.width - image_size) // 2
    top = (image.height - image_size) // 2
    return image.crop((left, top, left + image_size, top + image_size))


class ImageFolderDataset(Dataset):
    """Labelled images from ``root/<class_name>/*``; classes are indexed in sorted name order.

    Files are found recursively inside each class folder (hidden entries skipped) and sorted,
    so indices are stable across machines.
    """

    def __init__(self, root: str | Path, image_size: int, channels: int = 3) -> None:
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels}")
        if image_size < 1:
            raise ValueError(f"image_size must be positive, got {image_size}")
        self.root = Path(root).expanduser()
        self.image_size = int(image_size)
        self.channels = int(channels)
        self.mode = "RGB" if channels == 3 else "L"
        self.classes, self.samples = _scan_class_folders(self.root)
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
        self.targets = [label for _, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        path, label = self.samples[index]
        with Image.open(path) as raw:
            image = raw.convert(self.mode)
        image = center_crop_resize(image, self.image_size)
        return uint8_hwc_to_signed(np.asarray(image, dtype=np.uint8)), torch.tensor(label)

    @property
    def num_classes(self) -> int:
        """Number of class subfolders."""
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of every item."""
        return (self.channels, self.image_size, self.image_size)


def _scan_class_folders(root: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """List classes and (file, label) pairs, failing loudly on a missing or empty tree."""
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {str(root)!r} does not exist; expected {_LAYOUT}")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise FileNotFoundError(
            f"image folder {str(root)!r} has no class subfolders; expected {_LAYOUT}"
        )
    samples: list[tuple[Path, int]] = []
    empty: list[str] = []
    for label, name in enumerate(classes):
        files = sorted(
            p
            for p in (root / name).rglob("*")
            if p.is_file()
            and p.suffix.lower() in IMAGE_EXTENSIONS
            and not any(part.startswith(".") for part in p.relative_to(root).parts)
        )
        if not files:
            empty.append(name)
        samples.extend((p, label) for p in files)
    if empty:
        raise FileNotFoundError(
            f"image folder {str(root)!r}: class subfolder(s) {empty} contain no images "
            f"with extensions {IMAGE_EXTENSIONS}; expected {_LAYOUT}"
        )
    return classes, samples


class NpzImageDataset(ArrayImageDataset):
    """ADM's sample layout: ``arr_0`` N×H×W×C uint8 images, optional ``arr_1`` N labels.

    Labels default to 0 so unlabelled sample batches (e.g. FID reference sets) still load.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise FileNotFoundError(f"npz file {str(self.path)!r} does not exist")
        try:
            archive = np.load(self.path, allow_pickle=False)
        except (ValueError, OSError, zipfile.BadZipFile) as err:
            raise ValueError(f"{str(self.path)!r} is not a readable .npz file: {err}") from err
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise ValueError(
                f"{str(self.path)!r} is a plain .npy array, expected an .npz with keys "
                "'arr_0' (N×H×W×C uint8 images) and optional 'arr_1' (N labels)"
            )
        with archive:
            if "arr_0" not in archive.files:
                raise ValueError(
                    f"{str(self.path)!r} has no key 'arr_0' (found {archive.files}); expected "
                    "'arr_0' (N×H×W×C uint8 images) and optional 'arr_1' (N integer labels)"
                )
            images = archive["arr_0"]
            labels = archive["arr_1"] if "arr_1" in archive.files else None
        if labels is not None and not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(
                f"{str(self.path)!r}: 'arr_1' must hold integer labels, got dtype {labels.dtype}"
            )
        try:
            super().__init__(images, labels)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{str(self.path)!r}: {err}") from err


def _stratified_splits(
    full: ImageFolderDataset | NpzImageDataset, labels: torch.Tensor, request: DatasetRequest
) -> DatasetSplits:
    """Train / held-out subsets of ``full``, stratified and seeded by ``split_seed`` alone."""
    train_idx, heldout_idx = stratified_split_indices(
        labels, request.heldout_fraction, request.split_seed
    )
    return DatasetSplits(
        Subset(full, train_idx.tolist()),
        Subset(full, heldout_idx.tolist()),
        full.num_classes,
        full.image_shape,
    )


@register_dataset("image_folder", requires={"root": "a folder", "image_size": None})
def build_image_folder(request: DatasetRequest) -> DatasetSplits:
    """The ``image_folder`` source: ``root/<class>/*`` center-cropped to ``image_size``."""
    assert request.image_size is not None  # required above
    channels = 3 if request.channels is None else request.channels
    full = ImageFolderDataset(request.root_path(), request.image_size, channels)
    return _stratified_splits(full, torch.as_tensor(full.targets, dtype=torch.int64), request)


@register_dataset("npz", requires={"path": "an ADM-style .npz file"})
def build_npz(request: DatasetRequest) -> DatasetSplits:
    """The ``npz`` source: an ADM sample file (``arr_0`` images, optional ``arr_1`` labels)."""
    full = NpzImageDataset(Path(str(request.path)))
    request.require_size(full.image_shape[1], f"npz file {request.path!r}")
    return _stratified_splits(full, full.labels, request)
