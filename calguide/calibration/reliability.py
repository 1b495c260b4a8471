"""Reliability diagrams: the smooth (SmoothECE) curve drawn over the classic binned bars."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor

from calguide.calibration.ece import (
    _bin_statistics,
    _validate_pair,
    binned_ece,
    fixed_point_sigma,
    reliability_curve,
    smooth_ece,
)
from calguide.io import atomic_path

__all__ = ["save_reliability_diagram"]

# Tallest density band, as a fraction of the [0, 1] accuracy axis.
_DENSITY_HEIGHT = 0.2


def save_reliability_diagram(
    confidence: Tensor,
    correct: Tensor,
    path: str | os.PathLike[str],
    title: str = "Reliability diagram",
    n_bins: int = 15,
) -> Path:
    """Write a reliability diagram image to ``path`` and return it as a ``Path``.

    Shows the smooth reliability curve at the fixed-point bandwidth σ* (with the confidence
    density shaded underneath), binned accuracies as bars, and the diagonal; the legend gives
    smECE and binned ECE. The file is written to a temporary sibling and moved into place with
    ``os.replace``, so readers never see a half-written image. The format follows the suffix
    (PNG if there is none). matplotlib is imported here so the metrics stay importable without it.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    confidence, correct = _validate_pair(confidence, correct)
    confidence = confidence.detach().to(torch.float64).cpu()
    correct = correct.detach().to(torch.float64).cpu()
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"

    sigma = fixed_point_sigma(confidence, correct)
    smece = float(smooth_ece(confidence, correct, sigma))
    ece = float(binned_ece(confidence, correct, n_bins))
    grid, accuracy, density = (t.numpy() for t in reliability_curve(confidence, correct, sigma))
    counts, _, correct_sum = (t.numpy() for t in _bin_statistics(confidence, correct, n_bins))

    # Figure + Agg canvas directly: no pyplot global state and no display backend involved.
    fig = Figure(figsize=(5.0, 5.0), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)

    width = 1.0 / n_bins
    centres = (torch.arange(n_bins, dtype=torch.float64).numpy() + 0.5) * width
    filled = counts > 0
    ax.bar(
        centres[filled],
        correct_sum[filled] / counts[filled],
        width=width,
        color="tab:blue",
        alpha=0.35,
        edgecolor="tab:blue",
        label=f"binned, {n_bins} bins (ECE={ece:.4f})",
    )
    peak = float(density.max())
    if peak > 0:
        ax.fill_between(
            grid,
            0.0,
            density / peak * _DENSITY_HEIGHT,
            color="tab:gray",
            alpha=0.35,
            linewidth=0,
            label="confidence density (scaled)",
        )
    ax.plot([0, 1], [0, 1], linestyle="--", color="black", linewidth=1, label="perfect")
    ax.plot(
        grid,
        accuracy,
        color="tab:red",
        linewidth=2,
        label=f"smooth, σ*={sigma:.3f} (smECE={smece:.4f})",
    )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize="small")
    fig.tight_layout()

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt)
    return path
