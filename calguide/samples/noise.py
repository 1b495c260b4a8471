"""Per-sample noise: sample i's x_T and step noises come from its own generator.

The generator is seeded by (seed, global index) only, so a sample is the same whatever the batch
it lands in, the number of devices, or a resume. :class:`BatchNoise` trades that for speed when
samples are tiny (the mixture lab: one generator per batch, reproducible for a fixed batch size).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

NOISE_MODES = ("per_sample", "batch")
"""``sampling.noise``: one generator per sample (a sample never depends on its batch) or per
batch (faster for tiny samples, batch-dependent)."""

PRECISIONS = {"32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
"""``sampling.precision``: the autocast dtype of denoiser and classifier (CUDA only)."""


def sample_seed(seed: int, index: int) -> int:
    """A well-mixed 63-bit seed for (run seed, sample index)."""
    state = np.random.SeedSequence([int(seed), int(index)]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & (2**63 - 1)


class PerSampleNoise:
    """Draws noise of one sample's shape from each sample's generator, stacked as a batch."""

    def __init__(
        self,
        seed: int,
        indices: Sequence[int] | Tensor,
        shape: Sequence[int],
        device: torch.device | str = "cpu",
    ) -> None:
        self.shape = tuple(int(s) for s in shape)
        self.device = torch.device(device)
        self.generators = [
            torch.Generator(device=self.device).manual_seed(sample_seed(seed, int(i)))
            for i in indices
        ]

    def draw(self, dtype: torch.dtype = torch.float32) -> Tensor:
        return torch.stack(
            [
                torch.randn(self.shape, generator=g, device=self.device, dtype=dtype)
                for g in self.generators
            ]
        )

    def __call__(self, step: int, x: Tensor) -> Tensor:
        """The sampler's ``noise_fn``: the next draw of every sample (``step`` is unused: each
        generator advances once per step, so the order of draws is the chain's order)."""
        return self.draw(x.dtype)


class BatchNoise:
    """One generator per batch, seeded by (seed, first index): same interface as
    :class:`PerSampleNoise`, one ``randn`` call per step instead of one per sample."""

    def __init__(
        self,
        seed: int,
        indices: Sequence[int] | Tensor,
        shape: Sequence[int],
        device: torch.device | str = "cpu",
    ) -> None:
        indices = [int(i) for i in indices]
        self.shape = (len(indices), *(int(s) for s in shape))
        self.device = torch.device(device)
        first = min(indices) if indices else 0
        self.generator = torch.Generator(device=self.device).manual_seed(sample_seed(seed, first))

    def draw(self, dtype: torch.dtype = torch.float32) -> Tensor:
        return torch.randn(self.shape, generator=self.generator, device=self.device, dtype=dtype)

    def __call__(self, step: int, x: Tensor) -> Tensor:
        return self.draw(x.dtype)
