"""calguide-eval: the sampling metrics for an existing ADM-layout ``.npz`` of samples."""

from __future__ import annotations

from calguide.commands.cli import hydra_main
from calguide.jobs.evaluate import run_evaluation

main = hydra_main("eval")(run_evaluation)
