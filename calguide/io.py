"""Atomic file writes (a crash or a kill never leaves a half-written output behind), and
handing a written picture to the run's loggers."""

from __future__ import annotations

import contextlib
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


def atomic_write_report(out_dir: str | os.PathLike, stem: str, data: Any, text: str) -> None:
    """An experiment's record: ``<stem>.json`` (``data``, keys in their order) and
    ``<stem>.md`` (``text``) in ``out_dir``, each written atomically."""
    import json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(json.dumps(data, indent=2) + "\n", out / f"{stem}.json")
    atomic_write_text(text, out / f"{stem}.md")


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


# --------------------------------------------------------------------------- content identity


def hash_cache_file() -> Path:
    """Where file hashes are remembered: ``$CALGUIDE_HASH_CACHE``, else the user's cache."""
    env = os.environ.get("CALGUIDE_HASH_CACHE")
    if env:
        return Path(env)
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "calguide" / "sha256.json"


def content_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes, remembered by (absolute path, size, mtime) so a
    multi-GB checkpoint is read once; a replaced file (new size or mtime) is hashed again."""
    import hashlib
    import json

    p = Path(path).resolve()
    stat = p.stat()
    key = f"{p}|{stat.st_size}|{stat.st_mtime_ns}"
    cache_file = hash_cache_file()
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    if isinstance(cache, dict) and isinstance(cache.get(key), str):
        return cache[key]
    digest = hashlib.sha256()
    with open(p, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    value = digest.hexdigest()
    if not isinstance(cache, dict):
        cache = {}
    stale = [k for k in cache if k.startswith(f"{p}|")]
    for k in stale:
        del cache[k]
    cache[key] = value
    with contextlib.suppress(OSError):  # an unwritable cache only costs hashing again
        atomic_write_json(cache, cache_file)
    return value


# ------------------------------------------------------------------------------ run folders


@contextmanager
def folder_lock(folder: str | os.PathLike, *, wait_s: float, what: str) -> Iterator[None]:
    """Hold ``<folder>/.lock`` exclusively (``flock``; released by the kernel if the process
    dies). Another holder: say so once and wait up to ``wait_s`` seconds, then stop with one
    line naming the holder."""
    import fcntl
    import socket
    import time

    from calguide.errors import RunStateError

    path = Path(folder) / ".lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
    try:
        deadline, announced = time.monotonic() + max(0.0, wait_s), False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = path.read_text().strip() or "another process"
                if time.monotonic() >= deadline:
                    raise RunStateError(
                        f"{what} {Path(folder)} is in use by {holder}; waited {wait_s:g} s "
                        "(sampling.lock_wait_s); rerun when it has finished (finished work is "
                        "kept) or choose another folder"
                    ) from None
                if not announced:
                    print(f"calguide: {what} {Path(folder)} is in use by {holder}; waiting")
                    announced = True
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode())
        yield
    finally:
        os.close(fd)  # releases the lock
