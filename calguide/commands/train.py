"""calguide-train: fit an ADM UNet denoiser on the configured data (see conf/train.yaml)."""

from __future__ import annotations

from calguide.commands.cli import hydra_main
from calguide.jobs.train import run_training

main = hydra_main("train")(run_training)
