"""The wheel ships every package and the config tree; console scripts resolve."""

from __future__ import annotations

from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_is_listed_in_pyproject():
    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {
        ".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "calguide").rglob("__init__.py")
    }
    assert found | {"calguide.conf"} == listed


def test_console_scripts_point_at_callables():
    import importlib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "calguide-train" in scripts
    for target in scripts.values():
        module, attr = target.split(":")
        assert callable(getattr(importlib.import_module(module), attr))


def test_conf_is_importable_as_package_data():
    from calguide.config import conf_dir

    assert (conf_dir() / "train.yaml").is_file()
    assert (conf_dir() / "data" / "digits.yaml").is_file()
