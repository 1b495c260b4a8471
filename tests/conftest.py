"""Shared fixtures: compose the real configs the way the entry points do."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from calguide.config import conf_dir

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
        GlobalHydra.instance().clear()
        with initialize_config_dir(str(conf_dir()), version_base="1.3"):
            cfg = compose(
                name,
                overrides=[
                    f"paths.artifacts={tmp_path / 'artifacts'}",
                    f"paths.log_dir={tmp_path / 'logs'}",
                    f"paths.data_dir={tmp_path / 'data'}",
                    *(overrides or []),
                ],
                return_hydra_config=True,
            )
        HydraConfig().set_config(cfg)
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path / "run")
        return cfg

    yield _compose
    GlobalHydra.instance().clear()
