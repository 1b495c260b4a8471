"""Shards written atomically as batches finish, then merged into ADM's ``.npz`` layout.

A shard is ``shards/<first>-<last>.npz`` holding uint8 images, labels, global indices and the
batch's guidance diagnostics (sums per timestep), so a resumed run merges to the same arrays and
the same diagnostics as an uninterrupted one. The merged file has ``arr_0`` (N×H×W×C uint8) and
``arr_1`` (labels), as openai's evaluator expects.
"""

from __future__ import annotations

import os
import zipfile
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
    """What ``np.savez`` writes (a zip of uncompressed ``.npy`` members), through a temp file
    and a rename (a kill never leaves half a file), and reproducible byte for byte: members
    carry a fixed timestamp, so equal arrays give equal files (a resumed run's ``samples.npz``
    is the uninterrupted run's)."""
    with (
        atomic_path(path) as tmp,
        zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as archive,
    ):
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with archive.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)
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


SHARD_KEYS = (
    "images",
    "labels",
    "indices",
    "diag_t",
    "diag_n",
    *(f"diag_{k}" for k in DIAGNOSTIC_COLUMNS),
)


def shard_problem(
    path: Path, num_samples: int, image_shape: tuple[int, ...] | None = None
) -> str | None:
    """Why the shard at ``path`` cannot be merged, or None: it must load completely (zip CRCs
    included), hold every key with consistent lengths, indices in [0, N) that match its name,
    and uint8 images of ``image_shape`` (H, W, C) when given."""
    try:
        with np.load(path) as shard:
            arrays = {key: shard[key] for key in shard.files}
    except Exception as exc:  # truncated or garbage files fail in zipfile, numpy or pickle
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"does not load ({reason})"
    missing = [key for key in SHARD_KEYS if key not in arrays]
    if missing:
        return f"lacks the key(s) {missing}"
    indices, images = arrays["indices"], arrays["images"]
    n = len(indices)
    if n == 0 or len(arrays["labels"]) != n or images.shape[0] != n:
        return f"has {images.shape[0]} images, {len(arrays['labels'])} labels, {n} indices"
    if int(indices.min()) < 0 or int(indices.max()) >= num_samples:
        return f"holds indices outside [0, {num_samples})"
    if path.stem != f"{int(indices.min()):08d}-{int(indices.max()):08d}":
        return f"holds indices {int(indices.min())}..{int(indices.max())}, not its name's"
    if images.dtype != np.uint8 or (image_shape is not None and images.shape[1:] != image_shape):
        shape = images.shape[1:]
        return f"holds {images.dtype} images of shape {shape}, expected uint8 {image_shape}"
    lengths = {len(arrays[k]) for k in SHARD_KEYS if k.startswith("diag_")}
    if len(lengths) != 1:
        return "has diagnostics columns of different lengths"
    return None


def heal_shards(
    shard_dir: Path, num_samples: int, image_shape: tuple[int, ...] | None = None
) -> list[Path]:
    """Move every shard that cannot be merged to ``shards/corrupt/`` (one warning each; its
    samples are then generated again) and delete temp files a killed write left behind."""
    moved = []
    for tmp in shard_dir.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)
    for path in sorted(shard_dir.glob("*.npz")):
        problem = shard_problem(path, num_samples, image_shape)
        if problem is None:
            continue
        corrupt = shard_dir / "corrupt"
        corrupt.mkdir(exist_ok=True)
        dest, copy = corrupt / path.name, 1
        while dest.exists():
            dest, copy = corrupt / f"{path.name}.{copy}", copy + 1
        os.replace(path, dest)
        print(
            f"calguide: warning: shard {path} {problem}; moved to {dest}, its samples are "
            "generated again"
        )
        moved.append(dest)
    return moved


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
        path = shard_path(self.shard_dir, prediction["indices"])
        try:
            save_npz(path, **arrays)
        except OSError as err:  # e.g. ENOSPC: the temp file is gone, no half shard is left
            from calguide.errors import RunStateError

            raise RunStateError(
                f"could not write shard {path} ({err.strerror or err}); the shards written "
                "so far are kept: free the space (or fix the folder) and rerun the same "
                "command to resume"
            ) from None
        if prediction["snapshots"]:
            self.snapshots.append(
                {"indices": prediction["snapshot_indices"], "steps": prediction["snapshots"]}
            )
