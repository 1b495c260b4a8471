"""The mixture's exact models behind the interfaces the image path uses.

:class:`ExactEpsModel` is a denoiser ``(x_t, t, y) -> ε`` for :class:`SamplingModule`;
:class:`ExactPosterior` is a noise-aware classifier ``(x_t, t) -> log p(y | x_t)`` for
:class:`GuidanceClassifier` (``input_mode="noisy"``), whose temperature makes it miscalibrated
on purpose (τ_c < 1: overconfident). Timesteps are base-chain ones, as a network sees them.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from calguide.data.gmm import GaussianMixture


class _MixtureModel(nn.Module):
    def __init__(self, mixture: GaussianMixture, alphas_cumprod: Tensor) -> None:
        super().__init__()
        self.mixture = mixture
        self.register_buffer(
            "alphas_cumprod", torch.as_tensor(alphas_cumprod, dtype=torch.float64), persistent=False
        )

    def alpha_bar(self, t: Tensor) -> Tensor:
        return self.alphas_cumprod[t.to(self.alphas_cumprod.device).long().reshape(-1)]


class ExactEpsModel(_MixtureModel):
    """The exact ε-prediction of the marginal, or of p(x | y) when labels are passed."""

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        return self.mixture.eps(x, self.alpha_bar(t).expand(x.shape[0]), y).to(x.dtype)


class ExactPosterior(_MixtureModel):
    """log p(y | x_t), differentiable in x_t."""

    noise_aware = True

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        a = self.alpha_bar(t).expand(x.shape[0])
        return self.mixture.class_log_posterior(x, a).to(x.dtype)
