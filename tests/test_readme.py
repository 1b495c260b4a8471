"""README.md cannot rot: every path it names exists, every ``make`` target is in the Makefile,
every config option it names is under ``conf/``, and every ``calguide-*`` command in its code
blocks composes (the console script's own pre-flight: compose + validate, no weights loaded).
Commands that run for real (``make lab``, a 10-sample digits ``calguide-sample``) are slow."""

from __future__ import annotations

import itertools
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from calguide.commands.cli import (
    check_group_overrides,
    compose_checked,
    search_roots,
    split_overrides,
)
from calguide.config import ConfigError, conf_dir

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
MAKEFILE = (ROOT / "Makefile").read_text()
# Folders a README path may start with (outputs such as logs/ and artifacts/ are not checked).
CHECKED_ROOTS = ("calguide/", "conf/", "tests/", "experiments/", "docs/", ".ci/")
TOP_FILES = ("Makefile", "pyproject.toml", "constraints.txt", "README.md")
HYDRA_SCRIPTS = {
    "calguide-sample": "sample",
    "calguide-train": "train",
    "calguide-calibrate": "calibrate",
    "calguide-eval": "eval",
    "calguide-lab": "lab",
}
# plain argparse tools: the module whose parse_args / main parser takes the arguments
ARGPARSE_SCRIPTS = {
    "calguide-aggregate": "calguide.tools.aggregate",
    "calguide-preflight": "calguide.tools.preflight",
    "calguide-miniature": "calguide.tools.miniature",
    "calguide-calibration-report": "calguide.calibration.report",
}


def code_blocks(text: str) -> list[str]:
    return re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S)


def expand_braces(token: str) -> list[str]:
    """``a_{b,c}`` → ``a_b``, ``a_c`` (shell brace expansion, nested ones too)."""
    match = re.search(r"\{([^{}]*)\}", token)
    if not match or "," not in match.group(1):
        return [token]
    out = []
    for part in match.group(1).split(","):
        out += expand_braces(token[: match.start()] + part + token[match.end() :])
    return out


# --------------------------------------------------------------------------- paths


def named_paths(text: str) -> list[str]:
    found = set()
    for token in re.findall(r"`([^`\s]+)`", text) + re.findall(r"\]\(([^)#\s]+)\)", text):
        token = token.rstrip(".,:;)")
        if "…" in token or "<" in token or "$" in token or token.startswith("../"):
            continue
        if token.startswith(CHECKED_ROOTS) or token in TOP_FILES:
            found.update(expand_braces(token))
    return sorted(found)


def test_every_named_path_exists() -> None:
    missing = []
    for name in named_paths(README):
        path = name.split(":", 1)[0]  # file.py:function
        hits = list(ROOT.glob(path)) if "*" in path else [ROOT / path]
        if not hits or not all(h.exists() for h in hits):
            missing.append(name)
    assert not missing, f"README names paths that do not exist: {missing}"


# --------------------------------------------------------------------------- make targets


def makefile_targets() -> set[str]:
    targets = set(re.findall(r"^([A-Za-z0-9_.-]+):", MAKEFILE, flags=re.M))
    for line in re.findall(r"^\.PHONY: (.*)$", MAKEFILE, flags=re.M):
        targets.update(t for t in line.split() if "$" not in t)
    for group in re.findall(r"\$\(addprefix ([^,]+),\$\(([A-Z_]+)\)\)", MAKEFILE):
        prefix, var = group
        values = re.search(rf"^{var} := (.*)$", MAKEFILE, flags=re.M)
        targets.update(prefix + v for v in values.group(1).split())
    return targets


def test_every_make_target_exists() -> None:
    """``make <target>`` in backticks or at the start of a code line."""
    named = set(re.findall(r"`make ([a-z][a-z0-9-]*)", README))
    for block in code_blocks(README):
        named.update(re.findall(r"^\s*(?:\$ )?make ([a-z][a-z0-9-]*)", block, flags=re.M))
    named = {n for n in named if not n.endswith("-")}  # make reproduce-table-<name>
    unknown = sorted(n for n in named if n not in makefile_targets())
    assert not unknown, f"README names make targets the Makefile lacks: {unknown}"


# --------------------------------------------------------------------------- config options


def test_every_config_option_exists() -> None:
    """The configs table's options, and every ``group=option`` the README writes."""
    groups = {p.relative_to(conf_dir()).as_posix() for p in conf_dir().rglob("*") if p.is_dir()}
    wrong = []
    for row in re.findall(r"^\| `([a-z_/]+)/` \| (.*?) \|", README, flags=re.M):
        group, options = row
        for option in re.findall(r"`([a-z0-9_{},]+)`", options):
            for name in expand_braces(option):
                if not (conf_dir() / group / f"{name}.yaml").is_file():
                    wrong.append(f"{group}/{name}")
    shown_failing = {tok for argv in EXPECTED_ERRORS for tok in argv.split()[1:]}
    for group, option in re.findall(r"\b([a-z_]+(?:/[a-z_]+)?)=([a-z0-9_]+)\b", README):
        if f"{group}={option}" in shown_failing:
            continue  # an example of the error for an option that does not exist
        if group in groups and not (conf_dir() / group / f"{option}.yaml").is_file():
            wrong.append(f"{group}={option}")
    assert not wrong, f"README names config options that do not exist: {sorted(set(wrong))}"


# --------------------------------------------------------------------------- commands


def readme_commands() -> tuple[list[list[str]], dict[str, str]]:
    """Every ``calguide-*`` command line in the README's code blocks (continuations joined,
    comments and prompts dropped), and the error each one shown failing must print (a
    ``calguide: error: …`` line right after it)."""
    commands, errors = [], {}
    for block in code_blocks(README):
        lines = re.sub(r"\\\n\s*", " ", block).splitlines()
        for k, raw in enumerate(lines):
            line = raw.split(" #", 1)[0].strip().removeprefix("$ ")
            if not line.startswith("calguide-"):
                continue
            argv = shlex.split(line)
            commands.append(argv)
            follow = lines[k + 1].strip() if k + 1 < len(lines) else ""
            if follow.startswith("calguide: error: "):
                errors[" ".join(argv)] = follow.removeprefix("calguide: error: ")
    return commands, errors


COMMANDS, EXPECTED_ERRORS = readme_commands()
FLAGS = {"--cfg", "-c", "--package", "-p"}  # Hydra flags that take a value


def single_runs(overrides: list[str], multirun: bool) -> list[list[str]]:
    """A multirun's sweep as single runs: each swept key's values in turn, the other keys at
    their first value (every value composes without the whole product)."""
    if not multirun:
        return [overrides]
    swept = {i: o.split("=", 1)[1].split(",") for i, o in enumerate(overrides) if "," in o}
    runs = []
    width = max((len(v) for v in swept.values()), default=1)
    for k in range(width):
        run = list(overrides)
        for i, values in swept.items():
            run[i] = f"{overrides[i].split('=', 1)[0]}={values[k % len(values)]}"
        runs.append(run)
    return runs


@pytest.mark.parametrize("argv", COMMANDS, ids=[" ".join(c)[:80] for c in COMMANDS])
def test_every_command_composes(argv: list[str], tmp_path) -> None:
    script, args = argv[0], argv[1:]
    if script in HYDRA_SCRIPTS:
        kept, skip = [], False
        for arg in args:  # Hydra's own flags with a value (--cfg job) are not overrides
            if skip:
                skip = False
            elif arg in FLAGS:
                skip = True
            else:
                kept.append(arg)
        overrides, multirun = split_overrides(kept)
        overrides = [o for o in overrides if not o.startswith("hydra/launcher=")]
        expected = EXPECTED_ERRORS.get(" ".join(argv))
        for run in single_runs(overrides, multirun):
            try:  # the console script's own pre-flight (cli.hydra_main)
                check_group_overrides(run, search_roots(run))
                compose_checked(HYDRA_SCRIPTS[script], run)
            except ConfigError as err:
                if expected is None:
                    pytest.fail(f"{' '.join(argv)}: {err}")
                assert str(err) == expected, f"README shows another error for {argv}"
            else:
                assert expected is None, f"README shows {argv} failing, but it composes"
        return
    assert script in ARGPARSE_SCRIPTS, f"README uses an unknown console script {script}"
    import importlib

    module = importlib.import_module(ARGPARSE_SCRIPTS[script])
    parser_of = getattr(module, "build_parser", None) or getattr(module, "parse_args", None)
    if parser_of is None:
        pytest.skip(f"{script} has no parse_args to check its arguments with")
    try:
        parser_of(args) if parser_of.__name__ == "parse_args" else parser_of().parse_args(args)
    except SystemExit as exc:
        pytest.fail(f"{' '.join(argv)}: argparse refused it (exit {exc.code})")


def test_readme_has_commands_to_check() -> None:
    scripts = {c[0] for c in COMMANDS}
    assert {"calguide-sample", "calguide-calibrate", "calguide-train"} <= scripts


# --------------------------------------------------------------------------- for real


@pytest.mark.slow
def test_a_readme_sampling_command_runs(tmp_path) -> None:
    """A digits calguide-sample from the README, at 10 samples, through the console script."""
    argv = next(c for c in COMMANDS if c[0] == "calguide-sample" and "--multirun" not in c)
    run = [
        sys.executable, "-c", "from calguide.commands.sample import main; main()", *argv[1:],
        "sampling.num_samples=10", "sampling.batch_size=10", "diffusion.respacing='4'",
        f"paths.artifacts={tmp_path}/art", f"paths.log_dir={tmp_path}/logs",
    ]  # fmt: skip
    done = subprocess.run(run, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert list((tmp_path / "art").rglob("samples.npz"))


@pytest.mark.slow
def test_make_lab_runs(tmp_path) -> None:
    done = subprocess.run(
        ["make", "lab", f"BIN={Path(sys.executable).parent}"],
        capture_output=True, text=True, cwd=ROOT, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]


def test_helpers() -> None:
    assert expand_braces("digits_{a,b}") == ["digits_a", "digits_b"]
    assert single_runs(["g=a,b", "s=1"], True) == [["g=a", "s=1"], ["g=b", "s=1"]]
    assert list(itertools.chain(*[["x"]])) == ["x"]
