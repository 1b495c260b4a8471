"""Digits data and the data module: shapes, value range and a reproducible stratified split."""

from __future__ import annotations

import pytest
import torch

from calguide.data import ImageDataModule, digits_split, load_digits_tensors


def test_digits_shapes_range_and_classes() -> None:
    images, labels = load_digits_tensors(16)
    assert images.shape == (1797, 1, 16, 16)
    assert images.dtype == torch.float32
    assert labels.shape == (1797,) and labels.dtype == torch.int64
    assert images.min() >= -1.0 and images.max() <= 1.0
    assert images.min() == -1.0  # background pixels stay at the bottom of the range
    assert sorted(labels.unique().tolist()) == list(range(10))


def test_digits_cache_is_not_shared_with_callers() -> None:
    first, _ = load_digits_tensors(16)
    first.fill_(0.5)
    second, _ = load_digits_tensors(16)
    assert second.min() == -1.0


def test_digits_other_sizes() -> None:
    images, _ = load_digits_tensors(32)
    assert images.shape == (1797, 1, 32, 32)
    assert images.min() >= -1.0 and images.max() <= 1.0
    native, _ = load_digits_tensors(8)
    assert native.shape == (1797, 1, 8, 8)
    with pytest.raises(ValueError, match="image_size"):
        load_digits_tensors(4)


def _split_labels(parts: dict) -> tuple[torch.Tensor, torch.Tensor]:
    return parts["train"].tensors[1], parts["heldout"].tensors[1]


def test_split_sizes_and_stratification() -> None:
    parts = digits_split(16, 0.2, 0)
    train_labels, heldout_labels = _split_labels(parts)
    assert len(parts["train"]) + len(parts["heldout"]) == 1797
    _, all_labels = load_digits_tensors(16)
    for cls in range(10):
        n_cls = int((all_labels == cls).sum())
        n_held = int((heldout_labels == cls).sum())
        assert abs(n_held - 0.2 * n_cls) <= 1
        assert n_held + int((train_labels == cls).sum()) == n_cls
    image, label = parts["train"][0]
    assert image.shape == (1, 16, 16) and label.dtype == torch.int64 and label.ndim == 0


def test_split_is_seeded_and_independent_of_size() -> None:
    a = digits_split(16, 0.2, 0)
    b = digits_split(16, 0.2, 0)
    c = digits_split(16, 0.2, 1)
    d = digits_split(32, 0.2, 0)
    assert torch.equal(a["heldout"].tensors[0], b["heldout"].tensors[0])
    assert not torch.equal(a["heldout"].tensors[0], c["heldout"].tensors[0])
    # Same seed, other image size: the same digits are held out.
    assert torch.equal(a["heldout"].tensors[1], d["heldout"].tensors[1])
    assert d["heldout"].tensors[0].shape[1:] == (1, 32, 32)


def test_split_ignores_global_rng() -> None:
    torch.manual_seed(123)
    a = digits_split(16, 0.2, 0)
    torch.manual_seed(456)
    b = digits_split(16, 0.2, 0)
    assert torch.equal(a["heldout"].tensors[0], b["heldout"].tensors[0])


def test_datamodule_digits_batches() -> None:
    dm = ImageDataModule(name="digits", image_size=16, batch_size=32)
    assert dm.num_classes == 10
    assert dm.image_shape == (1, 16, 16)
    dm.setup("fit")
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (32, 1, 16, 16) and images.dtype == torch.float32
    assert labels.shape == (32,) and labels.dtype == torch.int64
    loader = dm.train_dataloader()
    assert loader.drop_last
    assert len(loader) == len(dm.train) // 32
    val_images, _ = next(iter(dm.val_dataloader()))
    assert val_images.shape[1:] == (1, 16, 16)
    assert sum(len(b[1]) for b in dm.val_dataloader()) == len(dm.heldout)


def test_datamodule_shuffle_is_seeded() -> None:
    def first_images(seed: int) -> torch.Tensor:
        return next(iter(ImageDataModule(batch_size=16, seed=seed).train_dataloader()))[0]

    assert torch.equal(first_images(3), first_images(3))
    assert not torch.equal(first_images(3), first_images(4))


def test_datamodule_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="digits"):
        ImageDataModule(name="mnist")
    with pytest.raises(ValueError, match="channels"):
        ImageDataModule(name="digits", channels=3).setup()
