"""Reference statistics: features of real images, their mean/covariance, and a disk cache.

A *reference* is a plain dict::

    {"mean": float64 [D], "cov": float64 [D, D], "count": int, "dim": int,
     "extractor": str, "features": float32/float16 [M, D] or None,
     "file": the cache file it was loaded from (set by :func:`cached_reference`)}

``features`` (a deterministic subset of at most ``max_features`` rows, chosen by image position)
is only needed for precision/recall. Size: 50,000 × 2,048 is 400 MB in float32, 200 MB in
float16 — on disk and in memory; mean + cov alone are 32 MB at D = 2,048.

:func:`cached_reference` stores such a dict in ``<cache_dir>/reference-<hash>.pt``, the hash
being of the JSON of a caller-given key (extractor name, data identity, resolution, count, …),
and recomputes when the key changes. :func:`load_adm_reference_batch` /
:func:`iter_adm_reference_batch` read ADM's reference batches (``VIRTUAL_imagenet128_labeled.npz``).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from calguide.io import atomic_torch_save
from calguide.metrics._subset import SampleBuffer, as_dtype
from calguide.metrics.features import FeatureExtractor, as_uint8_nhwc
from calguide.metrics.fid import FeatureStats

__all__ = [
    "ADM_REFERENCE_KEYS",
    "cached_reference",
    "iter_adm_reference_batch",
    "load_adm_reference_batch",
    "load_reference_file",
    "reference_cache_path",
    "reference_features",
    "to_uint8_nhwc",
]

ADM_REFERENCE_KEYS = ("arr_0",)
REFERENCE_SPLITS = ("heldout", "train")
"""``metrics.reference``: a split of the configured data, or else a path to an ADM ``.npz``."""
_ADM_HINT = (
    "ADM reference batches (e.g. VIRTUAL_imagenet128_labeled.npz) are linked from "
    "https://github.com/openai/guided-diffusion/tree/main/evaluations"
)


def to_uint8_nhwc(images: Tensor) -> Tensor:
    """Image batch → uint8 ``[N, H, W, C]``.

    uint8 input is taken as ``[N, H, W, C]`` (or ``[N, H, W]``); floating input as the
    project's data convention, ``[N, C, H, W]`` in [−1, 1], mapped back with rounding (the
    exact inverse of the loaders' ``u / 127.5 − 1``).
    """
    if not isinstance(images, Tensor):
        images = torch.as_tensor(np.asarray(images))
    if images.dtype == torch.uint8:
        return as_uint8_nhwc(images)
    if not images.is_floating_point():
        raise TypeError(f"expected uint8 or floating images, got dtype {images.dtype}")
    if images.ndim != 4:
        raise ValueError(f"float images must be [N, C, H, W], got shape {tuple(images.shape)}")
    x = images.detach().add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).contiguous()


def _batch_images(batch: Any) -> Tensor:
    if isinstance(batch, Mapping):
        batch = batch["images"]
    elif isinstance(batch, (tuple, list)):
        batch = batch[0]
    return to_uint8_nhwc(batch)


def _iter_batches(images: Tensor | Iterable[Any], batch_size: int) -> Iterator[Tensor]:
    if isinstance(images, (Tensor, np.ndarray)):
        for start in range(0, images.shape[0], batch_size):
            yield _batch_images(images[start : start + batch_size])
    else:
        for batch in images:
            yield _batch_images(batch)


def reference_features(
    extractor: FeatureExtractor,
    images: Tensor | Iterable[Any],
    *,
    batch_size: int = 256,
    keep_features: bool = True,
    max_features: int | None = 50_000,
    features_dtype: torch.dtype | str = torch.float16,
    seed: int = 0,
) -> dict[str, Any]:
    """Stream images through ``extractor`` and return a reference dict (see module docs).

    ``images``: one tensor (uint8 ``[N, H, W, C]`` or float ``[N, C, H, W]`` in [−1, 1]) cut
    into ``batch_size`` chunks, or any iterable of batches — tensors, ``(images, labels, …)``
    tuples (a DataLoader over the project's datasets) or dicts with ``"images"``. Mean and
    covariance cover every image; ``features`` keeps at most ``max_features`` rows (a subset
    chosen by image position with ``seed``, independent of batching; ``None`` keeps all), in
    ``features_dtype`` (float16 by default, like :class:`GenerativeMetrics`' generated rows).
    """
    stats = FeatureStats()
    dtype = as_dtype(features_dtype)
    buffer = SampleBuffer(max_features, dtype=dtype, seed=seed) if keep_features else None
    seen = 0
    for batch in _iter_batches(images, batch_size):
        if batch.shape[0] == 0:
            continue
        feats = extractor(batch)
        stats.update(feats)
        if buffer is not None:
            buffer.add(torch.arange(seen, seen + batch.shape[0]), feats)
        seen += batch.shape[0]
    if stats.count < 2:
        raise ValueError(f"reference statistics need at least 2 images, got {stats.count}")
    features = None
    if buffer is not None:
        state = buffer.state()  # arrival order = position order, already sorted
        features = state["features"]
    return {
        "mean": stats.mean,
        "cov": stats.covariance,
        "count": stats.count,
        "dim": stats.dim,
        "extractor": getattr(extractor, "name", type(extractor).__name__),
        "features": features,
    }


def _canonical_key(key: Mapping[str, Any]) -> str:
    if not isinstance(key, Mapping):
        raise TypeError(f"cache key must be a dict, got {type(key).__name__}")
    try:
        return json.dumps(dict(key), sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"cache key must be JSON-serialisable (str/int/float/bool/None): {exc}"
        ) from exc


def reference_cache_path(cache_dir: str | os.PathLike, key: Mapping[str, Any]) -> Path:
    """``<cache_dir>/reference-<first 16 hex of sha256(JSON(key))>.pt``."""
    digest = hashlib.sha256(_canonical_key(key).encode()).hexdigest()[:16]
    return Path(cache_dir) / f"reference-{digest}.pt"


def cached_reference(
    cache_dir: str | os.PathLike,
    key: Mapping[str, Any],
    compute: Callable[[], Mapping[str, Any]],
) -> dict[str, Any]:
    """Return ``compute()``'s reference dict, cached on disk under a hash of ``key``.

    ``key`` is a JSON-serialisable dict naming everything the statistics depend on (e.g.
    ``{"extractor": ..., "data": ..., "split": ..., "resolution": ..., "count": ...}``); a
    different key → a different file → recomputation. The stored key is compared on load, so
    a hash collision or a foreign file also recomputes. Values must be tensors / numbers /
    strings / None (loaded with ``weights_only=True``). Writes are atomic (temp file +
    ``os.replace``), so concurrent jobs at worst compute twice.
    """
    canonical = _canonical_key(key)
    path = reference_cache_path(cache_dir, key)
    if path.is_file():
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # truncated / foreign file: recompute over it
            warnings.warn(f"ignoring unreadable reference cache {path}: {exc!r}", stacklevel=2)
        else:
            if isinstance(payload, dict) and payload.get("key") == canonical:
                return {**payload["stats"], "file": str(path.resolve())}
    stats = {k: _loadable(v) for k, v in dict(compute()).items()}
    stats.pop("file", None)
    atomic_torch_save({"format": 1, "key": canonical, "stats": stats}, path)
    return {**stats, "file": str(path.resolve())}


def load_reference_file(path: str | os.PathLike) -> dict[str, Any]:
    """The reference dict stored by :func:`cached_reference` in ``path`` (for a comparison
    that recomputes metrics from a run's per-sample features)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(
            f"reference statistics {p} are gone (the run's metrics.cache_dir was moved or "
            "cleaned); rerun calguide-eval on the run's samples.npz to recreate them"
        )
    payload = torch.load(p, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or "stats" not in payload:
        raise ValueError(f"{p}: not a calguide reference cache")
    return {**payload["stats"], "file": str(p.resolve())}


def _loadable(value: Any) -> Any:
    """numpy values → torch / Python, so the file loads with ``weights_only=True``."""
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, np.generic):
        return value.item()
    return value


def _open_npz(path: str | os.PathLike) -> tuple[Path, Any]:
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(
            f"ADM reference batch not found: {p}. Expected an .npz with keys "
            f"{list(ADM_REFERENCE_KEYS)} (arr_0: N×H×W×3 uint8 images; optional arr_1 labels). "
            + _ADM_HINT
        )
    try:
        data = np.load(p, allow_pickle=False)
    except Exception as exc:
        raise ValueError(f"cannot read {p} as an .npz file: {exc!r}") from exc
    missing = [k for k in ADM_REFERENCE_KEYS if k not in data.files]
    if missing:
        raise ValueError(
            f"{p} has keys {sorted(data.files)} but an ADM reference batch needs "
            f"{list(ADM_REFERENCE_KEYS)} (arr_0: N×H×W×3 uint8 images; optional arr_1 labels)"
        )
    return p, data


def _check_images(p: Path, shape: tuple[int, ...], dtype: np.dtype) -> None:
    if dtype != np.uint8 or len(shape) != 4 or shape[-1] not in (1, 3):
        raise ValueError(
            f"{p}: arr_0 must be N×H×W×C uint8 images (C = 1 or 3), got {shape} {dtype}"
        )


def load_adm_reference_batch(path: str | os.PathLike) -> dict[str, Any]:
    """Read an ADM reference batch fully into memory.

    Returns ``{"images": uint8 [N, H, W, C], "labels": int64 [N] or None, "adm_mu",
    "adm_sigma": float64 or None}``. ``adm_mu`` / ``adm_sigma`` are the file's own
    precomputed statistics from ADM's TF evaluator — a different Inception implementation,
    so do not mix them with torch-fidelity features; recompute with
    :func:`reference_features` instead. 50,000 images at 128² take 2.4 GB: see
    :func:`iter_adm_reference_batch` for streaming.
    """
    p, data = _open_npz(path)
    with data:
        images = data["arr_0"]
        _check_images(p, images.shape, images.dtype)
        labels = data["arr_1"] if "arr_1" in data.files else None
        mu = data["mu"] if "mu" in data.files else None
        sigma = data["sigma"] if "sigma" in data.files else None
    if labels is not None and labels.shape[0] != images.shape[0]:
        raise ValueError(f"{p}: arr_1 has {labels.shape[0]} labels for {images.shape[0]} images")
    return {
        "images": torch.from_numpy(np.ascontiguousarray(images)),
        "labels": None if labels is None else torch.from_numpy(labels.astype(np.int64)),
        "adm_mu": None if mu is None else torch.from_numpy(mu.astype(np.float64)),
        "adm_sigma": None if sigma is None else torch.from_numpy(sigma.astype(np.float64)),
    }


def read_npy_header(handle: Any) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, Fortran order, dtype) of the ``.npy`` stream ``handle`` (e.g. an ``.npz`` member),
    leaving it at the first data byte: an array's layout without loading it."""
    version = np.lib.format.read_magic(handle)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(handle)
    return np.lib.format.read_array_header_2_0(handle)


def iter_adm_reference_batch(path: str | os.PathLike, batch_size: int = 500) -> Iterator[Tensor]:
    """Yield ``arr_0`` of an ADM-style .npz as uint8 ``[B, H, W, C]`` batches, streaming.

    Reads the array member sequentially from the zip (stored or deflated), so memory is one
    batch whatever N. Feed it to :func:`reference_features`.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    p, data = _open_npz(path)
    data.close()
    with zipfile.ZipFile(p) as zf, zf.open("arr_0.npy") as fh:
        shape, fortran, dtype = read_npy_header(fh)
        _check_images(p, shape, dtype)
        if fortran:
            raise ValueError(f"{p}: arr_0 is Fortran-ordered; rewrite it in C order")
        row = int(np.prod(shape[1:])) * dtype.itemsize
        for start in range(0, shape[0], batch_size):
            n = min(batch_size, shape[0] - start)
            buf = fh.read(n * row)
            if len(buf) != n * row:
                raise ValueError(f"{p}: arr_0 is truncated at image {start}")
            arr = np.frombuffer(buf, dtype=np.uint8).reshape(n, *shape[1:])
            yield torch.from_numpy(arr.copy())
