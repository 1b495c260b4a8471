"""Off-the-shelf digits models shipped with calguide, like ADM's checkpoints on a cluster.

The class-conditional and unconditional tiny denoisers, the clean classifier that guidance
starts from, the noise-aware classifier and the evaluation network live in ``digits/`` beside
this file, each with an entry in ``manifest.json``: the command that made it, the calguide
version and seed, its sha256 and the held-out metrics it reached (``make bundle`` rebuilds
them; docs/bundled_models.md). Every load of a bundled file checks its hash, so a corrupt or
missing file is one line naming it.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from calguide.errors import CheckpointError

MANIFEST = "manifest.json"


def bundled_dir() -> Path:
    return Path(__file__).resolve().parent


@lru_cache(maxsize=1)
def manifest() -> dict[str, Any]:
    """``{relative file name: entry}`` of every bundled model (empty when none is shipped)."""
    path = bundled_dir() / MANIFEST
    if not path.is_file():
        return {}
    return json.loads(path.read_text())["models"]


def bundled_name(path: str | Path) -> str | None:
    """The manifest name of ``path`` when it is a bundled file, else None."""
    try:
        relative = Path(path).resolve().relative_to(bundled_dir())
    except ValueError:
        return None
    return relative.as_posix()


def verify(path: str | Path) -> None:
    """Refuse a bundled file whose bytes are not the manifest's (one line naming it)."""
    from calguide.io import content_sha256

    name = bundled_name(path)
    if name is None:
        return
    entry = manifest().get(name)
    if entry is None:
        raise CheckpointError(
            f"bundled model {path} is not listed in {bundled_dir() / MANIFEST} (expected one "
            f"of {sorted(manifest())})"
        )
    if not Path(path).is_file():
        raise FileNotFoundError(
            f"bundled model {name} is missing: expected {path} (sha256 {entry['sha256'][:12]}…); "
            "reinstall calguide or restore the file from git"
        )
    actual = content_sha256(path)
    if actual != entry["sha256"]:
        raise CheckpointError(
            f"bundled model {path} is corrupt: sha256 {actual[:12]}… but the manifest says "
            f"{entry['sha256'][:12]}…; reinstall calguide or restore the file from git"
        )


def model_file(trained: str, bundled: str) -> str:
    """The config's default checkpoint: the user's own trained file when it exists, else the
    bundled one when calguide ships it, else the trained path (whose absence is reported)."""
    if Path(trained).is_file():
        return trained
    if bundled in manifest():
        return str(bundled_dir() / bundled)
    return trained
