"""calguide-eval: the sampling metrics for an existing ADM-layout ``.npz`` of samples."""

from __future__ import annotations

from omegaconf import DictConfig

from calguide.commands.cli import hydra_main
from calguide.jobs.evaluate import run_evaluation


@hydra_main("eval")
def main(cfg: DictConfig) -> dict:
    """See conf/eval.yaml."""
    return run_evaluation(cfg)
