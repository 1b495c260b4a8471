"""The option you choose wins: for every option of every group of every command, the composed
config carries each value the option file sets, unless the command line sets it. (Primary
configs list ``_self_`` first; a command's own defaults live in the option it selects.)"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from calguide.config import compose, conf_dir, release
from calguide.config.compose import option_config

COMMANDS = ("sample", "calibrate", "train", "eval", "lab")
# Hydra's own node and where files go: not choices a run's result depends on.
SKIPPED_GROUPS = ("hydra", "paths")
# Options that put their values at the top level (``# @package _global_``).
GLOBAL_GROUPS = ("score", "experiment", "row", "protocol")


def leaves(node: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted key -> value of every leaf (lists are leaves), interpolations unresolved."""
    if not isinstance(node, dict):
        return {prefix.rstrip("."): node}
    found: dict[str, Any] = {}
    for key, value in node.items():
        found.update(leaves(value, f"{prefix}{key}."))
    return found


@cache
def command_groups(command: str) -> list[str]:
    """The config groups a command's primary config selects (its defaults list)."""
    cfg = compose(command, ["paths.artifacts=unused"])
    release()
    return sorted(
        group
        for group in cfg.hydra.runtime.choices
        if group.split("/")[0] not in SKIPPED_GROUPS and (conf_dir() / group).is_dir()
    )


@cache
def option_values(group: str, option: str) -> dict[str, Any]:
    """The leaves an option sets: a group option as Hydra composes it alone (its own defaults
    list included), a global one as its file's own body (where it selects other options, those
    are checked as options of their own groups)."""
    path = conf_dir() / group / f"{option}.yaml"
    if group in GLOBAL_GROUPS:
        body = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
        body.pop("defaults", None)
        return leaves(body)
    release()
    return leaves(option_config(group, option), f"{group.split('/')[0]}.")


CASES = [
    (command, group, path.stem)
    for command in COMMANDS
    for group in command_groups(command)
    for path in sorted((conf_dir() / group).glob("*.yaml"))
]


def test_every_command_offers_the_groups_it_documents():
    groups = {command: command_groups(command) for command in COMMANDS}
    assert {"data", "denoiser", "diffusion", "classifier", "guidance"} <= set(groups["sample"])
    assert "diffusion" in groups["lab"] and "trainer" in groups["calibrate"]
    assert len(CASES) > 100


@pytest.mark.parametrize(("command", "group", "option"), CASES)
def test_the_chosen_option_wins(command: str, group: str, option: str):
    wanted = option_values(group, option)
    cfg = compose(command, ["paths.artifacts=unused", f"{group}={option}"])
    release()
    got = leaves(OmegaConf.to_container(cfg, resolve=False))
    differ = {k: (got.get(k, "<absent>"), v) for k, v in wanted.items() if got.get(k) != v}
    assert not differ, f"calguide-{command} {group}={option}: (gets, option sets) {differ}"


@pytest.mark.parametrize(
    ("command", "override", "key", "value"),
    [
        ("sample", "diffusion=dpmpp", "diffusion.respacing", "logsnr7"),
        ("lab", "diffusion=adm250", "diffusion.respacing", "ddim12"),
        ("calibrate", "trainer=cpu", "trainer.max_steps", 5),
    ],
)
def test_the_command_line_wins_over_the_option(command, override, key, value):
    cfg = compose(command, ["paths.artifacts=unused", override, f"{key}={value}"])
    release()
    assert OmegaConf.select(cfg, key) == value


def test_a_commands_own_defaults_live_where_no_option_overrides_them():
    """The fine-tune's and the training's lengths are the commands' (no trainer option sets
    max_steps); calguide-sample's 100 DDPM steps are its default option's."""
    for path in sorted((conf_dir() / "trainer").glob("*.yaml")):
        assert "max_steps" not in OmegaConf.load(path), path
    assert compose("calibrate", ["paths.artifacts=unused"]).trainer.max_steps == 300
    assert compose("train", ["paths.artifacts=unused"]).trainer.max_steps == 2000
    sample = compose("sample", ["paths.artifacts=unused"])
    release()
    assert sample.hydra.runtime.choices.diffusion == "ddpm100"
    assert sample.diffusion.respacing == "100"
    for name in ("sample", "lab", "calibrate", "train", "eval"):
        defaults = OmegaConf.load(Path(conf_dir()) / f"{name}.yaml").defaults
        assert defaults[0] == "_self_", f"conf/{name}.yaml must list _self_ first"
