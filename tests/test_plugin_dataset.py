"""A dataset added from outside calguide: one builder registered here, one YAML in tests/conf.

Nothing in calguide knows ``toy_dataset``; registering the builder and composing with the extra
config search path is all it takes for the data module and a real job (calibration) to use it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from calguide.commands.calibrate import main as calibrate_main
from calguide.config import check
from calguide.data import (
    DatasetRequest,
    DatasetSplits,
    ImageDataModule,
    dataset_names,
    register_dataset,
    stratified_split_indices,
    unregister_dataset,
)
from calguide.nets.classifiers import load_classifier

TOY = "toy_dataset"
TOY_CONF = Path(__file__).resolve().parent / "conf"  # holds data/toy_dataset.yaml
NUM_CLASSES, PER_CLASS, SIZE = 10, 24, 8


def build_toy(request: DatasetRequest) -> DatasetSplits:
    """10 classes of grey 8×8 images: a class-specific pattern plus seeded noise, in [−1, 1]."""
    request.require_size(SIZE, f"dataset {TOY!r}")
    generator = torch.Generator().manual_seed(1234)
    templates = torch.where(
        torch.rand(NUM_CLASSES, 1, SIZE, SIZE, generator=generator) > 0.5, 1.0, -1.0
    )
    labels = torch.arange(NUM_CLASSES).repeat_interleave(PER_CLASS)
    noise = 0.3 * torch.randn(labels.numel(), 1, SIZE, SIZE, generator=generator)
    images = (templates[labels] + noise).clamp(-1.0, 1.0)
    train, heldout = stratified_split_indices(labels, request.heldout_fraction, request.split_seed)
    return DatasetSplits(
        TensorDataset(images[train], labels[train]),
        TensorDataset(images[heldout], labels[heldout]),
        NUM_CLASSES,
        (1, SIZE, SIZE),
    )


@pytest.fixture
def toy_dataset() -> Iterator[str]:
    """Register the toy source for one test only (a plugin module would just decorate
    ``build_toy`` with ``@register_dataset("toy_dataset")``)."""
    register_dataset(TOY)(build_toy)
    yield TOY
    unregister_dataset(TOY)


def test_registered_dataset_drives_the_data_module(toy_dataset: str) -> None:
    assert toy_dataset in dataset_names()
    with pytest.raises(ValueError, match="already registered"):
        register_dataset(toy_dataset)(build_toy)

    dm = ImageDataModule(name=toy_dataset, batch_size=16, heldout_fraction=0.25, seed=3)
    assert dm.num_classes == NUM_CLASSES and dm.image_shape == (1, SIZE, SIZE)
    assert len(dm.train) == 180 and len(dm.heldout) == 60  # 6 of each class's 24 held out
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (16, 1, SIZE, SIZE) and images.dtype == torch.float32
    assert labels.shape == (16,) and labels.dtype == torch.int64
    assert images.min() >= -1.0 and images.max() <= 1.0
    assert len(dm.train_dataloader()) == 180 // 16  # full batches only
    held = torch.cat([y for _, y in dm.val_dataloader()])
    assert torch.equal(torch.bincount(held), torch.full((NUM_CLASSES,), 6))
    again = ImageDataModule(name=toy_dataset, batch_size=16, heldout_fraction=0.25, seed=3)
    assert torch.equal(next(iter(again.train_dataloader()))[0], images)  # seeded shuffle

    # The data module's generic checks apply to a plugin source too.
    with pytest.raises(ValueError, match="has 1 channel"):
        ImageDataModule(name=toy_dataset, channels=3).setup()
    with pytest.raises(ValueError, match="image_size=16"):
        ImageDataModule(name=toy_dataset, image_size=16).setup()


def test_unregistered_dataset_is_refused_with_the_allowed_names() -> None:
    assert TOY not in dataset_names()
    with pytest.raises(ValueError, match=r"unknown dataset name 'toy_dataset'.*'digits'"):
        ImageDataModule(name=TOY)


def test_registered_dataset_runs_the_calibration_job(toy_dataset, compose_config) -> None:
    cfg = compose_config(
        "calibrate",
        [
            f"hydra.searchpath=[file://{TOY_CONF}]",
            f"data={toy_dataset}",
            "trainer.enable_progress_bar=false",
            "classifier.params.width=32",
            "calibration=ce",
            "inputs.mode=clean",
            "init=null",
            "trainer.max_steps=4",
            "trainer.log_every_n_steps=1",
            "evaluation.buckets=2",
        ],
    )
    assert cfg.data.loader == toy_dataset and cfg.classifier.params.num_classes == NUM_CLASSES
    spec = check(cfg)  # what the console script checks first: data.loader is a registered name
    record = calibrate_main.task(spec)
    output = Path(cfg.output)
    assert output.is_file() and f"/{toy_dataset}/classifiers/" in output.as_posix()
    assert record["steps"] == 4 and record["before"] is None
    assert 0.0 <= record["after"]["clean"]["acc"] <= 1.0
    saved = json.loads((output.with_suffix("") / "calibration.json").read_text())
    assert saved["after"]["clean"] == pytest.approx(record["after"]["clean"])
    classifier, meta = load_classifier(output)
    assert meta["meta"]["calibration"] == "ce"
    assert classifier(torch.zeros(2, 1, SIZE, SIZE)).shape == (2, NUM_CLASSES)


def test_registration_is_checked() -> None:
    with pytest.raises(ValueError, match=r"unknown request field\(s\) \['roots'\]"):
        register_dataset("bad", requires={"roots": "a folder"})
    with pytest.raises(ValueError, match="num_classes"):
        register_dataset("bad", num_classes=0)
    with pytest.raises(ValueError, match="non-empty string"):
        register_dataset("")
    assert "bad" not in dataset_names()

    def not_splits(request: DatasetRequest) -> DatasetSplits:
        return (None, None)  # type: ignore[return-value]

    register_dataset("bad", not_splits, requires={"root": "a folder"}, num_classes=2)
    try:
        with pytest.raises(ValueError, match=r"^dataset 'bad' needs `root` \(a folder\)$"):
            ImageDataModule(name="bad")
        dm = ImageDataModule(name="bad", root="x")
        assert dm.num_classes == 2  # known on the entry: nothing built
        with pytest.raises(TypeError, match="expected DatasetSplits"):
            dm.setup()
    finally:
        unregister_dataset("bad")
