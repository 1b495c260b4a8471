"""The sampler's guidance hook: classifier + strategy + scale schedule -> s(t)·g.

The sampler calls ``guidance(x_t, pred_x0, t_model)`` under ``no_grad`` (or Lightning's
``inference_mode``) and expects the already-scaled gradient with x_t's shape; it checks
finiteness and applies it (see :mod:`calguide.diffusion.sampling`). ``space`` tells it whether
g is w.r.t. x̂₀ (``x0``: off-the-shelf classifier on x̂₀, DDPM only) or x_t (``x_t``: noisy
classifier, or x0-mode gradients back-propagated through the denoiser). The DDPM step also
asks :meth:`ClassifierGuidance.extra_variance` for the schedule's additive a_i (EluCD's
schedule; ``None`` for the others), handing it the step index and the chain's running maximum
of the model variance, so the mean shift is μ + (Σ_t + a_i)·s(t)·g.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import nullcontext
from typing import Literal

import torch
from torch import Tensor

from calguide.guidance.classifier import GuidanceClassifier
from calguide.guidance.schedules import Schedule
from calguide.guidance.strategies import GuidanceStrategy, entropy, target_log_prob

__all__ = ["ClassifierGuidance", "DenoiseFn", "GuidanceDiagnostics", "make_guidance"]

DenoiseFn = Callable[[Tensor, Tensor], Tensor]
"""``denoise_fn(x_t, t_model) -> x̂₀``, differentiable in x_t (for ``through_denoiser``)."""

DIAGNOSTIC_KEYS = ("grad_norm", "p_y", "entropy", "scale")


class GuidanceDiagnostics:
    """Per-call records ``{t, n, grad_norm, p_y, entropy, scale}`` (batch means).

    ``grad_norm`` is the mean per-sample L2 norm of the unscaled g, the quantity whose collapse
    at high noise is the vanishing-gradient problem. Clear it between batches
    (:meth:`clear`); :meth:`per_timestep` pools batches weighted by their size.
    """

    def __init__(self) -> None:
        self.records: list[dict[str, float]] = []

    def append(self, record: dict[str, float]) -> None:
        self.records.append(record)

    def clear(self) -> None:
        self.records.clear()

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[dict[str, float]]:
        return iter(self.records)

    def __getitem__(self, index: int) -> dict[str, float]:
        return self.records[index]

    def per_timestep(self) -> dict[int, dict[str, float]]:
        """Timestep -> size-weighted means of every diagnostic over the recorded calls."""
        sums: dict[int, dict[str, float]] = {}
        for rec in self.records:
            acc = sums.setdefault(int(rec["t"]), dict.fromkeys(("n", *DIAGNOSTIC_KEYS), 0.0))
            acc["n"] += rec["n"]
            for key in DIAGNOSTIC_KEYS:
                acc[key] += rec[key] * rec["n"]
        return {
            t: {"n": acc["n"], **{k: acc[k] / acc["n"] for k in DIAGNOSTIC_KEYS}}
            for t, acc in sorted(sums.items())
        }


def _usable(x: Tensor) -> Tensor:
    """A plain tensor cut from the graph (call outside inference mode: inference tensors cannot
    be saved for backward, their clones made there can)."""
    x = x.detach()
    return x.clone() if x.is_inference() else x


class ClassifierGuidance:
    """Guidance hook: returns s(t)·∇ ΣJ for the strategy's objective J.

    Set the target labels per batch with :meth:`bind` (or the ``labels`` attribute).
    ``num_timesteps`` is the length T of the base chain (what ``t_model`` and the schedule
    count in), not the number of respaced steps. With ``classifier.through_denoiser`` a
    differentiable ``denoise_fn(x_t, t_model) -> x̂₀`` is required; the denoiser then runs a
    second time per step, with gradients.
    """

    def __init__(
        self,
        classifier: GuidanceClassifier,
        strategy: GuidanceStrategy,
        schedule: Schedule,
        num_timesteps: int,
        *,
        denoise_fn: DenoiseFn | None = None,
        record_diagnostics: bool = True,
    ) -> None:
        if not strategy.is_active:
            raise ValueError(
                f"guidance {strategy.name!r} is inactive; use make_guidance(), which returns None"
            )
        if num_timesteps < 1:
            raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}")
        if classifier.through_denoiser and denoise_fn is None:
            raise ValueError("guidance.classifier.through_denoiser=true needs a denoise_fn")
        self.classifier = classifier
        self.strategy = strategy
        self.schedule = schedule
        self.num_timesteps = int(num_timesteps)
        self.denoise_fn = denoise_fn if classifier.through_denoiser else None
        self.record_diagnostics = record_diagnostics
        self.diagnostics = GuidanceDiagnostics()
        self.labels: Tensor | None = None
        # Autocast dtype for the classifier's forward/backward on CUDA (set by SamplingModule
        # from sampling.precision); the strategy's objective is always computed in float32.
        self.amp_dtype: torch.dtype | None = None
        self.name: str = strategy.name
        self.batch_dependent: bool = strategy.batch_dependent
        self.space: Literal["x_t", "x0"] = (
            "x0" if classifier.input_mode == "x0" and not classifier.through_denoiser else "x_t"
        )
        self.adds_variance: bool = bool(getattr(schedule, "additive", False))

    def bind(self, labels: Tensor) -> ClassifierGuidance:
        """Target labels for the next calls (one per sample); returns self."""
        self.labels = labels
        return self

    def _target(self, x_t: Tensor) -> Tensor:
        if self.labels is None:
            raise RuntimeError(f"guidance {self.name!r}: call .bind(labels) before sampling")
        labels = _usable(self.labels).to(device=x_t.device, dtype=torch.long).reshape(-1)
        if labels.shape[0] != x_t.shape[0]:
            raise ValueError(
                f"guidance {self.name!r}: {labels.shape[0]} labels bound for a batch of "
                f"{x_t.shape[0]}"
            )
        return labels

    def _logits(self, x_t: Tensor, pred_x0: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """(the tensor g is taken w.r.t., the logits computed from it)."""
        if self.classifier.input_mode == "noisy":
            x = _usable(x_t).requires_grad_(True)
            return x, self.classifier(x, t)
        if self.denoise_fn is not None:
            x = _usable(x_t).requires_grad_(True)
            return x, self.classifier(self.denoise_fn(x, t), t)
        x = _usable(pred_x0).requires_grad_(True)
        return x, self.classifier(x, t)

    def __call__(self, x_t: Tensor, pred_x0: Tensor, t_model: Tensor) -> Tensor:
        """s(t)·g with x_t's shape and dtype; g = ∂ΣJ/∂x (x = x̂₀ or x_t per ``space``)."""
        # Lightning predicts under inference_mode; leave it so copies can join autograd.
        with torch.inference_mode(False), torch.enable_grad():
            labels = self._target(x_t)
            t = _usable(t_model).to(x_t.device)
            with self._autocast(x_t.device):
                x, logits = self._logits(x_t, pred_x0, t)
            logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
            objective = self.strategy.objective(logits, labels, t, self.num_timesteps)
            (grad,) = torch.autograd.grad(objective.sum(), x)
        grad = grad.detach().to(x_t.dtype)
        scale = self.schedule(t, self.num_timesteps).to(device=x_t.device, dtype=x_t.dtype)
        scale = scale.expand(x_t.shape[0]).reshape(-1, *([1] * (x_t.dim() - 1)))
        if self.record_diagnostics:
            self._record(t, grad, logits.detach(), labels, scale)
        return scale * grad

    def extra_variance(self, index: Tensor, num_steps: int, variance_max: Tensor) -> Tensor | None:
        """The schedule's additive a_i for the DDPM mean shift (``None`` for most schedules)."""
        return self.schedule.extra_variance(index, num_steps, variance_max)

    def _autocast(self, device: torch.device):
        if self.amp_dtype is None or device.type != "cuda":
            return nullcontext()
        return torch.autocast("cuda", dtype=self.amp_dtype)

    def _record(self, t: Tensor, grad: Tensor, logits: Tensor, labels: Tensor, scale: Tensor):
        norms = grad.flatten(1).float().norm(dim=1)
        t_max, *values = torch.stack(
            [
                t.max().float(),
                norms.mean(),
                target_log_prob(logits, labels).exp().float().mean(),
                entropy(logits).float().mean(),
                scale.float().mean(),
            ]
        ).tolist()  # one device sync per call
        self.diagnostics.append(
            {"t": int(t_max), "n": int(grad.shape[0]), **dict(zip(DIAGNOSTIC_KEYS, values))}
        )

    def __repr__(self) -> str:
        return (
            f"ClassifierGuidance(name={self.name!r}, space={self.space!r}, "
            f"strategy={self.strategy!r}, schedule={self.schedule!r})"
        )


def make_guidance(
    classifier: GuidanceClassifier | None,
    strategy: GuidanceStrategy,
    schedule: Schedule,
    num_timesteps: int,
    *,
    denoise_fn: DenoiseFn | None = None,
    record_diagnostics: bool = True,
) -> ClassifierGuidance | None:
    """The sampler's ``guidance`` argument: ``None`` for an inactive strategy (``none``, which
    needs no classifier), else a :class:`ClassifierGuidance`."""
    if not strategy.is_active:
        return None
    if classifier is None:
        raise ValueError(f"guidance {strategy.name!r} needs a guidance classifier")
    return ClassifierGuidance(
        classifier,
        strategy,
        schedule,
        num_timesteps,
        denoise_fn=denoise_fn,
        record_diagnostics=record_diagnostics,
    )
