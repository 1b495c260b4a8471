"""calguide-calibrate: train, fine-tune (CE or CE + λ·Smooth ECE) or temperature-scale."""

from __future__ import annotations

from omegaconf import DictConfig

from calguide.commands.cli import hydra_main
from calguide.jobs.calibrate import run_calibration


@hydra_main("calibrate")
def main(cfg: DictConfig) -> dict:
    """See conf/calibrate.yaml for the jobs and their knobs."""
    return run_calibration(cfg)
