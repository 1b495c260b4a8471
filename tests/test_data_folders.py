"""Image folders, ADM-style npz files and the CIFAR-10 missing-files error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from calguide.data import (
    ImageDataModule,
    ImageFolderDataset,
    NpzImageDataset,
    cifar10_dataset,
    dataset_names,
)


def _write_folder(root: Path) -> None:
    sizes = [(20, 12), (9, 15), (16, 16)]
    for cls, colour in (("cat", (255, 0, 0)), ("ant", (0, 0, 255))):
        (root / cls).mkdir(parents=True)
        for i, size in enumerate(sizes):
            Image.new("RGB", size, colour).save(root / cls / f"img{i}.png")
    (root / "ant" / "notes.txt").write_text("not an image")


def test_image_folder_shapes_labels_range(tmp_path: Path) -> None:
    _write_folder(tmp_path)
    ds = ImageFolderDataset(tmp_path, image_size=8)
    assert ds.classes == ["ant", "cat"] and len(ds) == 6 and ds.num_classes == 2
    for i in range(len(ds)):
        image, label = ds[i]
        assert image.shape == (3, 8, 8) and image.dtype == torch.float32
        assert label.dtype == torch.int64 and label.ndim == 0
        assert image.min() >= -1.0 and image.max() <= 1.0
        # Solid colours: blue for "ant" (label 0), red for "cat" (label 1).
        channel = 2 if int(label) == 0 else 0
        assert torch.allclose(image[channel], torch.ones(8, 8))
        assert torch.allclose(image[1], -torch.ones(8, 8))
    gray, _ = ImageFolderDataset(tmp_path, image_size=8, channels=1)[0]
    assert gray.shape == (1, 8, 8)


def test_image_folder_errors_name_the_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="expected root/<class_name>") as info:
        ImageFolderDataset(tmp_path, image_size=8)
    assert str(tmp_path) in str(info.value)
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="does not exist") as info:
        ImageFolderDataset(missing, image_size=8)
    assert str(missing) in str(info.value)
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(FileNotFoundError, match="empty_class"):
        ImageFolderDataset(tmp_path, image_size=8)


def test_npz_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 6, 6, 3), dtype=np.uint8)
    images[0, 0, 0] = [0, 255, 128]
    labels = np.array([0, 3, 1, 3, 2])
    path = tmp_path / "samples.npz"
    np.savez(path, images, labels)
    ds = NpzImageDataset(path)
    assert len(ds) == 5 and ds.image_shape == (3, 6, 6) and ds.num_classes == 4
    for i in range(5):
        image, label = ds[i]
        assert image.shape == (3, 6, 6) and image.dtype == torch.float32
        assert int(label) == labels[i] and label.dtype == torch.int64
        expected = torch.from_numpy(images[i]).permute(2, 0, 1).float() / 127.5 - 1
        assert torch.equal(image, expected)
    first, _ = ds[0]
    assert first[0, 0, 0] == -1.0 and first[1, 0, 0] == 1.0


def test_npz_without_labels_defaults_to_zero(tmp_path: Path) -> None:
    path = tmp_path / "unlabelled.npz"
    np.savez(path, np.zeros((2, 4, 4, 3), dtype=np.uint8))
    ds = NpzImageDataset(path)
    assert [int(ds[i][1]) for i in range(2)] == [0, 0]


def test_npz_missing_key_is_named(tmp_path: Path) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, images=np.zeros((2, 4, 4, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="arr_0") as info:
        NpzImageDataset(path)
    assert str(path) in str(info.value)
    with pytest.raises(FileNotFoundError):
        NpzImageDataset(tmp_path / "absent.npz")


def test_datamodule_folder_and_npz(tmp_path: Path) -> None:
    _write_folder(tmp_path / "folder")
    dm = ImageDataModule(
        name="image_folder", root=str(tmp_path / "folder"), image_size=8, batch_size=2
    )
    dm.setup()
    assert dm.num_classes == 2 and dm.image_shape == (3, 8, 8)
    assert len(dm.train) + len(dm.heldout) == 6 and len(dm.heldout) == 2
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (2, 3, 8, 8) and labels.shape == (2,)

    path = tmp_path / "samples.npz"
    np.savez(path, np.zeros((10, 4, 4, 3), dtype=np.uint8), np.arange(10) % 2)
    dm = ImageDataModule(name="npz", path=str(path), batch_size=16)
    assert dm.image_shape == (3, 4, 4) and dm.num_classes == 2
    loader = dm.train_dataloader()
    assert not loader.drop_last  # fewer items than one batch: keep the partial batch
    assert next(iter(loader))[0].shape == (8, 3, 4, 4)
    with pytest.raises(ValueError, match="image_size"):
        ImageDataModule(name="npz", path=str(path), image_size=8).setup()


def test_cifar10_missing_files(tmp_path: Path) -> None:
    pytest.importorskip("torchvision")
    with pytest.raises(FileNotFoundError) as info:
        cifar10_dataset(tmp_path, train=True, download=False)
    message = str(info.value)
    assert str(tmp_path) in message and "download=True" in message
    assert "\n" not in message
    dm = ImageDataModule(name="cifar10", root=str(tmp_path), batch_size=4)
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        dm.setup()


def test_built_in_sources_are_registry_entries(tmp_path: Path) -> None:
    assert {"digits", "cifar10", "image_folder", "npz"} <= set(dataset_names())
    for kwargs, message in (
        ({"name": "cifar10"}, "dataset 'cifar10' needs `root` (a folder)"),
        (
            {"name": "image_folder", "image_size": 8},
            "dataset 'image_folder' needs `root` (a folder)",
        ),
        (
            {"name": "image_folder", "root": str(tmp_path)},
            "dataset 'image_folder' needs `image_size`",
        ),
        ({"name": "npz"}, "dataset 'npz' needs `path` (an ADM-style .npz file)"),
    ):
        with pytest.raises(ValueError) as info:
            ImageDataModule(**kwargs)
        assert str(info.value) == message
    # Only CIFAR-10 prepares anything, and only when asked to download.
    ImageDataModule(name="cifar10", root=str(tmp_path / "absent")).prepare_data()
    ImageDataModule(name="npz", path=str(tmp_path / "absent.npz")).prepare_data()
    assert not (tmp_path / "absent").exists()
