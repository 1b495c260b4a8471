"""Before a table runs: expand its sweep, list every input file, stop if any is missing.

    calguide-preflight imagenet128_main [overrides ...]

Composes ``calguide-sample`` with ``experiment=<name>`` for every combination of the
experiment's ``hydra.sweeper.params`` (as Hydra's basic sweeper would), prints the command that
runs the table and the files it reads, and exits 2 listing the missing ones, so a table that
cannot finish fails in seconds instead of after the first job's start-up.
"""

from __future__ import annotations

import argparse
import itertools
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from calguide.config import conf_dir
from calguide.requirements import required_files


def _compose(overrides: Sequence[str]) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        cfg = compose("sample", overrides=list(overrides), return_hydra_config=True)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(Path.cwd())
    return cfg


def sweep_combinations(cfg: DictConfig) -> list[list[str]]:
    """Every job's overrides: the cartesian product of ``hydra.sweeper.params``."""
    params = OmegaConf.to_container(cfg.hydra.sweeper.get("params") or {}, resolve=False)
    keys = list(params)
    values = [str(params[k]).split(",") for k in keys]
    return [
        [f"{k}={v.strip()}" for k, v in zip(keys, combo)] for combo in itertools.product(*values)
    ]


def table_files(experiment: str, overrides: Sequence[str]) -> tuple[int, dict[Path, str]]:
    """(number of jobs, every required file -> what needs it) for one table."""
    base = [f"experiment={experiment}", *overrides]
    jobs = sweep_combinations(_compose(base))
    files: dict[Path, str] = {}
    for job in jobs:
        for what, path in required_files(_compose([*base, *job])):
            files.setdefault(path, what)
    GlobalHydra.instance().clear()
    return len(jobs), files


def sampler_line(experiment: str, overrides: Sequence[str]) -> str:
    """What samples the table: the sampler, its steps and its knobs (the first job's)."""
    cfg = _compose([f"experiment={experiment}", *overrides])
    diffusion = cfg.diffusion
    steps = str(diffusion.respacing) or str(diffusion.steps)
    params = diffusion.get("sampler_params")
    knobs = OmegaConf.to_container(params, resolve=True) if params is not None else {}
    text = f"{diffusion.sampler}, respacing {steps!r}"
    if knobs:
        text += " (" + ", ".join(f"{k}={v}" for k, v in knobs.items()) + ")"
    GlobalHydra.instance().clear()
    return text


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="calguide-preflight", description=__doc__.splitlines()[0])
    parser.add_argument("experiment", help="a name under conf/experiment/")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every job")
    args = parser.parse_args(argv)
    known = sorted(p.stem for p in (conf_dir() / "experiment").glob("*.yaml"))
    if args.experiment not in known:
        print(
            f"preflight: error: experiment={args.experiment}: no such option in conf/experiment/; "
            f"allowed: {', '.join(known)}",
            file=sys.stderr,
        )
        return 2
    count, files = table_files(args.experiment, args.overrides)
    command = ["calguide-sample", "--multirun", f"experiment={args.experiment}", *args.overrides]
    print(f"table {args.experiment}: {count} runs")
    print(f"command: {shlex.join(command)}")
    print(f"sampler: {sampler_line(args.experiment, args.overrides)}")
    print("files:")
    for path, what in files.items():
        print(f"  [{'ok' if path.is_file() else 'MISSING'}] {path}   ({what})")
    missing = [p for p in files if not p.is_file()]
    if missing:
        print(
            f"preflight: error: {len(missing)} required file(s) missing for {args.experiment}; "
            "set paths.adm_dir / paths.torchvision_dir (or CALGUIDE_ADM_DIR, "
            "CALGUIDE_TORCHVISION_DIR, TORCH_HOME) or place the files there (README: "
            "'Reproducing the tables')",
            file=sys.stderr,
        )
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
