"""Load weight files safely and explain layout mismatches before PyTorch does.

``torch.nn.Module.load_state_dict`` reports shape errors one at a time and mixes them with
a long traceback; when a published checkpoint and a flag set disagree, the useful answer is
the whole diff (which keys are missing, extra, or mis-shaped) together with where the weights
came from. Files are read with ``weights_only=True`` so untrusted pickles cannot run code.
"""

from __future__ import annotations

from collections.abc import Mapping
from os import PathLike
from pathlib import Path
from typing import Any

import torch
from torch import nn

from calguide.bundled import verify as verify_bundled
from calguide.errors import CheckpointError

__all__ = [
    "CONTAINER_KEYS",
    "LayoutDiff",
    "StateDictMismatchError",
    "diff_layouts",
    "load_state_dict_file",
    "load_weights",
    "state_dict_layout",
]

#: Keys under which training frameworks commonly nest the weights, tried in this order.
CONTAINER_KEYS = ("state_dict", "model_state_dict", "model", "net", "module")

_MAX_LISTED = 10

Shape = list[int]
LayoutDiff = tuple[list[str], list[str], list[tuple[str, Shape, Shape]]]


class StateDictMismatchError(CheckpointError):
    """Raised when a state dict does not fit a module; attributes hold the full diff."""

    def __init__(
        self,
        source: str,
        missing: list[str],
        unexpected: list[str],
        mismatched: list[tuple[str, Shape, Shape]],
    ) -> None:
        self.source = source
        self.missing = missing
        self.unexpected = unexpected
        self.mismatched = mismatched
        super().__init__(self._format())

    def _format(self) -> str:
        lines = [f"state dict from {self.source} does not match the module:"]

        def section(title: str, items: list[str]) -> None:
            if not items:
                return
            lines.append(f"  {title} ({len(items)}):")
            lines.extend(f"    {item}" for item in items[:_MAX_LISTED])
            if len(items) > _MAX_LISTED:
                lines.append(f"    ... and {len(items) - _MAX_LISTED} more")

        section("missing keys (in module, not in state dict)", self.missing)
        section("unexpected keys (in state dict, not in module)", self.unexpected)
        section(
            "mis-shaped keys (module shape vs state dict shape)",
            [f"{k}: {exp} vs {got}" for k, exp, got in self.mismatched],
        )
        return "\n".join(lines)


def state_dict_layout(module: nn.Module | Mapping[str, Any]) -> dict[str, list[int]]:
    """Name -> shape of a module's (or a state dict's) entries, in state-dict order."""
    sd = module.state_dict() if isinstance(module, nn.Module) else module
    return {k: list(v.shape) for k, v in sd.items()}


def diff_layouts(expected: Mapping[str, Shape], actual: Mapping[str, Shape]) -> LayoutDiff:
    """Compare two layouts: (missing from actual, unexpected in actual, shape mismatches)."""
    missing = [k for k in expected if k not in actual]
    unexpected = [k for k in actual if k not in expected]
    mismatched = [
        (k, list(expected[k]), list(actual[k]))
        for k in expected
        if k in actual and list(expected[k]) != list(actual[k])
    ]
    return missing, unexpected, mismatched


def _looks_like_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def _unwrap(obj: Any) -> Any:
    """Descend into ``{"state_dict": ...}``-style containers until tensors are reached."""
    for _ in range(3):  # e.g. {"model": {"state_dict": ...}}; deeper nesting is not a convention
        if _looks_like_state_dict(obj) or not isinstance(obj, Mapping):
            return obj
        for key in CONTAINER_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
        else:
            return obj
    return obj


def read_weights_file(path: str | PathLike[str], *, what: str) -> Any:
    """``torch.load`` with ``weights_only=True``, failing with one line that names the file."""
    p = Path(path).expanduser()
    verify_bundled(p)  # a bundled model: its bytes must be the manifest's
    if not p.exists():
        raise FileNotFoundError(f"{what} not found: expected a file at {p}")
    if not p.is_file():
        raise CheckpointError(f"{what}: {p} is not a regular file (expected a weights file)")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # the unpickler raises many types (IndexError on garbage bytes)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if reason.startswith("Weights only load failed"):
            # torch's advice here is to load it unsafely; the file is refused instead.
            reason = "it holds Python objects besides tensors; refused, no code was run"
        raise CheckpointError(
            f"{what}: {p} is not a readable PyTorch weights file ({reason}); expected a "
            "torch.save file of tensors (calguide export, ADM or torchvision weights)"
        ) from None


def extract_state_dict(
    obj: Any, *, what: str, source: str, strip_prefix: str | None = None
) -> dict[str, torch.Tensor]:
    """The ``{name: tensor}`` dict inside a loaded file (containers unwrapped, prefixes cut)."""
    sd = _unwrap(obj)
    if not _looks_like_state_dict(sd):
        found = type(sd).__name__
        if isinstance(sd, Mapping):
            found += f" with keys {list(sd)[:5]}"
        raise CheckpointError(
            f"{what}: {source} does not contain a state dict of tensors (found {found})"
        )
    if strip_prefix:
        kept = {k[len(strip_prefix) :]: v for k, v in sd.items() if k.startswith(strip_prefix)}
        if not kept:
            raise CheckpointError(
                f"{what}: no key in {source} starts with prefix {strip_prefix!r} "
                f"(first keys: {list(sd)[:5]})"
            )
        sd = kept
    elif all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return dict(sd)


def load_state_dict_file(
    path: str | PathLike[str],
    *,
    what: str,
    strip_prefix: str | None = None,
) -> dict[str, torch.Tensor]:
    """Read a weight file into a plain ``{name: tensor}`` dict on the CPU.

    ``what`` describes the expected file (e.g. ``"ADM 128x128 diffusion checkpoint"``) and is
    used in error messages. Common containers are unwrapped (see :data:`CONTAINER_KEYS`).
    ``strip_prefix`` (e.g. ``"model."`` for a Lightning module) keeps only keys with that
    prefix and removes it; a ``"module."`` prefix on every key (DataParallel) is always removed.
    """
    obj = read_weights_file(path, what=what)
    source = str(Path(path).expanduser())
    return extract_state_dict(obj, what=what, source=source, strip_prefix=strip_prefix)


def load_weights(
    module: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    strict: bool = True,
    source: str = "state dict",
    assign: bool = False,
) -> nn.Module:
    """Load ``state_dict`` into ``module`` after checking names and shapes; return the module.

    Mis-shaped entries always raise; missing/unexpected keys raise only when ``strict``.
    ``assign=True`` adopts the tensors instead of copying (needed for modules built on the
    ``meta`` device; the tensors' dtypes then win over the module's).
    """
    expected = state_dict_layout(module)
    got = {k: list(v.shape) for k, v in state_dict.items()}
    missing, unexpected, mismatched = diff_layouts(expected, got)
    if mismatched or (strict and (missing or unexpected)):
        raise StateDictMismatchError(
            source,
            missing if strict else [],
            unexpected if strict else [],
            mismatched,
        )
    module.load_state_dict(dict(state_dict), strict=strict, assign=assign)
    return module
