"""calguide-sample: guided sampling into resumable shards, merged to ADM's .npz layout."""

from __future__ import annotations

from calguide.commands.cli import hydra_main
from calguide.jobs.sample import run_sampling

main = hydra_main("sample")(run_sampling)
