"""calguide-train: fit an ADM UNet denoiser on the configured data (see conf/train.yaml)."""

from __future__ import annotations

from omegaconf import DictConfig

from calguide.commands.cli import hydra_main
from calguide.jobs.train import run_training


@hydra_main("train")
def main(cfg: DictConfig) -> None:
    """Train (or resume) the denoiser, then export it and draw an unguided sample grid."""
    run_training(cfg)
