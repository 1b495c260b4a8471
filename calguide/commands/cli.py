"""What every console script shares: find the configs, check overrides, run under Hydra.

A bad override must end in one readable line (exit status 2), not a stack trace, so the
overrides are checked before Hydra starts: group options against the files under ``conf/``,
and, for a single run, the composed config against the schemas.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from omegaconf import DictConfig

from calguide.assembly import check_machine
from calguide.config import ConfigError, conf_dir, renamed_hint, validate
from calguide.errors import CalguideError
from calguide.plugins import import_plugins

FLAGS_WITH_VALUE = {"--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd"}
# A word on what a group's options mean, added to the error for an option that does not exist.
GROUP_HINTS = {
    "guidance": (
        " (divergences carry the paper's names: rkl = KL(q_y‖p), fkl = KL(p‖q_y); EluCD is "
        "vanilla with score=elucd, e.g. row=elucd_resnet101)"
    ),
}
# Lightning's adverts for its paid services ("💡 Tip: … litlogger / litmodels"), printed by
# every Trainer; the device banner and real warnings stay.
LIGHTNING_ADVERT = "💡 Tip:"
SWEEP_FUNCTIONS = ("choice(", "range(", "interval(", "glob(", "tag(", "sort(", "shuffle(")


def group_options(root: Path, group: str) -> list[str]:
    folder = root / group
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def config_groups(root: Path) -> list[str]:
    """Group names (``data``, ``hydra/launcher``, ...) defined by folders of YAML files."""
    groups = []
    for folder in sorted(p for p in root.rglob("*") if p.is_dir()):
        if any(folder.glob("*.yaml")):
            groups.append(folder.relative_to(root).as_posix())
    return groups


def split_overrides(argv: Sequence[str]) -> tuple[list[str], bool]:
    """Hydra overrides in ``argv`` (flags dropped) and whether ``--multirun`` was asked."""
    overrides, multirun, skip = [], False, False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in ("-m", "--multirun"):
            multirun = True
        elif arg in FLAGS_WITH_VALUE:
            skip = True
        elif not arg.startswith("-"):
            overrides.append(arg)
    return overrides, multirun


def search_roots(overrides: Sequence[str]) -> list[Path]:
    """calguide's ``conf/`` and every local folder of a ``hydra.searchpath=[file://...]``
    override (where a plugin's YAML files live)."""
    roots = [conf_dir()]
    for override in overrides:
        key, _, value = override.partition("=")
        if key.lstrip("+") != "hydra.searchpath":
            continue
        for entry in value.strip("[]").split(","):
            entry = entry.strip().strip("'\"")
            if entry.startswith("file://"):
                roots.append(Path(entry.removeprefix("file://")))
    return roots


def check_group_overrides(overrides: Sequence[str], root: Path | Sequence[Path]) -> None:
    """``data=nonexistent`` → a ConfigError listing the options that exist."""
    roots = [root] if isinstance(root, Path) else list(root)
    groups = {g for r in roots for g in config_groups(r)}
    for override in overrides:
        if "=" not in override:
            continue
        key, value = override.split("=", 1)
        key = key.lstrip("+~")
        if key.startswith("hydra/") or key not in groups or "@" in key:
            continue
        if value.startswith(SWEEP_FUNCTIONS) or value in ("", "null"):
            continue
        options = sorted({o for r in roots for o in group_options(r, key)})
        for option in value.split(","):
            if option.strip() not in options:
                raise ConfigError(
                    f"{key}={option.strip()}: no such option in conf/{key}/; "
                    f"allowed: {', '.join(options)}{GROUP_HINTS.get(key, '')}"
                )


def compose_checked(config_name: str, overrides: Sequence[str]) -> DictConfig:
    """Compose like Hydra would (with the hydra node) and validate; ConfigError on failure."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(conf_dir()), version_base="1.3"):
            cfg = compose(config_name, overrides=list(overrides), return_hydra_config=True)
            HydraConfig().set_config(cfg)
            import_plugins(cfg)
            validate(cfg)
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(explain_compose_error(err, config_name)) from None
    finally:
        GlobalHydra.instance().clear()
    return cfg


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
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    GlobalHydra.instance().clear()
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        cfg = compose(config_name)
    GlobalHydra.instance().clear()
    node = OmegaConf.select(cfg, parent) if parent else cfg
    return list(node.keys()) if isinstance(node, DictConfig) else []


def fail(message: str) -> None:
    print(f"calguide: error: {message}", file=sys.stderr)
    raise SystemExit(2)


class _DropAdverts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(LIGHTNING_ADVERT)


def drop_lightning_adverts() -> None:
    """Filter the adverts out of the logger Lightning's ``rank_zero_info`` writes to."""
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropAdverts) for f in logger.filters):
        logger.addFilter(_DropAdverts())


def hydra_main(config_name: str) -> Callable[[Callable[[DictConfig], object]], Callable[[], None]]:
    """Decorator: turn ``task(cfg)`` into a console-script ``main()`` running under Hydra."""

    def decorate(task: Callable[[DictConfig], object]) -> Callable[[], None]:
        def checked_task(cfg: DictConfig) -> object:
            drop_lightning_adverts()
            try:
                import_plugins(cfg)
                validate(cfg)  # the pre-flight's result when it checked this same config
                check_machine(cfg)  # what the machine lacks (a GPU), before anything loads
                return task(cfg)
            except (CalguideError, FileNotFoundError) as err:
                # One line for what the user can fix; anything else is a bug: its traceback.
                if os.environ.get("HYDRA_FULL_ERROR") == "1":
                    raise
                fail(str(err).strip() or type(err).__name__)
            return None

        def main() -> None:
            import hydra

            argv = sys.argv[1:]
            overrides, multirun = split_overrides(argv)
            help_asked = any(a in ("--help", "-h", "--hydra-help", "--info") for a in argv)
            if not help_asked:
                try:
                    check_group_overrides(overrides, search_roots(overrides))
                    if not multirun and "--cfg" not in argv and "-c" not in argv:
                        check_machine(compose_checked(config_name, overrides))
                except ConfigError as err:
                    fail(str(err))
            runner = hydra.main(
                version_base="1.3", config_path=str(conf_dir()), config_name=config_name
            )(checked_task)
            runner()

        main.__doc__ = task.__doc__
        main.task = task  # type: ignore[attr-defined]
        return main

    return decorate
