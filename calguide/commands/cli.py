"""What every console script shares: find the configs, check overrides, run under Hydra.

A bad override must end in one readable line (exit status 2), not a stack trace, so the
overrides are checked before Hydra starts: group options against the files under ``conf/``,
and, for a single run, the composed config against the schemas. Inside the job, the config
Hydra composed is checked once into the command's typed spec, which is all the job sees.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from omegaconf import DictConfig

from calguide.assembly import check_machine
from calguide.config import RunSpec, check, compose_spec, conf_dir, release
from calguide.errors import CalguideError, ConfigError

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


def compose_checked(config_name: str, overrides: Sequence[str]) -> RunSpec:
    """Compose like Hydra would (with the hydra node) and check; ConfigError on failure."""
    try:
        return compose_spec(config_name, overrides)
    finally:
        release()


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


def hydra_main(config_name: str) -> Callable[[Callable[[RunSpec], object]], Callable[[], None]]:
    """Decorator: turn ``task(spec)`` into a console-script ``main()`` running under Hydra; the
    task gets the command's checked spec (:func:`calguide.config.check`), never the raw config."""

    def decorate(task: Callable[[RunSpec], object]) -> Callable[[], None]:
        def checked_task(cfg: DictConfig) -> object:
            drop_lightning_adverts()
            try:
                spec = check(cfg)
                check_machine(spec.trainer)  # what the machine lacks (a GPU), before any load
                return task(spec)
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
                        check_machine(compose_checked(config_name, overrides).trainer)
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
