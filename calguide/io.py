"""Atomic file writes (a crash or a kill never leaves a half-written output behind), and
handing a written picture to the run's loggers."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename.

    The data are flushed to disk before the rename, and the file gets ordinary permissions
    (``mkstemp`` creates 0600).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def atomic_write_json(data: Any, path: str | os.PathLike) -> Path:
    import json

    return atomic_write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", path)


def atomic_write_text(text: str, path: str | os.PathLike) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def log_image(trainer: Any, key: str, path: str | os.PathLike, caption: str = "") -> None:
    """Send a saved picture to every logger of ``trainer`` that takes images (W&B); the
    others keep the file."""
    for logger in trainer.loggers:
        log = getattr(logger, "log_image", None)
        if callable(log):
            log(key=key, images=[str(path)], caption=[caption or Path(path).name])
