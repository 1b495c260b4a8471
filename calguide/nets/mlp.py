"""A small noise-aware MLP classifier f(x_t, t) for low-dimensional data (the mixture lab)."""

from __future__ import annotations

from itertools import pairwise

import torch
from torch import Tensor, nn

from calguide.nets.unet import timestep_embedding


class NoisyMLP(nn.Module):
    """Logits over ``num_classes`` from a point x_t ∈ R^d and its base-chain timestep.

    Each hidden layer gets its own projection of the sinusoidal timestep embedding added
    before the SiLU, so the decision boundary can sharpen as noise falls.
    """

    def __init__(
        self,
        in_dim: int = 2,
        num_classes: int = 3,
        width: int = 128,
        depth: int = 3,
        time_dim: int = 64,
    ) -> None:
        super().__init__()
        if min(in_dim, num_classes, width, depth, time_dim) < 1:
            raise ValueError("NoisyMLP: in_dim, num_classes, width, depth, time_dim must be >= 1")
        self.time_dim = time_dim
        dims = [in_dim] + [width] * depth
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in pairwise(dims))
        self.time_proj = nn.ModuleList(nn.Linear(time_dim, width) for _ in range(depth))
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        if x.dim() != 2:
            raise ValueError(f"NoisyMLP expects points of shape (B, d), got {tuple(x.shape)}")
        emb = timestep_embedding(t.reshape(-1).expand(x.shape[0]), self.time_dim).to(x.dtype)
        h = x
        for layer, proj in zip(self.layers, self.time_proj):
            h = torch.nn.functional.silu(layer(h) + proj(emb))
        return self.head(h)
