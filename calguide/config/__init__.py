"""Configs: composed from ``conf/`` (:mod:`.compose`), checked once into a typed spec per
command (:mod:`.check`); schemas per command in :mod:`.shared`, :mod:`.sample`,
:mod:`.calibrate`, :mod:`.train`, :mod:`.evaluate` and :mod:`.lab`."""

from calguide.config.base import RunSpec, job_config, renamed_hint
from calguide.config.check import SPECS, check, compose_spec
from calguide.config.compose import compose, conf_dir, release
from calguide.errors import ConfigError

__all__ = [
    "SPECS",
    "ConfigError",
    "RunSpec",
    "check",
    "compose",
    "compose_spec",
    "conf_dir",
    "job_config",
    "release",
    "renamed_hint",
]
