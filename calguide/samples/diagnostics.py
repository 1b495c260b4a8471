"""Guidance diagnostics per timestep as CSV and curves (the paper's vanishing-gradient figures),
and snapshots of x̂₀ and of the guidance gradient along the chain."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping
from pathlib import Path

import torch

from calguide.io import atomic_path, atomic_write_text
from calguide.samples.grid import save_image_grid
from calguide.samples.writer import DIAGNOSTIC_COLUMNS

PerTimestep = Mapping[int, Mapping[str, float]]
LABELS = {
    "grad_norm": "mean ‖g‖ (unscaled)",
    "p_y": "mean p(y | x)",
    "entropy": "mean H(p)",
}


def write_diagnostics_csv(per_timestep: PerTimestep, path: str | os.PathLike) -> Path:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["t", "n", *DIAGNOSTIC_COLUMNS])
    for t in sorted(per_timestep):
        row = per_timestep[t]
        writer.writerow([t, int(row["n"]), *(f"{row[k]:.6g}" for k in DIAGNOSTIC_COLUMNS)])
    return atomic_write_text(buffer.getvalue(), path)


def read_diagnostics_csv(path: str | os.PathLike) -> dict[int, dict[str, float]]:
    with open(path) as handle:
        return {
            int(row["t"]): {k: float(v) for k, v in row.items() if k != "t"}
            for row in csv.DictReader(handle)
        }


def plot_diagnostics(
    runs: Mapping[str, PerTimestep], path: str | os.PathLike, *, title: str = ""
) -> Path:
    """One panel per diagnostic, one curve per run, x = timestep (noise increases to the right)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(13, 3.6), dpi=110)
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(LABELS))
    for axis, (key, label) in zip(axes, LABELS.items()):
        for name, per_timestep in runs.items():
            ts = sorted(per_timestep)
            if ts:
                axis.plot(ts, [per_timestep[t][key] for t in ts], label=name, linewidth=1.4)
        axis.set_xlabel("timestep t")
        axis.set_title(label)
        if key == "grad_norm":
            axis.set_yscale("log")
        axis.grid(alpha=0.3)
    # On the p_y panel, whose lower left stays empty (p_y ≈ 1 at low noise): on the gradient
    # panel the legend hid curves.
    axes[1 if len(axes) > 1 else 0].legend(fontsize=7, loc="lower left")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
    return Path(path)


def save_snapshots(
    snapshots: Mapping[int, Mapping[str, torch.Tensor]], path: str | os.PathLike
) -> Path | None:
    """Rows: timesteps (high noise first); columns: x̂₀ of each tracked sample, then its
    guidance gradient (each gradient image scaled to its own max |g| so its shape shows)."""
    if not snapshots:
        return None
    rows = []
    for t in sorted(snapshots, reverse=True):
        pred_x0 = snapshots[t]["pred_x0"].float()
        grad = snapshots[t]["grad"].float()
        scale = grad.flatten(1).abs().amax(1).clamp(min=1e-12).view(-1, 1, 1, 1)
        rows.append(torch.cat([pred_x0.clamp(-1, 1), grad / scale]))
    images = torch.cat(rows)
    return save_image_grid(images, path, ncols=rows[0].shape[0], upscale=4)
