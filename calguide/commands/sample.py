"""calguide-sample: guided sampling into resumable shards, merged to ADM's .npz layout."""

from __future__ import annotations

from omegaconf import DictConfig

from calguide.commands.cli import hydra_main
from calguide.jobs.sample import run_sampling


@hydra_main("sample")
def main(cfg: DictConfig) -> dict:
    """See conf/sample.yaml."""
    return run_sampling(cfg)
