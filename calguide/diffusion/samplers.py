"""The sampler registry: one entry per reverse-process integrator.

A sampler turns the network output at x_t into x_{t−1}. Each entry is a class registered under
its config name (``diffusion.sampler``) whose dataclass fields are its knobs (from
``diffusion.sampler_params``, plus ``diffusion.eta`` for DDIM). It owns whatever it carries from
one step to the next (``start`` returns the initial state, ``step`` the next one) and receives
guidance through one contract, :class:`~calguide.diffusion.sampling.GuidanceFn`: a callable
returning the scaled gradient s(t)·g, with ``space`` and ``extra_variance``. ``check`` refuses,
before any work, guidance it cannot apply.

Adding a sampler: a class here or in your own module, decorated with ``@register_sampler``,
and a YAML under ``conf/diffusion/`` that selects it (see the README's "How to add").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from calguide.diffusion.gaussian import GaussianDiffusion
from calguide.diffusion.sampling import (
    ModelFn,
    StepOutput,
    check_sampler_supports,
    ddim_step,
    ddpm_step,
)

__all__ = [
    "DDIM",
    "DDPM",
    "NoiseFn",
    "Sampler",
    "StepCallback",
    "build_sampler",
    "register_sampler",
    "sample_loop",
    "sampler_class",
    "sampler_names",
]


@dataclass
class Sampler:
    """Base of every registry entry; subclasses are dataclasses whose fields are their knobs."""

    name: ClassVar[str] = ""

    def check(self, guidance: Callable | None) -> None:
        """Raise ValueError (one line) for guidance this sampler cannot apply."""

    def start(self, x_T: Tensor) -> Any:
        """The state carried into the first step."""
        return None

    def step(
        self,
        diffusion: GaussianDiffusion,
        model_fn: ModelFn,
        x_t: Tensor,
        t: Tensor,
        noise: Tensor,
        state: Any,
        *,
        guidance: Callable | None,
        clip_denoised: bool,
    ) -> tuple[StepOutput, Any]:
        """One reverse step from chain index ``t`` (a batch tensor): (output, next state).

        ``model_fn(x, t_model)`` is the denoiser at base-chain timesteps; call it under
        ``torch.no_grad()`` (guidance computes its own gradients).
        """
        raise NotImplementedError


_REGISTRY: dict[str, type[Sampler]] = {}


def register_sampler(name: str) -> Callable[[type[Sampler]], type[Sampler]]:
    """Class decorator: make ``diffusion.sampler=<name>`` build this sampler."""

    def add(cls: type[Sampler]) -> type[Sampler]:
        if not (isinstance(cls, type) and issubclass(cls, Sampler)):
            raise TypeError(f"sampler {name!r}: {cls!r} must subclass calguide's Sampler")
        if not dataclasses.is_dataclass(cls):
            cls = dataclass(cls)
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return add


def unregister_sampler(name: str) -> None:
    """Remove an entry (for tests and interactive use)."""
    _REGISTRY.pop(name)


def sampler_names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def sampler_class(name: str) -> type[Sampler]:
    if name not in _REGISTRY:
        raise ValueError(f"diffusion.sampler must be one of {list(_REGISTRY)}, got {name!r}")
    return _REGISTRY[name]


def build_sampler(name: str, **knobs: Any) -> Sampler:
    """The sampler ``name`` with its knobs; unknown knobs are one line naming the allowed ones."""
    cls = sampler_class(name)
    allowed = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(knobs) - set(allowed))
    if unknown:
        raise ValueError(
            f"diffusion.sampler_params: sampler {name!r} has no knob(s) {unknown}; "
            f"its knobs: {allowed or 'none'}"
        )
    return cls(**knobs)


def _model_output(model_fn: ModelFn, diffusion: GaussianDiffusion, x: Tensor, t: Tensor) -> Tensor:
    with torch.no_grad():
        return model_fn(x, diffusion.model_timesteps(t))


@register_sampler("ddpm")
@dataclass
class DDPM(Sampler):
    """ADM's ancestral step; carries the running max of Σ_t (EluCD's additive schedule)."""

    def step(self, diffusion, model_fn, x_t, t, noise, state, *, guidance, clip_denoised):
        out = ddpm_step(
            diffusion,
            _model_output(model_fn, diffusion, x_t, t),
            x_t,
            t,
            noise,
            guidance=guidance,
            clip_denoised=clip_denoised,
            variance_max=state,
        )
        return out, out.variance_max


@register_sampler("ddim")
@dataclass
class DDIM(Sampler):
    """DDIM (η = 0: deterministic); guidance shifts ε as ADM's ``condition_score``."""

    eta: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.eta <= 1.0:
            raise ValueError(f"diffusion.eta={self.eta!r}: must be in [0.0, 1.0]")

    def check(self, guidance: Callable | None) -> None:
        check_sampler_supports(guidance, "ddim")

    def step(self, diffusion, model_fn, x_t, t, noise, state, *, guidance, clip_denoised):
        out = ddim_step(
            diffusion,
            _model_output(model_fn, diffusion, x_t, t),
            x_t,
            t,
            noise,
            eta=self.eta,
            guidance=guidance,
            clip_denoised=clip_denoised,
        )
        return out, None


NoiseFn = Callable[[int, Tensor], Tensor]
StepCallback = Callable[[int, Tensor, StepOutput], None]


def sample_loop(
    diffusion: GaussianDiffusion,
    model_fn: ModelFn,
    x_T: Tensor,
    *,
    sampler: Sampler | str = "ddpm",
    eta: float = 0.0,
    guidance: Callable | None = None,
    noise_fn: NoiseFn | None = None,
    clip_denoised: bool = True,
    progress: bool = False,
    callback: StepCallback | None = None,
) -> Tensor:
    """Run the reverse chain from x_T down to x₀ with ``sampler`` (an entry or its name).

    ``model_fn(x, t_model)`` returns the network output for base-chain timesteps.
    ``noise_fn(i, x)`` returns the step noise for chain index ``i`` (default: ``randn_like``);
    the sampling module passes per-sample seeded noise here, so a sample does not depend on its
    batch. ``callback(i, x_t, step)`` sees every step (diagnostics, snapshots). ``eta`` applies
    only when ``sampler`` is given by name (``ddim``).
    """
    if isinstance(sampler, str):
        sampler = build_sampler(sampler, **({"eta": eta} if sampler == "ddim" else {}))
    sampler.check(guidance)
    x, state = x_T, sampler.start(x_T)
    indices = range(diffusion.num_timesteps - 1, -1, -1)
    if progress:
        from tqdm.auto import tqdm

        indices = tqdm(indices, desc=f"{sampler.name} sampling", leave=False)
    for i in indices:
        t = torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)
        noise = noise_fn(i, x) if noise_fn is not None else torch.randn_like(x)
        step, state = sampler.step(
            diffusion, model_fn, x, t, noise, state, guidance=guidance, clip_denoised=clip_denoised
        )
        if callback is not None:
            callback(i, x, step)
        x = step.sample.detach()
    return x
