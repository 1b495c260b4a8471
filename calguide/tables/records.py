"""The runs of a sweep, read back: every ``sampling.json`` below some folders, one flat record
per run (dotted keys: what the run ran, its config, its metrics).

``calguide-sample`` writes ``sampling.json`` into each Hydra job folder when a run finishes:
the run's record of what it ran (``run``: sampler, grid, guidance, classifier, precision,
device, samples, seed), the resolved job config and the metrics. Job folders with a
``.hydra/`` but no ``sampling.json`` (unfinished or failed runs) are reported apart; the two
byte-identical copies of one run's file (Hydra folder and sample folder) count once.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any


class AggregateError(ValueError):
    """Bad input: no runs, a malformed file, an unknown row key."""


def _natural_key(path: Path) -> list:
    """Sort ``.../2`` before ``.../10`` (Hydra numbers its job folders)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts → one dict with dotted keys; lists and scalars are kept as values."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise AggregateError(f"{path}: cannot read as JSON ({err})") from err
    if not isinstance(data, dict):
        raise AggregateError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def run_record(data: dict[str, Any], run_dir: str | Path) -> dict[str, Any]:
    """One ``sampling.json`` (parsed) → a flat record: ``run_dir``, ``out_dir``, the metric values,
    ``classifier_smece``, then the dotted keys of what the run ran (its ``run`` record: the
    config's own names, ``guidance.scale``, ``classifier.name``, ...) and of its config."""
    run, config = data.get("run"), data.get("config")
    if not isinstance(run, dict) or not isinstance(config, dict):
        raise AggregateError(
            f"{run_dir}: sampling.json has no run record (written by an older calguide); rerun "
            "its calguide-sample command to rewrite it (finished samples are reused)"
        )
    flat = {**flatten(config), **flatten(run)}  # what ran wins over what was asked
    if flat.get("guidance.name") == "none":  # the classifier is not used: not part of the row
        flat = {k: (None if k.startswith("classifier.") else v) for k, v in flat.items()}
    record: dict[str, Any] = {"run_dir": str(run_dir), "out_dir": data.get("out_dir")}
    metrics = data.get("metrics") or {}
    if not isinstance(metrics, dict):
        raise AggregateError(f"{run_dir}: 'metrics' is not an object")
    for key, value in metrics.items():
        record[f"metrics.{key}" if key in flat or key in record else key] = value
    record["classifier_smece"] = data.get("classifier_smece")
    record["eval_features"] = data.get("eval_features")
    for key, value in flat.items():
        record.setdefault(key, value)
    return record


def _scan(dirs: Iterable[str | Path]) -> tuple[list[Path], list[Path]]:
    """(every sampling.json below ``dirs``, every job folder with .hydra/ but no sampling.json)."""
    found: dict[Path, None] = {}
    unfinished: dict[Path, None] = {}
    for folder in map(Path, dirs):
        if not folder.is_dir():
            raise AggregateError(f"{folder}: not a folder")
        for path in folder.rglob("sampling.json"):
            found[path] = None
        for hydra in folder.rglob(".hydra"):
            job = hydra.parent
            if hydra.is_dir() and not (job / "sampling.json").is_file():
                unfinished[job] = None
    return sorted(found, key=_natural_key), sorted(unfinished, key=_natural_key)


def unfinished_runs(dirs: Iterable[str | Path]) -> list[Path]:
    """Job folders below ``dirs`` that have a ``.hydra/`` but no ``sampling.json``."""
    return _scan(dirs)[1]


def collect_runs(dirs: Iterable[str | Path]) -> list[dict[str, Any]]:
    """A flat record (see ``run_record``) per ``sampling.json`` below ``dirs``, in path order.

    Byte-identical files (the copy in the Hydra job folder and the one in the sample folder) count
    once. Raises ``AggregateError`` when there is none, or when a file is not valid JSON."""
    dirs = [Path(d) for d in dirs]
    paths, unfinished = _scan(dirs)
    if not paths:
        where = ", ".join(str(d) for d in dirs)
        detail = f" ({len(unfinished)} unfinished run folder(s))" if unfinished else ""
        raise AggregateError(f"no sampling.json found below {where}{detail}")
    records, seen = [], set()
    for path in paths:
        text = path.read_bytes()
        if text in seen:
            continue
        seen.add(text)
        records.append(run_record(_read_json(path), path.parent))
    return records


def repeated_runs(records: Sequence[dict[str, Any]]) -> list[list[str]]:
    """Run folders that made the same samples (same sample folder ``out_dir`` and number of
    samples: the same config ran more than once), one list per such set; they all count."""
    by_samples: dict[tuple, list[str]] = {}
    for record in records:
        if record.get("out_dir"):
            key = (record["out_dir"], hashable(record.get("sampling.num_samples")))
            by_samples.setdefault(key, []).append(record["run_dir"])
    return [dirs for dirs in by_samples.values() if len(dirs) > 1]


def hashable(value: Any) -> Any:
    return json.dumps(value, sort_keys=True) if isinstance(value, (list, dict)) else value


def number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return None if math.isnan(value) else float(value)
