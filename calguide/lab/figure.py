"""Samples over the mixture's density contours: one row per classifier, one panel per run."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from calguide.data.gmm import GaussianMixture
from calguide.io import atomic_path

COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown")


def plot_lab_samples(
    mixture: GaussianMixture,
    panels: Mapping[str, Mapping[str, tuple[Tensor, Tensor]]],
    path: str | os.PathLike,
    *,
    max_points: int = 600,
) -> Path:
    """``panels[row][column] = (samples, target labels)``; 2-D mixtures show the first two axes
    of higher-dimensional ones (contours then slice the density at 0 in the other axes)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = list(panels)
    columns: list[str] = []
    for row in rows:
        columns += [c for c in panels[row] if c not in columns]
    figure = Figure(figsize=(1.9 * len(columns), 2.0 * len(rows) + 0.3), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(rows), len(columns), squeeze=False, sharex=True, sharey=True)

    lo = (mixture.means[:, :2] - 3.5 * mixture.covs.diagonal(dim1=1, dim2=2)[:, :2].sqrt()).min(0)
    hi = (mixture.means[:, :2] + 3.5 * mixture.covs.diagonal(dim1=1, dim2=2)[:, :2].sqrt()).max(0)
    lo, hi = lo.values.tolist(), hi.values.tolist()
    gx, gy = torch.meshgrid(
        torch.linspace(lo[0], hi[0], 160), torch.linspace(lo[1], hi[1], 160), indexing="xy"
    )
    grid = torch.zeros(gx.numel(), mixture.dim)
    grid[:, 0], grid[:, 1] = gx.flatten(), gy.flatten()
    density = mixture.log_prob(grid, 1.0).exp().reshape(gx.shape).numpy()

    for r, row in enumerate(rows):
        for c, column in enumerate(columns):
            axis = axes[r][c]
            axis.contour(gx.numpy(), gy.numpy(), density, levels=6, colors="0.6", linewidths=0.6)
            axis.set_xticks([])
            axis.set_yticks([])
            if c == 0:
                axis.set_ylabel(row, fontsize=9)
            if r == 0:
                axis.set_title(column, fontsize=9)
            if column not in panels[row]:
                axis.set_facecolor("0.95")
                continue
            x, y = panels[row][column]
            x, y = x[:max_points], y[:max_points]
            for k in range(mixture.num_classes):
                chosen = x[y == k]
                axis.scatter(
                    chosen[:, 0], chosen[:, 1], s=2, alpha=0.6, color=COLORS[k % len(COLORS)]
                )
            axis.set_xlim(lo[0], hi[0])
            axis.set_ylim(lo[1], hi[1])
    figure.suptitle("samples (colour = target class) over the exact density p(x)", fontsize=10)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
    return Path(path)
