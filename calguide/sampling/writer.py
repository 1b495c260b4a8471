"""Shards written atomically as batches finish, then merged into ADM's ``.npz`` layout.

A shard is ``shards/<first>-<last>.npz`` holding uint8 images, labels, global indices and the
batch's guidance diagnostics (sums per timestep), so a resumed run merges to the same arrays and
the same diagnostics as an uninterrupted one. The merged file has ``arr_0`` (N×H×W×C uint8) and
``arr_1`` (labels), as openai's evaluator expects.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from calguide.io import atomic_path

DIAGNOSTIC_COLUMNS = ("grad_norm", "p_y", "entropy", "scale")


def shard_path(shard_dir: Path, indices: torch.Tensor) -> Path:
    return shard_dir / f"{int(indices.min()):08d}-{int(indices.max()):08d}.npz"


def save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> Path:
    """``np.savez`` through a temp file + rename (a kill never leaves half a file)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays)
    return Path(path)


def diagnostics_arrays(per_timestep: dict[int, dict[str, float]]) -> dict[str, np.ndarray]:
    ts = sorted(per_timestep)
    arrays = {"diag_t": np.array(ts, dtype=np.int64)}
    arrays["diag_n"] = np.array([per_timestep[t]["n"] for t in ts], dtype=np.float64)
    for key in DIAGNOSTIC_COLUMNS:
        # Stored as sums (mean × n) so shards pool exactly.
        arrays[f"diag_{key}"] = np.array(
            [per_timestep[t][key] * per_timestep[t]["n"] for t in ts], dtype=np.float64
        )
    return arrays


def written_indices(shard_dir: Path) -> set[int]:
    done: set[int] = set()
    for path in sorted(shard_dir.glob("*.npz")):
        with np.load(path) as shard:
            done.update(int(i) for i in shard["indices"])
    return done


def merge_shards(shard_dir: Path, num_samples: int) -> dict[str, Any]:
    """Images, labels and pooled diagnostics of indices 0..N−1; error on any gap."""
    images: dict[int, np.ndarray] = {}
    labels: dict[int, int] = {}
    diag: dict[int, np.ndarray] = {}
    for path in sorted(shard_dir.glob("*.npz")):
        with np.load(path) as shard:
            for row, index in enumerate(shard["indices"]):
                if int(index) < num_samples and int(index) not in images:
                    images[int(index)] = shard["images"][row]
                    labels[int(index)] = int(shard["labels"][row])
            for j, t in enumerate(shard["diag_t"]):
                sums = np.array(
                    [shard["diag_n"][j]] + [shard[f"diag_{k}"][j] for k in DIAGNOSTIC_COLUMNS]
                )
                diag[int(t)] = diag.get(int(t), 0) + sums
    missing = [i for i in range(num_samples) if i not in images]
    if missing:
        raise RuntimeError(
            f"{shard_dir}: {len(missing)} of {num_samples} samples missing (first: {missing[:5]})"
            "; rerun the same command to finish them"
        )
    order = range(num_samples)
    per_timestep = {
        t: {
            "n": float(s[0]),
            **{k: float(s[1 + j] / s[0]) for j, k in enumerate(DIAGNOSTIC_COLUMNS)},
        }
        for t, s in sorted(diag.items())
    }
    return {
        "images": np.stack([images[i] for i in order]),
        "labels": np.array([labels[i] for i in order], dtype=np.int64),
        "diagnostics": per_timestep,
    }


class ShardWriter(BasePredictionWriter):
    """Writes each finished batch as a shard; the sampling job merges them at the end."""

    def __init__(self, shard_dir: str | os.PathLike) -> None:
        super().__init__(write_interval="batch")
        self.shard_dir = Path(shard_dir)
        self.snapshots: list[dict[str, Any]] = []

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: dict[str, Any],
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        arrays = {
            "images": prediction["images"].numpy(),
            "labels": prediction["labels"].numpy(),
            "indices": prediction["indices"].numpy(),
            **diagnostics_arrays(prediction["diagnostics"]),
        }
        save_npz(shard_path(self.shard_dir, prediction["indices"]), **arrays)
        if prediction["snapshots"]:
            self.snapshots.append(
                {"indices": prediction["snapshot_indices"], "steps": prediction["snapshots"]}
            )
