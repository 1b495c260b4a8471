"""Objects every entry point builds the same way from its config sections."""

from __future__ import annotations

from hydra.utils import instantiate
from omegaconf import DictConfig

from calguide.data import ImageDataModule


def datamodule_from(cfg: DictConfig, seed: int) -> ImageDataModule:
    data = cfg.data
    return ImageDataModule(
        name=data.loader,
        image_size=data.image_size,
        channels=data.channels,
        batch_size=data.batch_size,
        num_workers=data.num_workers,
        root=data.root,
        path=data.path,
        heldout_fraction=data.heldout_fraction,
        split_seed=data.split_seed,
        download=data.download,
        seed=seed,
    )


def loggers_from(cfg: DictConfig) -> list:
    """The configured loggers (``logger`` group: a mapping of name → Lightning logger spec)."""
    return [instantiate(spec) for spec in (cfg.get("logger") or {}).values()]
