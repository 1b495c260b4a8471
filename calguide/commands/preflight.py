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

from omegaconf import DictConfig, OmegaConf

from calguide.assembly.requirements import required_files
from calguide.config import ConfigError, check, compose, conf_dir, release
from calguide.jobs.records import chain_words


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
    jobs = sweep_combinations(compose("sample", base))
    files: dict[Path, str] = {}
    for job in jobs:
        for what, path in required_files(check(compose("sample", [*base, *job]))):
            files.setdefault(path, what)
    release()
    return len(jobs), files


def sampler_line(experiment: str, overrides: Sequence[str]) -> str:
    """What samples the table (the first job's chain): sampler and knobs, steps of the base
    chain, network evaluations per sample, as the run's own first line will say it."""
    from calguide import assembly
    from calguide.diffusion import describe_chain

    spec = check(compose("sample", [f"experiment={experiment}", *overrides]))
    release()
    chain = assembly.chain(spec.diffusion, dict(spec.denoiser.flags))
    described = describe_chain(chain, assembly.sampler(spec.diffusion))
    if spec.guided and spec.guidance.through_denoiser:
        described["network_evaluations"] *= 2
    described.update(respacing=spec.diffusion.respacing, clip_denoised=spec.diffusion.clip_denoised)
    return chain_words(described)


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
    try:
        count, files = table_files(args.experiment, args.overrides)
        sampler = sampler_line(args.experiment, args.overrides)
    except ConfigError as err:
        print(f"preflight: error: {err}", file=sys.stderr)
        return 2
    command = ["calguide-sample", "--multirun", f"experiment={args.experiment}", *args.overrides]
    print(f"table {args.experiment}: {count} runs")
    print(f"command: {shlex.join(command)}")
    print(f"sampler: {sampler}")
    print("files:")
    for path, what in files.items():
        print(f"  [{'ok' if path.is_file() else 'MISSING'}] {path}   ({what})")
    missing = [p for p in files if not p.is_file()]
    if missing:
        print(
            f"preflight: error: {len(missing)} required file(s) missing for {args.experiment}; "
            "set paths.adm_dir / paths.torchvision_dir (or CALGUIDE_ADM_DIR, "
            "CALGUIDE_TORCHVISION_DIR, TORCH_HOME) or place the files there (docs/reproducing.md)",
            file=sys.stderr,
        )
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
