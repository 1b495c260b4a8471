"""calguide-calibrate: train, fine-tune (CE or CE + λ·Smooth ECE) or temperature-scale."""

from __future__ import annotations

from calguide.commands.cli import hydra_main
from calguide.jobs.calibrate import run_calibration

main = hydra_main("calibrate")(run_calibration)
