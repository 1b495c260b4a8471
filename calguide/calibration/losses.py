"""The paper's calibration loss: a Huber-style ("pseudo-Huber") smooth ECE for fine-tuning.

Javid, Bagheri & González-Prelcic (arXiv 2511.05844) fine-tune the guidance classifier with
CE + λ·L_ECE, where L_ECE smooths the absolute value in the expected calibration error by
``|x| ≈ sqrt(x² + β)``. The formula printed in the paper,

    L_ECE = (1/n) Σ_b Σ_{i ∈ bin b} sqrt((p̂_i − a_i)² + β),

lets the bins do nothing: it is a per-sample distance between the top-label confidence p̂_i and
the correctness a_i = 1[argmax = label]. The reading that matches the name "smooth ECE" puts the
smoothing on the binned ECE instead,

    L_ECE = Σ_b (n_b / n) · sqrt((conf_b − acc_b)² + β),

with conf_b the mean confidence and acc_b the accuracy of bin b. Which one the authors' code uses
is not published, so both are offered (``form="binned"``, the default, and ``form="per_sample"``).

Neither β, the number of bins nor the CE/ECE weight λ is published either; the defaults here
(β = 1e-4, 15 bins) are this project's choices: 15 equal-width bins is the usual binned-ECE
setting (and what the metric reports), and sqrt(β) = 0.01 is a floor well below the calibration
gaps worth fixing.

This loss is not Błasiok & Nakkiran's kernel smECE (:func:`calguide.calibration.ece.smooth_ece`),
which stays the calibration *metric* and is offered as a loss only under its own name
(``kernel_smece``).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from calguide.calibration.ece import (
    _bin_statistics,
    _compute_dtype,
    _validate_pair,
    top_label_confidence,
)

__all__ = [
    "CALIBRATION_LOSSES",
    "DEFAULT_BETA",
    "DEFAULT_BINS",
    "SMOOTH_ECE_FORMS",
    "check_smooth_ece_knobs",
    "huber_smooth_ece",
    "huber_smooth_ece_from_logits",
]

SmoothEceForm = Literal["binned", "per_sample"]

SMOOTH_ECE_FORMS: tuple[str, ...] = ("binned", "per_sample")
"""Readings of the paper's L_ECE: the smoothed binned ECE (default) or the formula as printed."""

CALIBRATION_METHODS: tuple[str, ...] = ("gradient", "temperature")
"""``calibration.method``: train with a loss, or fit a post-hoc temperature."""
CALIBRATION_LOSSES: tuple[str, ...] = ("ce", "smooth_ece", "kernel_smece")
"""Fine-tuning objectives: CE alone, CE + λ·(the paper's smooth ECE), CE + λ·(kernel smECE)."""

DEFAULT_BETA = 1e-4
"""β of sqrt(x² + β): not published; sqrt(β) = 0.01 bounds the smoothing error of each term."""

DEFAULT_BINS = 15
"""Equal-width bins on [0, 1]: not published; 15 is the usual binned-ECE choice."""


def check_smooth_ece_knobs(form: str, beta: float, bins: int) -> None:
    """Raise a one-line ValueError naming the config key of the first bad knob.

    Shared by the loss, the training module and the config schema, so a bad value fails the
    same way (and before any training) wherever it comes in.
    """
    if form not in SMOOTH_ECE_FORMS:
        raise ValueError(f"calibration.form={form!r}: must be one of {list(SMOOTH_ECE_FORMS)}")
    if (
        isinstance(beta, bool)
        or not isinstance(beta, (int, float))
        or not (math.isfinite(beta) and beta > 0)
    ):
        raise ValueError(f"calibration.beta={beta!r}: must be a finite number > 0")
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"calibration.bins={bins!r}: must be an integer >= 1")


def huber_smooth_ece(
    confidence: Tensor,
    correct: Tensor,
    *,
    form: SmoothEceForm = "binned",
    beta: float = DEFAULT_BETA,
    bins: int = DEFAULT_BINS,
) -> Tensor:
    """The paper's L_ECE of top-label confidences, as a scalar tensor differentiable in them.

    ``form="binned"`` (default): Σ_b (n_b / n)·sqrt((conf_b − acc_b)² + β) over the same
    equal-width bins as :func:`~calguide.calibration.ece.binned_ece`; empty bins contribute 0.
    It is the default because it is the reading that matches the name "smooth ECE": the |·| of
    the binned ECE replaced by sqrt(·² + β), so β → 0 gives back the binned ECE, and it only
    asks each bin to be calibrated *on average*, as ECE does. The bin assignment is piecewise
    constant, so the gradient flows through conf_b only.

    ``form="per_sample"``: (1/n) Σ_i sqrt((p̂_i − a_i)² + β), the formula as printed (the bins
    play no part). It pushes every confidence towards its own 0/1 correctness, which is a
    sharpness/Brier-like objective rather than a calibration gap.

    ``correct`` may be 0/1 or soft in [0, 1]. Sums run in float64 (except on MPS); the result
    has the confidence dtype.
    """
    check_smooth_ece_knobs(form, beta, bins)
    confidence, correct = _validate_pair(confidence, correct)
    n = confidence.shape[0]
    if form == "per_sample":
        wide = _compute_dtype(confidence.device)
        gap = confidence.to(wide) - correct.to(wide)
        return torch.sqrt(gap * gap + beta).mean().to(confidence.dtype)
    counts, conf_sum, correct_sum = _bin_statistics(confidence, correct, bins)
    occupied = counts > 0
    count = counts[occupied]
    gap = (conf_sum[occupied] - correct_sum[occupied]) / count
    return ((count * torch.sqrt(gap * gap + beta)).sum() / n).to(confidence.dtype)


def huber_smooth_ece_from_logits(
    logits: Tensor,
    labels: Tensor,
    *,
    form: SmoothEceForm = "binned",
    beta: float = DEFAULT_BETA,
    bins: int = DEFAULT_BINS,
    temperature: float | Tensor = 1.0,
) -> Tensor:
    """:func:`huber_smooth_ece` of the top-label confidences of ``softmax(logits / temperature)``
    with correctness a_i = 1[argmax = label]; differentiable in ``logits``."""
    check_smooth_ece_knobs(form, beta, bins)
    confidence, correct = top_label_confidence(logits, labels, temperature)
    return huber_smooth_ece(confidence, correct, form=form, beta=beta, bins=bins)
