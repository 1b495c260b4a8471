"""Composing configs the way the console scripts do: one helper for the commands, the miniature,
the preflight, the experiments and the tests, with one-line errors.

``conf/`` stays at the top of a checkout and ships inside the wheel as ``calguide.conf``; the
YAML files may call two resolvers registered here: ``${calguide_bundled:}`` (the bundled models'
folder) and ``${calguide_model:<trained path>,<bundled name>}`` (see
:func:`calguide.bundled.model_file`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from calguide.config.base import renamed_hint
from calguide.errors import ConfigError


def _register_resolvers() -> None:
    from calguide.bundled import bundled_dir, model_file

    if not OmegaConf.has_resolver("calguide_bundled"):
        OmegaConf.register_new_resolver("calguide_bundled", lambda: str(bundled_dir()))
    if not OmegaConf.has_resolver("calguide_model"):
        OmegaConf.register_new_resolver("calguide_model", model_file)


_register_resolvers()


def conf_dir() -> Path:
    """The config tree: ``conf/`` of a checkout, or ``calguide/conf`` inside an installed wheel.

    A checkout that is only on ``PYTHONPATH`` (not installed, as on a lent GPU machine) has no
    ``calguide.conf`` package; its ``conf/`` beside the package is the same tree.
    """
    try:
        return Path(str(resources.files("calguide.conf")))
    except ModuleNotFoundError:
        return Path(__file__).resolve().parents[2] / "conf"


def compose(
    config_name: str, overrides: Sequence[str] = (), *, output_dir: str | os.PathLike | None = None
) -> DictConfig:
    """The config Hydra would give a job of ``config_name`` with ``overrides`` (the hydra node
    included, so ``${hydra:...}`` resolves); its run folder is ``output_dir`` (default: the
    current folder). A composition error is one :class:`ConfigError` line.

    Hydra stays initialized on calguide's config tree afterwards, as in a running app, so that
    checking the config composes ``lab.runs``' guidance options from the same search path;
    the next call (or :func:`release`) clears it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    release()
    initialize_config_dir(str(conf_dir()), version_base="1.3")  # kept, as in a running app
    try:
        cfg = hydra_compose(config_name, overrides=list(overrides), return_hydra_config=True)
    except (HydraException, OmegaConfBaseException) as err:
        release()
        raise ConfigError(explain_compose_error(err, config_name)) from None
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir if output_dir is not None else os.getcwd())
    HydraConfig().set_config(cfg)
    return cfg


def release() -> None:
    """Clear Hydra's global state (before ``hydra.main`` starts, or a fresh compose)."""
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()


def option_config(group: str, option: str) -> dict[str, Any]:
    """``conf/<group>/<option>.yaml`` as Hydra composes it alone (its defaults list included),
    through the config search path of the running application (or calguide's own ``conf/``);
    the node at the group's package, unresolved."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    def composed() -> dict[str, Any]:
        cfg = hydra_compose(overrides=[f"+{group}={option}"])
        return OmegaConf.to_container(cfg[group.split("/")[0]], resolve=False)  # type: ignore

    if GlobalHydra.instance().is_initialized():
        return composed()
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        return composed()


def guidance_option(name: str) -> dict[str, Any]:
    """``guidance=<name>`` as Hydra composes it, resolved; a ConfigError listing the options
    for a name that is none."""
    from hydra.errors import HydraException

    try:
        if not name:
            raise HydraException("no option")
        return OmegaConf.to_container(  # type: ignore[return-value]
            OmegaConf.create(option_config("guidance", name)), resolve=True
        )
    except HydraException:
        options = sorted(p.stem for p in (conf_dir() / "guidance").glob("*.yaml"))
        raise ConfigError(f"guidance={name!r}: one of {', '.join(options)}") from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def explain_compose_error(err: BaseException, config_name: str) -> str:
    """One line for a composition error; for an unknown key, the keys that do exist there."""
    message = _first_line(err)
    if err.__cause__ is not None:
        message += f" ({_first_line(err.__cause__)})"
    if message.startswith("Could not override '"):
        key = message.split("'")[1]
        message += renamed_hint(key)
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        try:
            known = sorted(k for k in available_keys(config_name, parent) if k != "hydra")
        except Exception:
            known = []
        if known:
            where = parent or "the top level"
            message += f"; keys at {where}: {', '.join(known)} (use +{key}=... to add one)"
    return message


def available_keys(config_name: str, parent: str) -> list[str]:
    """The keys of ``config_name``'s default composition at ``parent`` (for error hints)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(conf_dir()), version_base="1.3"):
            cfg = hydra_compose(config_name)
    finally:
        GlobalHydra.instance().clear()
    node = OmegaConf.select(cfg, parent) if parent else cfg
    return list(node.keys()) if isinstance(node, DictConfig) else []
