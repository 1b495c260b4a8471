"""Calibration summaries of a classifier's logits, timestep buckets, temperature scaling."""

from __future__ import annotations

import itertools

import torch
from torch import Tensor
from torch.nn import functional as F

from calguide.calibration.ece import binned_ece, smooth_ece, top_label_confidence


def classification_metrics(
    logits: Tensor, labels: Tensor, *, temperature: float = 1.0, n_bins: int = 15
) -> dict[str, float]:
    """Accuracy, NLL, binned ECE and smECE (σ*) of one set of predictions."""
    logits = logits.detach().float()
    confidence, correct = top_label_confidence(logits, labels, temperature=temperature)
    return {
        "acc": float(correct.mean()),
        "nll": float(F.cross_entropy(logits / temperature, labels)),
        "ece": float(binned_ece(confidence, correct, n_bins=n_bins)),
        "smece": float(smooth_ece(confidence, correct)),
        "confidence": float(confidence.mean()),
    }


def timestep_buckets(num_timesteps: int, count: int) -> list[tuple[int, int]]:
    """``count`` contiguous [start, end) ranges covering 0..num_timesteps−1 (low noise first)."""
    if count < 1 or count > num_timesteps:
        raise ValueError(f"bucket count must be in [1, {num_timesteps}], got {count}")
    edges = torch.linspace(0, num_timesteps, count + 1).round().long().tolist()
    return list(itertools.pairwise(edges))


def fit_temperature(logits: Tensor, labels: Tensor, *, max_iter: int = 100) -> float:
    """Post-hoc temperature scaling (Guo et al. 2017): τ minimising held-out NLL of z/τ."""
    logits = logits.detach().double()
    log_tau = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [log_tau], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe"
    )

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_tau.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    tau = float(log_tau.detach().exp())
    if not torch.isfinite(torch.tensor(tau)) or tau <= 0:
        raise FloatingPointError("temperature scaling diverged (are the logits finite?)")
    return tau
