"""Shared fixtures: compose the real configs the way the entry points do, and check them into the
command's spec as the console scripts do."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator

import pytest
import torch
from omegaconf import DictConfig

from calguide.config import RunSpec, check, compose, release

os.environ.setdefault("WANDB_MODE", "offline")
# File hashes (run identities) are remembered per test session, not in the user's cache.
os.environ.setdefault(
    "CALGUIDE_HASH_CACHE", os.path.join(tempfile.mkdtemp(prefix="calguide-tests-"), "sha256.json")
)
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture
def compose_config(tmp_path) -> Iterator[Callable[..., DictConfig]]:
    """compose_config(name, overrides) → the config Hydra would give the task, paths in tmp."""

    def _compose(name: str, overrides: list[str] | None = None) -> DictConfig:
        return compose(
            name,
            [
                f"paths.artifacts={tmp_path / 'artifacts'}",
                f"paths.log_dir={tmp_path / 'logs'}",
                f"paths.data_dir={tmp_path / 'data'}",
                *(overrides or []),
            ],
            output_dir=tmp_path / "run",
        )

    yield _compose
    release()


@pytest.fixture
def compose_spec(compose_config) -> Callable[..., RunSpec]:
    """compose_spec(name, overrides) → the command's checked spec, as its job receives it."""

    def _spec(name: str, overrides: list[str] | None = None) -> RunSpec:
        return check(compose_config(name, overrides))

    return _spec
