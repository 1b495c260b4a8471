"""calguide-lab: guidance strategies measured against the exact target on a Gaussian mixture."""

from __future__ import annotations

from omegaconf import DictConfig

from calguide.commands.cli import hydra_main
from calguide.jobs.lab import run_lab


@hydra_main("lab")
def main(cfg: DictConfig) -> dict:
    """See conf/lab.yaml."""
    return run_lab(cfg)
