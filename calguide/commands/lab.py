"""calguide-lab: guidance strategies measured against the exact target on a Gaussian mixture."""

from __future__ import annotations

from calguide.commands.cli import hydra_main
from calguide.jobs.lab import run_lab

main = hydra_main("lab")(run_lab)
