"""Deterministic bounded subsets of a stream of samples, chosen by sample index.

A sample's *key* is a seeded bijective hash of its index (splitmix64's finaliser). Keeping the
``capacity`` samples with the smallest keys gives a pseudo-random subset that depends only on
the set of indices seen — not on batch sizes, batch order or how samples were split over
ranks — and the union of per-rank subsets always contains the global one, so ranks can prune
locally before gathering.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "SampleBuffer",
    "as_dtype",
    "cat_consuming",
    "index_keys",
    "release_free_heap",
    "select_subset",
    "smallest_keys",
]

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_SIGN = np.uint64(1 << 63)


def index_keys(indices: Tensor, seed: int = 0) -> Tensor:
    """int64 keys whose order is a seeded pseudo-random permutation of the indices."""
    x = indices.detach().cpu().to(torch.int64).numpy().astype(np.uint64)
    with np.errstate(over="ignore"):
        x = x + np.uint64(seed % (1 << 64)) * _GOLDEN + _GOLDEN
        x = (x ^ (x >> np.uint64(30))) * _M1
        x = (x ^ (x >> np.uint64(27))) * _M2
        x = x ^ (x >> np.uint64(31))
    # Flipping the top bit maps unsigned order onto signed int64 order.
    return torch.from_numpy((x ^ _SIGN).view(np.int64).copy())


def smallest_keys(keys: Tensor, count: int) -> Tensor:
    """Positions of the ``count`` smallest keys, in increasing key order."""
    order = torch.argsort(keys, stable=True)
    return order[:count]


def as_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """torch dtype from a dtype or its name ("float16", "torch.float32"; Hydra-friendly)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise ValueError(f"not a floating dtype: {dtype!r}; use e.g. 'float16' or 'float32'")
    return value


def cat_consuming(chunks: list[Tensor]) -> Tensor:
    """``torch.cat(chunks)`` that frees each chunk once copied (peak ≈ result + one chunk)."""
    if not chunks:
        raise ValueError("nothing to concatenate")
    total = sum(c.shape[0] for c in chunks)
    out = torch.empty((total, *chunks[0].shape[1:]), dtype=chunks[0].dtype)
    pos = 0
    chunks.reverse()
    while chunks:
        c = chunks.pop()
        out[pos : pos + c.shape[0]] = c
        pos += c.shape[0]
        del c
    return out


_SLAB_MIN_ROWS = 1024
_SLAB_BYTES = 64 << 20  # above glibc's largest mmap threshold: slabs never sit in the heap


def release_free_heap() -> None:
    """Hand freed C-heap pages back to the OS (glibc's ``malloc_trim``; no-op elsewhere).

    Per-batch temporaries of a few MB come from the heap and leave holes that the resident
    size keeps counting (measured: ~370 MB after streaming 50k × 2048 features); trimming
    before the large precision/recall allocations lowers the peak by that much.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
    except OSError:
        return
    if trim is not None:
        trim(0)


class SampleBuffer:
    """Features of at most ``capacity`` samples (smallest index keys), stored on the CPU.

    Rows are copied into large preallocated slabs (64 MiB, memory-mapped), not kept as the
    callers' small per-batch tensors: many small long-lived blocks interleaved with per-batch
    temporaries fragment the C heap (measured: 3× the payload in resident memory at 50k ×
    2048). Once more than twice ``capacity`` rows are held they are pruned to ``capacity``,
    so memory stays below ~2× the final size. ``capacity=None`` keeps all.
    """

    def __init__(self, capacity: int | None, dtype: torch.dtype = torch.float32, seed: int = 0):
        if capacity is not None and capacity < 1:
            raise ValueError(f"capacity must be >= 1 or None, got {capacity}")
        self.capacity = capacity
        self.dtype = dtype
        self.seed = seed
        self._idx: list[Tensor] = []
        self._slabs: list[Tensor] = []
        self._fill = 0  # rows used in the last slab
        self._rows = 0

    def __len__(self) -> int:
        return self._rows

    def _new_slab(self, dim: int) -> None:
        # Untouched pages of a fresh mmap cost no resident memory, so a large slab is free
        # until filled; it is capped near the capacity for small buffers.
        itemsize = torch.empty(0, dtype=self.dtype).element_size()
        rows = max(_SLAB_MIN_ROWS, _SLAB_BYTES // max(1, dim * itemsize))
        if self.capacity is not None:
            rows = min(rows, max(_SLAB_MIN_ROWS, 2 * self.capacity + 1))
        self._slabs.append(torch.empty(rows, dim, dtype=self.dtype))
        self._fill = 0

    def add(self, indices: Tensor, features: Tensor) -> None:
        if indices.shape[0] != features.shape[0] or features.ndim != 2:
            raise ValueError(
                f"need indices [N] and features [N, D], got {tuple(indices.shape)} and "
                f"{tuple(features.shape)}"
            )
        n = features.shape[0]
        if n == 0:
            return
        if self._slabs and features.shape[1] != self._slabs[-1].shape[1]:
            raise ValueError(
                f"features have dim {features.shape[1]}, expected {self._slabs[-1].shape[1]}"
            )
        features = features.detach()
        if self.dtype == torch.float16:
            limit = torch.finfo(torch.float16).max
            if features.abs().max() > limit:
                raise ValueError(
                    f"features exceed float16's range (±{limit:g}); store them as float32"
                )
        self._idx.append(indices.detach().cpu().to(torch.int64))
        pos = 0
        while pos < n:
            if not self._slabs or self._fill == self._slabs[-1].shape[0]:
                self._new_slab(features.shape[1])
            slab = self._slabs[-1]
            take = min(n - pos, slab.shape[0] - self._fill)
            slab[self._fill : self._fill + take].copy_(features[pos : pos + take])
            self._fill += take
            pos += take
        self._rows += n
        if self.capacity is not None and self._rows > 2 * self.capacity:
            self._prune(self.capacity)

    def _prune(self, count: int) -> None:
        idx, feat = self.tensors()
        keep = torch.sort(smallest_keys(index_keys(idx, self.seed), count)).values
        new_idx, new_feat = idx[keep], feat[keep]
        del idx, feat
        self._idx, self._slabs = [new_idx], [new_feat]
        self._fill = self._rows = int(keep.shape[0])

    def tensors(self) -> tuple[Tensor, Tensor]:
        """(indices, features) held now, in arrival order; consolidates the slabs."""
        if not self._idx:
            return torch.empty(0, dtype=torch.int64), torch.empty(0, 0, dtype=self.dtype)
        if len(self._idx) > 1:
            self._idx = [torch.cat(self._idx)]
        if len(self._slabs) > 1 or self._fill != self._slabs[0].shape[0]:
            chunks = [*self._slabs[:-1], self._slabs[-1][: self._fill]]
            self._slabs = []
            self._slabs = [cat_consuming(chunks)]
            self._fill = self._rows
        return self._idx[0], self._slabs[0]

    def state(self) -> dict[str, Tensor]:
        """Pruned to ``capacity``; CPU tensors."""
        if self.capacity is not None and self._rows > self.capacity:
            self._prune(self.capacity)
        idx, feat = self.tensors()
        return {"indices": idx, "features": feat}


def select_subset(
    indices: Tensor, features: Tensor, capacity: int | None, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """Drop repeated indices, keep the ``capacity`` smallest keys, sort by index."""
    if indices.numel() == 0:
        return indices, features
    ascending = bool((indices[1:] > indices[:-1]).all())
    if ascending and (capacity is None or indices.shape[0] <= capacity):
        return indices, features  # already unique, sorted and small enough: no copy
    uniq, inverse = torch.unique(indices, return_inverse=True)
    first = torch.full((uniq.shape[0],), indices.shape[0], dtype=torch.int64)
    first.scatter_reduce_(0, inverse, torch.arange(indices.shape[0]), reduce="amin")
    idx, feat = indices[first], features[first]  # unique indices, ascending
    if capacity is not None and idx.shape[0] > capacity:
        keep = torch.sort(smallest_keys(index_keys(idx, seed), capacity)).values
        idx, feat = idx[keep], feat[keep]
    return idx, feat


def combine_kept_rows(
    states: list[Mapping[str, Tensor]], capacity: int | None, seed: int = 0
) -> dict[str, Tensor]:
    """{"indices", "features"}: the kept rows of all ranks' :class:`SampleBuffer` states, each
    index once, by index (the same subset whatever the number of ranks)."""
    with_rows = [s for s in states if s["indices"].numel()] or states[:1]
    if len(with_rows) == 1:  # no copy of the (possibly 400 MB) feature block
        idx, feat = with_rows[0]["indices"], with_rows[0]["features"]
    else:
        idx = torch.cat([s["indices"] for s in with_rows])
        feat = torch.cat([s["features"] for s in with_rows])
    idx, feat = select_subset(idx, feat, capacity, seed)
    return {"indices": idx, "features": feat}
