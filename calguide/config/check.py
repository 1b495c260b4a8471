"""Composed config -> the command's checked, typed spec: done once per job, in the command layer,
and handed down; the jobs and the assembly read the spec, never the raw config."""

from __future__ import annotations

import os
from collections.abc import Sequence

from omegaconf import DictConfig

from calguide.config.base import RunSpec
from calguide.config.calibrate import CalibrateSpec
from calguide.config.compose import compose
from calguide.config.evaluate import EvalSpec
from calguide.config.lab import LabSpec
from calguide.config.plugins import import_plugins
from calguide.config.sample import SampleSpec
from calguide.config.train import TrainSpec
from calguide.errors import ConfigError

SPECS: dict[str, type] = {
    "sample": SampleSpec,
    "calibrate": CalibrateSpec,
    "train": TrainSpec,
    "eval": EvalSpec,
    "lab": LabSpec,
}
"""``task_name`` (set by each primary config under ``conf/``) -> its spec."""


def check(cfg: DictConfig) -> RunSpec:
    """Import the config's ``plugins``, then check every section: the job's typed spec, or one
    :class:`ConfigError` line naming the key and what was allowed."""
    task = str(cfg.get("task_name", ""))
    if task not in SPECS:
        raise ConfigError(f"task_name={task!r}: must be one of {list(SPECS)}")
    import_plugins(cfg)
    return SPECS[task].from_config(cfg)


def compose_spec(
    config_name: str, overrides: Sequence[str] = (), *, output_dir: str | os.PathLike | None = None
) -> RunSpec:
    """:func:`~calguide.config.compose.compose`, then :func:`check`."""
    return check(compose(config_name, overrides, output_dir=output_dir))
