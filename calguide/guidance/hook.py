"""The sampler's guidance hook: classifier + strategy + scale schedule -> s(t)·g.

:class:`ClassifierGuidance` is the configured guidance; ``bind(labels, denoise_fn=…)`` gives
the per-batch :class:`BoundGuidance` that a sampler is handed. The sampler calls
``guidance(x_t, pred_x0, t_model)`` under ``no_grad`` (or Lightning's
``inference_mode``) and expects the already-scaled gradient with x_t's shape; it checks
finiteness and applies it (see :mod:`calguide.diffusion.steps`). ``space`` tells it whether
g is w.r.t. x̂₀ (``x0``: off-the-shelf classifier on x̂₀, DDPM only) or x_t (``x_t``: noisy
classifier, or x0-mode gradients back-propagated through the denoiser). The DDPM step also
asks :meth:`ClassifierGuidance.extra_variance` for the schedule's additive a_i (EluCD's
schedule; ``None`` for the others), handing it the step index and the chain's running maximum
of the model variance, so the mean shift is μ + (Σ_t + a_i)·s(t)·g.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import fields
from typing import Any, Literal

import torch
from torch import Tensor, nn

from calguide.guidance.classifier import GuidanceClassifier
from calguide.guidance.schedules import Schedule
from calguide.guidance.strategies import GuidanceStrategy, entropy, target_log_prob

__all__ = [
    "BoundGuidance",
    "ClassifierGuidance",
    "DenoiseFn",
    "GuidanceDiagnostics",
    "make_guidance",
]

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


class ClassifierGuidance(nn.Module):
    """The configured guidance: classifier + strategy + schedule (a module, so the sampling
    module moves it to its device and memory format with everything else).

    It holds no per-batch state: :meth:`bind` returns the callable a sampler is handed for one
    batch, given that batch's target labels, and — for ``through_denoiser`` classifiers — the
    sampling module's own ``denoise_fn(x_t, t_model) -> x̂₀`` (differentiable in x_t).
    ``num_timesteps`` is the length T of the base chain (what ``t_model`` and the schedule
    count in), not the number of respaced steps.
    """

    def __init__(
        self,
        classifier: GuidanceClassifier,
        strategy: GuidanceStrategy,
        schedule: Schedule,
        num_timesteps: int,
        *,
        record_diagnostics: bool = True,
    ) -> None:
        super().__init__()
        if not strategy.is_active:
            raise ValueError(
                f"guidance {strategy.name!r} is inactive; use make_guidance(), which returns None"
            )
        if num_timesteps < 1:
            raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}")
        self.classifier = classifier
        self.strategy = strategy
        self.schedule = schedule
        self.num_timesteps = int(num_timesteps)
        self.record_diagnostics = record_diagnostics
        self.name: str = strategy.name
        self.batch_dependent: bool = strategy.batch_dependent
        self.needs_denoiser: bool = bool(classifier.through_denoiser)
        self.space: Literal["x_t", "x0"] = (
            "x0" if classifier.input_mode == "x0" and not classifier.through_denoiser else "x_t"
        )
        self.adds_variance: bool = bool(getattr(schedule, "additive", False))

    def bind(
        self,
        labels: Tensor,
        *,
        denoise_fn: DenoiseFn | None = None,
        amp_dtype: torch.dtype | None = None,
    ) -> BoundGuidance:
        """The sampler's guidance for one batch: target ``labels`` (one per sample), the
        differentiable ``denoise_fn`` (``through_denoiser`` only) and the CUDA autocast dtype of
        the classifier's forward/backward (the objective itself is always float32 or wider)."""
        if self.needs_denoiser and denoise_fn is None:
            raise ValueError("guidance.classifier.through_denoiser=true needs a denoise_fn")
        return BoundGuidance(
            self, labels, denoise_fn if self.needs_denoiser else None, amp_dtype=amp_dtype
        )

    def forward(self, *args: object, **kwargs: object) -> Tensor:
        raise TypeError(
            f"guidance {self.name!r}: call .bind(labels) and hand the sampler its result; "
            "ClassifierGuidance holds no per-batch labels"
        )

    def extra_variance(self, index: Tensor, num_steps: int, variance_max: Tensor) -> Tensor | None:
        """The schedule's additive a_i for the DDPM mean shift (``None`` for most schedules)."""
        return self.schedule.extra_variance(index, num_steps, variance_max)

    def describe(self) -> dict[str, Any]:
        """What this guidance runs, read off its parts: the strategy and its knobs, the scale
        schedule, and the classifier's input space and temperature."""
        strategy = {f.name: getattr(self.strategy, f.name) for f in fields(self.strategy)}
        schedule = {f.name: getattr(self.schedule, f.name) for f in fields(self.schedule)}
        return {
            "strategy": self.name,
            "params": strategy,
            "scale": schedule.pop("scale", None),
            "schedule": getattr(self.schedule, "name", type(self.schedule).__name__),
            "schedule_params": schedule,
            "space": self.space,
            "temperature": float(self.classifier.temperature),
            "through_denoiser": self.needs_denoiser,
        }

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, space={self.space!r}, strategy={self.strategy!r}, "
            f"schedule={self.schedule!r}"
        )


class BoundGuidance:
    """One batch's guidance (see :meth:`ClassifierGuidance.bind`): what a sampler calls.

    ``bound(x_t, pred_x0, t_model)`` returns s(t)·g with x_t's shape and dtype, g = ∂ΣJ/∂x
    (x = x̂₀ or x_t per ``space``); every call is recorded in :attr:`diagnostics`.
    """

    def __init__(
        self,
        guidance: ClassifierGuidance,
        labels: Tensor,
        denoise_fn: DenoiseFn | None,
        *,
        amp_dtype: torch.dtype | None = None,
    ) -> None:
        self.guidance = guidance
        self.labels = labels
        self.denoise_fn = denoise_fn
        self.amp_dtype = amp_dtype
        self.diagnostics = GuidanceDiagnostics()
        self.name = guidance.name
        self.space = guidance.space
        self.adds_variance = guidance.adds_variance
        self.batch_dependent = guidance.batch_dependent

    def _target(self, x_t: Tensor) -> Tensor:
        labels = _usable(self.labels).to(device=x_t.device, dtype=torch.long).reshape(-1)
        if labels.shape[0] != x_t.shape[0]:
            raise ValueError(
                f"guidance {self.name!r}: {labels.shape[0]} labels bound for a batch of "
                f"{x_t.shape[0]}"
            )
        return labels

    def _logits(self, x_t: Tensor, pred_x0: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """(the tensor g is taken w.r.t., the logits computed from it)."""
        classifier = self.guidance.classifier
        if classifier.input_mode == "noisy":
            x = _usable(x_t).requires_grad_(True)
            return x, classifier(x, t)
        if self.denoise_fn is not None:
            x = _usable(x_t).requires_grad_(True)
            return x, classifier(self.denoise_fn(x, t), t)
        x = _usable(pred_x0).requires_grad_(True)
        return x, classifier(x, t)

    def __call__(self, x_t: Tensor, pred_x0: Tensor, t_model: Tensor) -> Tensor:
        guidance = self.guidance
        # Lightning predicts under inference_mode; leave it so copies can join autograd.
        with torch.inference_mode(False), torch.enable_grad():
            labels = self._target(x_t)
            t = _usable(t_model).to(x_t.device)
            with self._autocast(x_t.device):
                x, logits = self._logits(x_t, pred_x0, t)
            logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
            objective = guidance.strategy.objective(logits, labels, t, guidance.num_timesteps)
            (grad,) = torch.autograd.grad(objective.sum(), x)
        grad = grad.detach().to(x_t.dtype)
        scale = guidance.schedule(t, guidance.num_timesteps).to(device=x_t.device, dtype=x_t.dtype)
        scale = scale.expand(x_t.shape[0]).reshape(-1, *([1] * (x_t.dim() - 1)))
        if guidance.record_diagnostics:
            self._record(t, grad, logits.detach(), labels, scale)
        return scale * grad

    def extra_variance(self, index: Tensor, num_steps: int, variance_max: Tensor) -> Tensor | None:
        return self.guidance.extra_variance(index, num_steps, variance_max)

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
        return f"BoundGuidance({self.guidance!r}, batch={int(self.labels.reshape(-1).shape[0])})"


def make_guidance(
    classifier: GuidanceClassifier | None,
    strategy: GuidanceStrategy,
    schedule: Schedule,
    num_timesteps: int,
    *,
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
        record_diagnostics=record_diagnostics,
    )
