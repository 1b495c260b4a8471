"""calguide-calibrate: train, fine-tune (CE or CE + λ·Smooth ECE) or temperature-scale."""

from __future__ import annotations

from omegaconf import DictConfig

from calguide.calibration.job import run_calibration
from calguide.cli import hydra_main


@hydra_main("calibrate")
def main(cfg: DictConfig) -> dict:
    """See conf/calibrate.yaml for the jobs and their knobs."""
    return run_calibration(cfg)
