"""Registry entries from outside calguide: the modules named in a config's ``plugins`` list.

A sampler, dataset, metric, strategy or divergence lives in the user's own module, registered
with the matching ``register_*`` decorator; ``plugins=[my_pkg.samplers]`` imports it before the
config is checked, so its name is a valid choice (its YAML goes in a folder added with
``hydra.searchpath=[file:///abs/conf]``).
"""

from __future__ import annotations

import importlib
from typing import Any

from calguide.errors import ConfigError


def import_plugins(cfg: Any) -> list[str]:
    """Import every module of ``cfg.plugins`` (absent or empty: nothing); their names."""
    names = list(cfg.get("plugins") or []) if hasattr(cfg, "get") else []
    for name in names:
        try:
            importlib.import_module(str(name))
        except ImportError as err:
            raise ConfigError(
                f"plugins: cannot import {name!r} ({err}); expected an importable module "
                "that registers calguide entries"
            ) from None
    return names
