"""What to sample: global sample indices with their class labels, in resumable chunks.

Labels are a pure function of (protocol, seed, index), so every device and every rerun agrees
on them. Work is cut into chunks of consecutive indices (at most ``batch_size``); a chunk whose
indices are all written already is skipped, and chunks are dealt round-robin to ranks, so a
multi-device run has no duplicates and no gaps (no DistributedSampler padding).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

LABEL_PROTOCOLS = ("random", "balanced", "fixed")


def sample_labels(
    num_samples: int,
    num_classes: int,
    protocol: str = "random",
    *,
    seed: int = 0,
    fixed_class: int = 0,
) -> Tensor:
    """Labels for indices 0..N−1: uniform at random (ADM's protocol), balanced, or one class."""
    if protocol not in LABEL_PROTOCOLS:
        raise ValueError(f"sampling.labels={protocol!r}: must be one of {list(LABEL_PROTOCOLS)}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if protocol == "random":
        generator = torch.Generator().manual_seed(int(seed))
        return torch.randint(num_classes, (num_samples,), generator=generator)
    if protocol == "balanced":
        return torch.arange(num_samples) % num_classes
    if not 0 <= fixed_class < num_classes:
        raise ValueError(f"sampling.fixed_class={fixed_class}: must be in [0, {num_classes})")
    return torch.full((num_samples,), fixed_class, dtype=torch.long)


def chunk_ranges(num_samples: int, batch_size: int) -> list[tuple[int, int]]:
    if batch_size < 1:
        raise ValueError(f"sampling.batch_size must be >= 1, got {batch_size}")
    return [(s, min(s + batch_size, num_samples)) for s in range(0, num_samples, batch_size)]


class ChunkDataset(Dataset):
    """Each item is one whole batch: {"indices": (n,), "labels": (n,)}."""

    def __init__(self, chunks: list[tuple[int, int]], labels: Tensor) -> None:
        self.chunks = chunks
        self.labels = labels

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, item: int) -> dict[str, Tensor]:
        start, end = self.chunks[item]
        indices = torch.arange(start, end)
        return {"indices": indices, "labels": self.labels[start:end]}


class LabelDataModule(L.LightningDataModule):
    """Predict-time data for :class:`~calguide.modules.sampling.SamplingModule`.

    ``done`` returns the indices already written (the writer's shards); chunks fully inside it
    are skipped, which is what makes a rerun resume.
    """

    def __init__(
        self,
        num_samples: int,
        num_classes: int,
        *,
        batch_size: int,
        protocol: str = "random",
        seed: int = 0,
        fixed_class: int = 0,
        done: Callable[[], Iterable[int]] | None = None,
    ) -> None:
        super().__init__()
        if num_samples < 1:
            raise ValueError(f"sampling.num_samples must be >= 1, got {num_samples}")
        self.num_samples = int(num_samples)
        self.batch_size = int(batch_size)
        self.labels = sample_labels(
            num_samples, num_classes, protocol, seed=seed, fixed_class=fixed_class
        )
        self.done = done

    def pending_chunks(self, rank: int = 0, world_size: int = 1) -> list[tuple[int, int]]:
        finished = set(self.done()) if self.done is not None else set()
        chunks = [
            (s, e)
            for s, e in chunk_ranges(self.num_samples, self.batch_size)
            if not all(i in finished for i in range(s, e))
        ]
        return chunks[rank::world_size]

    def predict_dataloader(self) -> DataLoader:
        trainer = self.trainer
        rank = trainer.global_rank if trainer is not None else 0
        world = trainer.world_size if trainer is not None else 1
        dataset = ChunkDataset(self.pending_chunks(rank, world), self.labels)
        return DataLoader(dataset, batch_size=None, shuffle=False, num_workers=0)
