"""docs/ARCHITECTURE.md's layers, kept true: every calguide module imports only its own layer
or lower ones, the core imports no config library, and the core's folders import one way."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import calguide

PACKAGE = Path(calguide.__file__).resolve().parent

# (layer, name, module prefixes); a module belongs to the longest matching prefix. A folder sits in
# one layer: every prefix below is a whole folder or a top-level module.
LAYERS: tuple[tuple[int, str, tuple[str, ...]], ...] = (
    (0, "files and errors", ("calguide", "calguide.io", "calguide.errors", "calguide.bundled")),
    (
        1,
        "math and models",
        (
            "calguide.diffusion",
            "calguide.nets",
            "calguide.data",
            "calguide.guidance",
            "calguide.calibration",
            "calguide.metrics",
            "calguide.samples",
            "calguide.lab",
            "calguide.stats",
            "calguide.verdicts",
            "calguide.tables",
        ),
    ),
    (2, "Lightning modules and callbacks", ("calguide.modules",)),
    (3, "schemas", ("calguide.config",)),
    (4, "assembly", ("calguide.assembly",)),
    (5, "jobs", ("calguide.jobs", "calguide.perf")),
    (6, "commands", ("calguide.commands",)),
)
CONFIG_LIBRARIES = ("hydra", "omegaconf")


def layer_of(module: str) -> tuple[int, str]:
    best: tuple[int, int, str] | None = None
    for layer, name, prefixes in LAYERS:
        for prefix in prefixes:
            inside = module == prefix or module.startswith(prefix + ".")
            if inside and (best is None or len(prefix) > best[0]):
                best = (len(prefix), layer, name)
    assert best is not None, f"{module} is in no layer of docs/ARCHITECTURE.md"
    return best[1], best[2]


def module_files() -> dict[str, Path]:
    files = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        files[name] = path
    return files


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """Every module ``path`` imports anywhere in its body (functions included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            # ``from calguide import assembly`` imports the module calguide.assembly
            named = (f"{node.module}.{a.name}" for a in node.names)
            found.update(name for name in named if name in modules)
    return found


def violations(files: dict[str, Path]) -> list[str]:
    modules = set(files)
    found = []
    for module, path in files.items():
        own, own_name = layer_of(module)
        for imported in sorted(imports_of(path, modules)):
            if imported.startswith("calguide"):
                layer, name = layer_of(imported)
                if layer > own:
                    found.append(f"{module} ({own_name}) imports {imported} ({name})")
            elif own <= 2 and imported.split(".")[0] in CONFIG_LIBRARIES:
                found.append(f"{module} ({own_name}) imports {imported}: the core reads no config")
    return found


def test_every_module_imports() -> None:
    for info in pkgutil.walk_packages(calguide.__path__, "calguide."):
        importlib.import_module(info.name)


def test_no_lower_layer_imports_a_higher_one() -> None:
    assert violations(module_files()) == []


def folder_of(module: str) -> str:
    """``calguide.x`` for a module inside the folder calguide/x/; the module itself at the top."""
    return ".".join(module.split(".")[:2])


def folder_layers(files: dict[str, Path]) -> dict[str, set[int]]:
    layers: dict[str, set[int]] = {}
    for module in files:
        if module != "calguide":
            layers.setdefault(folder_of(module), set()).add(layer_of(module)[0])
    return layers


def test_every_folder_sits_in_one_layer() -> None:
    """The folder picture shows the layers: no folder holds modules of two of them."""
    mixed = {f: sorted(ls) for f, ls in folder_layers(module_files()).items() if len(ls) > 1}
    assert mixed == {}


def test_folders_import_one_way() -> None:
    """Between folders, every import goes to a lower layer or within the layer, and no two
    folders import each other."""
    files = module_files()
    edges: dict[str, set[str]] = {}
    for module, path in files.items():
        for imported in imports_of(path, set(files)):
            if imported in files and imported != "calguide":
                a, b = folder_of(module), folder_of(imported)
                if a != b and module != "calguide":
                    edges.setdefault(a, set()).add(b)
    upward = [
        f"{a} -> {b}"
        for a, targets in edges.items()
        for b in targets
        if layer_of(b)[0] > layer_of(a)[0]
    ]
    assert upward == []
    mutual = sorted(
        {tuple(sorted((a, b))) for a in edges for b in edges[a] if a in edges.get(b, ())}
    )
    assert mutual == []


def test_a_folder_straddling_layers_fails_the_check(tmp_path) -> None:
    """A layer-5 job left inside a layer-1 folder (the old sampling/job.py) is reported."""
    files = dict(module_files())
    files["calguide.samples.job"] = PACKAGE / "jobs" / "sample.py"
    global LAYERS
    saved = LAYERS
    LAYERS = (*LAYERS, (5, "jobs", ("calguide.samples.job",)))
    try:
        layers = folder_layers(files)
    finally:
        LAYERS = saved
    assert layers["calguide.samples"] == {1, 5}


def test_core_folders_import_one_way() -> None:
    """Between the core's folders (layers 1-2: diffusion, nets, data, ...) there is no cycle."""
    files = module_files()

    def folder(module: str) -> str:
        return ".".join(module.split(".")[:2])

    edges: dict[str, set[str]] = {}
    for module, path in files.items():
        if layer_of(module)[0] not in (1, 2):
            continue
        for imported in imports_of(path, set(files)):
            core = imported in files and layer_of(imported)[0] in (1, 2)
            if core and folder(imported) != folder(module):
                edges.setdefault(folder(module), set()).add(folder(imported))

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in edges.get(start, ()):
            if nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})):
                return True
        return False

    cycles = sorted(f"{a} <-> {b}" for a in edges for b in edges[a] if reaches(b, a, {b}))
    assert cycles == []


def test_the_check_catches_a_violation(tmp_path) -> None:
    """A core module importing the assembly is reported (what a regression would look like)."""
    bad = tmp_path / "bad.py"
    bad.write_text("from calguide.assembly import sampling_setup\nimport omegaconf\n")
    files = {"calguide.diffusion.bad": bad, "calguide.assembly": PACKAGE / "assembly/__init__.py"}
    assert violations(files) == [
        "calguide.diffusion.bad (math and models) imports calguide.assembly (assembly)",
        "calguide.diffusion.bad (math and models) imports omegaconf: the core reads no config",
    ]


@pytest.mark.parametrize("layer", LAYERS, ids=lambda spec: spec[1])
def test_architecture_doc_names_every_layer(layer) -> None:
    text = (PACKAGE.parent / "docs" / "ARCHITECTURE.md").read_text()
    assert layer[1] in text
