"""The pipeline's tools are installed console scripts, and what they read ships with the package."""

from __future__ import annotations

import fnmatch
import subprocess
import sys
import sysconfig
from importlib import metadata, resources
from pathlib import Path

import pytest
import tomllib

import calguide
from calguide.tables import summary as summ

ROOT = Path(__file__).resolve().parents[1]
TOOLS = {
    "calguide-aggregate": "calguide.commands.aggregate:main",
    "calguide-preflight": "calguide.commands.preflight:main",
    "calguide-calibration-report": "calguide.commands.calibration_report:main",
}


@pytest.mark.parametrize("name", TOOLS)
def test_tool_is_a_console_script(name):
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts[name] == TOOLS[name]
    # The environment's own metadata: a stale calguide.egg-info in the checkout (on sys.path when
    # pytest runs from it) would otherwise shadow it.
    site = [sysconfig.get_path("purelib"), sysconfig.get_path("platlib")]
    installed = {
        ep.name: ep.value
        for dist in metadata.distributions(name="calguide", path=site)
        for ep in dist.entry_points
        if ep.group == "console_scripts"
    }
    assert installed.get(name) == TOOLS[name], (
        f"{name} is not installed in this environment: reinstall calguide (pip install -e .)"
    )


@pytest.mark.parametrize("name", TOOLS)
def test_tool_runs_help_from_anywhere(name, tmp_path):
    script = Path(sysconfig.get_path("scripts")) / name
    if sys.platform == "win32":
        script = script.with_suffix(".exe")
    assert script.is_file(), f"{script} is missing: reinstall calguide (pip install -e .)"
    done = subprocess.run(
        [str(script), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: {name} "), done.stdout


def test_published_numbers_ship_with_the_package():
    package_dir = Path(calguide.__file__).resolve().parent
    published = summ.DEFAULT_PUBLISHED.resolve()
    assert published == package_dir / "tables" / "published.yaml"
    assert published.is_file()
    assert resources.files("calguide.tables").joinpath("published.yaml").is_file()
    assert {"imagenet128_calibration", "imagenet128_main", "imagenet128_sampling"} <= set(
        summ.published_tables(published)
    )
    # package data: the wheel carries it next to the module
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]
    patterns = package_data.get("calguide.tables", [])
    assert any(fnmatch.fnmatch("published.yaml", p) for p in patterns), patterns


def test_default_published_file_is_found_outside_the_checkout(tmp_path):
    code = (
        "from calguide.tables import summary as a; "
        "print(a.DEFAULT_PUBLISHED.is_file(), a.DEFAULT_PUBLISHED.resolve())"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    found, path = done.stdout.split(maxsplit=1)
    assert found == "True"
    assert Path(path.strip()) == summ.DEFAULT_PUBLISHED.resolve()
    assert "experiments" not in Path(path.strip()).parts
