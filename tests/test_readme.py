"""README.md and the pages under docs/ cannot rot: every path they name exists, every relative
link resolves, every ``make`` target is in the Makefile, every config option they name is under
``conf/``, and every ``calguide-*`` command in their code blocks composes (the console script's
own pre-flight: compose + validate, no weights loaded). The README stays short and links every
page of docs/. Commands that run for real (``make lab``, a 10-sample digits ``calguide-sample``)
are slow."""

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
README_PATH = ROOT / "README.md"
README = README_PATH.read_text()
DOCS = ROOT / "docs"
# The README, then every page under docs/ (the measured tables under docs/*/ too).
PAGES = [README_PATH, *sorted(DOCS.rglob("*.md"))]
TEXT = {page: page.read_text() for page in PAGES}
README_MAX_LINES = 350
MAKEFILE = (ROOT / "Makefile").read_text()
# Folders a backticked path may start with, from the repository root whatever the page
# (outputs such as logs/ and artifacts/ are not checked).
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
    "calguide-aggregate": "calguide.commands.aggregate",
    "calguide-preflight": "calguide.commands.preflight",
    "calguide-miniature": "calguide.commands.miniature",
    "calguide-calibration-report": "calguide.commands.calibration_report",
}


def rel(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


over_pages = pytest.mark.parametrize("page", PAGES, ids=rel)


def code_blocks(text: str) -> list[str]:
    return re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S)


def prose(text: str) -> str:
    """The text without its fenced code blocks (no links or headings in there)."""
    return re.sub(r"```.*?```", "", text, flags=re.S)


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
    """Backticked paths, from the repository root (markdown links: see the link tests)."""
    found = set()
    for token in re.findall(r"`([^`\s]+)`", text):
        token = token.rstrip(".,:;)")
        if "…" in token or "<" in token or "$" in token or token.startswith("../"):
            continue
        if token.startswith(CHECKED_ROOTS) or token in TOP_FILES:
            found.update(expand_braces(token))
    return sorted(found)


@over_pages
def test_every_named_path_exists(page: Path) -> None:
    missing = []
    for name in named_paths(TEXT[page]):
        path = name.split(":", 1)[0]  # file.py:function
        hits = list(ROOT.glob(path)) if "*" in path else [ROOT / path]
        if not hits or not all(h.exists() for h in hits):
            missing.append(name)
    assert not missing, f"{rel(page)} names paths that do not exist: {missing}"


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


@over_pages
def test_every_make_target_exists(page: Path) -> None:
    """``make <target>`` in backticks or at the start of a code line."""
    named = set(re.findall(r"`make ([a-z][a-z0-9-]*)", TEXT[page]))
    for block in code_blocks(TEXT[page]):
        named.update(re.findall(r"^\s*(?:\$ )?make ([a-z][a-z0-9-]*)", block, flags=re.M))
    named = {n for n in named if not n.endswith("-")}  # make reproduce-table-<name>
    unknown = sorted(n for n in named if n not in makefile_targets())
    assert not unknown, f"{rel(page)} names make targets the Makefile lacks: {unknown}"


# --------------------------------------------------------------------------- config options


@over_pages
def test_every_config_option_exists(page: Path) -> None:
    """The configs table's options, and every ``group=option`` a page writes."""
    groups = {p.relative_to(conf_dir()).as_posix() for p in conf_dir().rglob("*") if p.is_dir()}
    wrong = []
    for row in re.findall(r"^\| `([a-z_/]+)/` \| (.*?) \|", TEXT[page], flags=re.M):
        group, options = row
        for option in re.findall(r"`([a-z0-9_{},]+)`", options):
            for name in expand_braces(option):
                if not (conf_dir() / group / f"{name}.yaml").is_file():
                    wrong.append(f"{group}/{name}")
    shown_failing = {tok for argv in EXPECTED_ERRORS for tok in argv.split()[1:]}
    for group, option in re.findall(r"\b([a-z_]+(?:/[a-z_]+)?)=([a-z0-9_]+)\b", TEXT[page]):
        if f"{group}={option}" in shown_failing:
            continue  # an example of the error for an option that does not exist
        if group in groups and not (conf_dir() / group / f"{option}.yaml").is_file():
            wrong.append(f"{group}={option}")
    assert not wrong, f"{rel(page)} names config options that do not exist: {sorted(set(wrong))}"


# --------------------------------------------------------------------------- commands


def page_commands() -> tuple[list[tuple[Path, list[str]]], dict[str, str]]:
    """Every ``calguide-*`` command line in the pages' code blocks (continuations joined,
    comments and prompts dropped) with its page, and the error each one shown failing must
    print (a ``calguide: error: …`` line right after it)."""
    commands, errors = [], {}
    for page, block in ((p, b) for p in PAGES for b in code_blocks(TEXT[p])):
        lines = re.sub(r"\\\n\s*", " ", block).splitlines()
        for k, raw in enumerate(lines):
            line = raw.split(" #", 1)[0].strip().removeprefix("$ ")
            if not line.startswith("calguide-") or line.split()[0].endswith(":"):
                continue  # not a command (``calguide-sample: ...`` is a run's first line)
            argv = shlex.split(line)
            commands.append((page, argv))
            follow = lines[k + 1].strip() if k + 1 < len(lines) else ""
            if follow.startswith("calguide: error: "):
                errors[" ".join(argv)] = follow.removeprefix("calguide: error: ")
    return commands, errors


COMMANDS, EXPECTED_ERRORS = page_commands()
README_COMMANDS = [argv for page, argv in COMMANDS if page == README_PATH]
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


@pytest.mark.parametrize(
    ("page", "argv"), COMMANDS, ids=[f"{rel(p)}: {' '.join(c)}"[:100] for p, c in COMMANDS]
)
def test_every_command_composes(page: Path, argv: list[str], tmp_path) -> None:
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
                assert str(err) == expected, f"{rel(page)} shows another error for {argv}"
            else:
                assert expected is None, f"{rel(page)} shows {argv} failing, but it composes"
        return
    assert script in ARGPARSE_SCRIPTS, f"{rel(page)} uses an unknown console script {script}"
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
    """The README itself shows the three jobs a newcomer starts with."""
    scripts = {c[0] for c in README_COMMANDS}
    assert {"calguide-sample", "calguide-calibrate", "calguide-train"} <= scripts


# --------------------------------------------------------------------------- links and pages


def relative_links(text: str) -> list[str]:
    """Markdown link and image targets that are not URLs (``page.md``, ``#anchor``, both)."""
    targets = re.findall(r"\]\(([^)\s]+)\)", prose(text))
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


def anchors(text: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    seen: dict[str, int] = {}
    for title in re.findall(r"^#{1,6} (.+?)\s*$", prose(text), flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")
        seen[slug] = seen.get(slug, -1) + 1
        if seen[slug]:
            seen[f"{slug}-{seen[slug]}"] = 0
    return set(seen)


@over_pages
def test_every_relative_link_resolves(page: Path) -> None:
    """Links are relative to the page's own folder, so a moved section's links move with it;
    an anchor must be a heading of the page it points into."""
    broken = []
    for target in relative_links(TEXT[page]):
        name, _, anchor = target.partition("#")
        path = (page.parent / name).resolve() if name else page
        if not path.exists():
            broken.append(target)
        elif anchor and path.suffix == ".md" and anchor not in anchors(path.read_text()):
            broken.append(f"{target} (no such heading)")
    assert not broken, f"{rel(page)} has links that resolve to nothing: {broken}"


def test_readme_is_short() -> None:
    """The README is what a newcomer reads; everything else belongs on a page under docs/."""
    lines = len(README.splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines (at most {README_MAX_LINES})"


def test_every_docs_page_is_linked_from_readme() -> None:
    """A page is found from the README, directly, or not at all."""
    linked = {(ROOT / t.partition("#")[0]).resolve() for t in relative_links(README)}
    unlinked = [rel(p) for p in sorted(DOCS.glob("*.md")) if p.resolve() not in linked]
    assert not unlinked, f"README.md does not link these pages: {unlinked}"


@pytest.mark.parametrize("page", sorted(DOCS.glob("*.md")), ids=rel)
def test_every_docs_page_says_what_it_is(page: Path) -> None:
    """A one-line title, then the paragraph saying what the page holds, before any table."""
    lines = TEXT[page].splitlines()
    assert lines[0].startswith("# "), f"{rel(page)} does not start with a one-line title"
    titles = re.findall(r"^# .*$", prose(TEXT[page]), flags=re.M)
    assert len(titles) == 1, f"{rel(page)} has more than one title (#): {titles}"
    assert lines[1] == "" and lines[2][:1] not in ("", "#", "|", "!"), (
        f"{rel(page)}: the title is not followed by a sentence saying what the page is"
    )


# --------------------------------------------------------------------------- for real


@pytest.mark.slow
def test_a_readme_sampling_command_runs(tmp_path) -> None:
    """A digits calguide-sample from the README, at 10 samples, through the console script."""
    argv = next(c for c in README_COMMANDS if c[0] == "calguide-sample" and "--multirun" not in c)
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
    assert anchors("# A\n## Weights & Biases\n## What `make run` does\n## A") == {
        "a", "weights--biases", "what-make-run-does", "a-1",
    }  # fmt: skip
    assert relative_links("[a](b.md#c) [d](https://e) ![f](g.png)\n```\n[h](i)\n```") == [
        "b.md#c", "g.png",
    ]  # fmt: skip
    assert single_runs(["g=a,b", "s=1"], True) == [["g=a", "s=1"], ["g=b", "s=1"]]
    assert list(itertools.chain(*[["x"]])) == ["x"]
