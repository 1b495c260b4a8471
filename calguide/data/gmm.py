"""A labelled Gaussian mixture whose diffused marginals, scores and posteriors are exact.

Each component k (weight w_k, class c_k, mean μ_k, covariance Σ_k) stays Gaussian under the
forward process: x_t | k ~ N(√ᾱ μ_k, ᾱ Σ_k + (1 − ᾱ) I). With Σ_k = U_k diag(λ_k) U_kᵀ
computed once, the noised covariance is U_k diag(ᾱ λ_k + 1 − ᾱ) U_kᵀ, so densities, scores and
responsibilities at any noise level are cheap batched closed forms. From them:

* ε(x_t) = −√(1 − ᾱ) ∇ log p_t(x_t) (marginal, or class-conditional with the components of y);
* p(y | x_t) = Σ_{k ∈ y} r_k(x_t), the exact posterior a noise-aware classifier should learn.

Every method takes ``alpha_bar`` as a number or a per-sample tensor; ``alpha_bar = 1`` is the
data distribution itself.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["GaussianMixture", "mixture_from_config"]


@dataclass(frozen=True)
class GaussianMixture:
    means: Tensor  # (K, d)
    covs: Tensor  # (K, d, d), symmetric positive definite
    weights: Tensor  # (K,), positive, sums to 1
    classes: Tensor  # (K,) long: the class of each component, 0..C−1, every class used

    def __post_init__(self) -> None:
        means = torch.as_tensor(self.means, dtype=torch.float64)
        covs = torch.as_tensor(self.covs, dtype=torch.float64)
        weights = torch.as_tensor(self.weights, dtype=torch.float64)
        classes = torch.as_tensor(self.classes, dtype=torch.long)
        if means.dim() != 2:
            raise ValueError(f"mixture.means must be K×d, got shape {tuple(means.shape)}")
        k, d = means.shape
        if covs.shape != (k, d, d):
            raise ValueError(f"mixture covariances must be {k}×{d}×{d}, got {tuple(covs.shape)}")
        if weights.shape != (k,) or not bool((weights > 0).all()):
            raise ValueError(f"mixture.weights must be {k} positive numbers")
        if classes.shape != (k,) or int(classes.min()) != 0:
            raise ValueError(f"mixture.classes must be {k} class indices starting at 0")
        if sorted(set(classes.tolist())) != list(range(int(classes.max()) + 1)):
            raise ValueError("mixture.classes must use every class 0..C−1 at least once")
        if not torch.allclose(covs, covs.transpose(1, 2)):
            raise ValueError("mixture covariances must be symmetric")
        eigvals, eigvecs = torch.linalg.eigh(covs)
        if not bool((eigvals > 0).all()):
            raise ValueError("mixture covariances must be positive definite")
        object.__setattr__(self, "means", means)
        object.__setattr__(self, "covs", covs)
        object.__setattr__(self, "weights", weights / weights.sum())
        object.__setattr__(self, "classes", classes)
        object.__setattr__(self, "_eigvals", eigvals)  # (K, d)
        object.__setattr__(self, "_eigvecs", eigvecs)  # (K, d, d), columns are eigenvectors

    # ----------------------------------------------------------------------- shape
    @property
    def dim(self) -> int:
        return int(self.means.shape[1])

    @property
    def num_components(self) -> int:
        return int(self.means.shape[0])

    @property
    def num_classes(self) -> int:
        return int(self.classes.max()) + 1

    def class_prior(self) -> Tensor:
        """p(y), (C,)."""
        return torch.zeros(self.num_classes, dtype=torch.float64).index_add_(
            0, self.classes, self.weights
        )

    def within_class_weights(self) -> Tensor:
        """p(k | y_k): each component's share of its own class, (K,)."""
        return self.weights / self.class_prior()[self.classes]

    # ----------------------------------------------------------------------- sampling
    def sample(
        self,
        n: int,
        labels: Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(x, y, component) for n draws of the data; with ``labels`` (n,), from p(x | y)."""
        if labels is None:
            comp = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        else:
            labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
            if labels.shape[0] != n:
                raise ValueError(f"{labels.shape[0]} labels for {n} samples")
            probs = self.weights.expand(n, -1) * (self.classes[None, :] == labels[:, None])
            comp = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        z = torch.randn(n, self.dim, dtype=torch.float64, generator=generator)
        scale = self._eigvecs[comp] * self._eigvals[comp].sqrt()[:, None, :]
        x = self.means[comp] + torch.einsum("nij,nj->ni", scale, z)
        return x.float(), self.classes[comp], comp

    # ----------------------------------------------------------------------- exact densities
    def _noised(self, x: Tensor, alpha_bar: Tensor | float) -> tuple[Tensor, Tensor, Tensor]:
        """(log w_k + log N(x; √ᾱ μ_k, C_k), the whitened-by-eigenbasis residual z, variances v)
        with shapes (B, K), (B, K, d), (B, K, d), in float64."""
        x = torch.as_tensor(x).to(torch.float64)
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected points of shape (B, {self.dim}), got {tuple(x.shape)}")
        a = torch.as_tensor(alpha_bar, dtype=torch.float64, device=x.device)
        a = a.expand(x.shape[0]) if a.dim() == 0 else a.reshape(-1)
        means, eigvecs, eigvals = (
            self.means.to(x.device),
            self._eigvecs.to(x.device),
            self._eigvals.to(x.device),
        )
        resid = x[:, None, :] - a.sqrt()[:, None, None] * means[None]  # (B, K, d)
        z = torch.einsum("kdj,bkd->bkj", eigvecs, resid)
        v = a[:, None, None] * eigvals[None] + (1.0 - a)[:, None, None]
        log_norm = -0.5 * ((z * z / v).sum(-1) + v.log().sum(-1) + self.dim * math.log(2 * math.pi))
        return self.weights.to(x.device).log()[None] + log_norm, z, v

    def _class_mask(self, labels: Tensor, device: torch.device) -> Tensor:
        labels = torch.as_tensor(labels, dtype=torch.long, device=device).reshape(-1, 1)
        return self.classes.to(device)[None, :] == labels

    def component_log_joint(
        self, x: Tensor, alpha_bar: Tensor | float = 1.0, labels: Tensor | None = None
    ) -> Tensor:
        """log p_t(x, k), (B, K); with ``labels``, components of other classes get −inf."""
        log_joint, _, _ = self._noised(x, alpha_bar)
        if labels is not None:
            log_joint = log_joint.masked_fill(
                ~self._class_mask(labels, log_joint.device), -math.inf
            )
        return log_joint

    def log_prob(
        self, x: Tensor, alpha_bar: Tensor | float = 1.0, labels: Tensor | None = None
    ) -> Tensor:
        """log p_t(x), or log p_t(x | y) with ``labels``, (B,)."""
        log_joint = self.component_log_joint(x, alpha_bar, labels)
        total = log_joint.logsumexp(-1)
        if labels is None:
            return total
        prior = self.class_prior().to(total.device)[torch.as_tensor(labels).to(total.device)]
        return total - prior.log()

    def class_log_posterior(self, x: Tensor, alpha_bar: Tensor | float = 1.0) -> Tensor:
        """log p(y | x_t), (B, C): the exact noise-aware classifier."""
        log_joint = self.component_log_joint(x, alpha_bar)
        resp = log_joint - log_joint.logsumexp(-1, keepdim=True)
        classes = self.classes.to(resp.device)
        return torch.stack(
            [resp[:, classes == c].logsumexp(-1) for c in range(self.num_classes)], dim=-1
        )

    def score(
        self, x: Tensor, alpha_bar: Tensor | float = 1.0, labels: Tensor | None = None
    ) -> Tensor:
        """∇ₓ log p_t(x) (or of log p_t(x | y)), (B, d), float64."""
        log_joint, z, v = self._noised(x, alpha_bar)
        if labels is not None:
            log_joint = log_joint.masked_fill(
                ~self._class_mask(labels, log_joint.device), -math.inf
            )
        resp = torch.softmax(log_joint, dim=-1)  # (B, K)
        # Component score −C_k⁻¹(x − √ᾱ μ_k) = −U_k (z / v), weighted by responsibilities.
        weighted = resp[..., None] * (z / v)
        return -torch.einsum("kdj,bkj->bd", self._eigvecs.to(weighted.device), weighted)

    def eps(self, x: Tensor, alpha_bar: Tensor | float, labels: Tensor | None = None) -> Tensor:
        """The exact ε-prediction −√(1 − ᾱ) ∇ log p_t, (B, d), float64."""
        a = torch.as_tensor(alpha_bar, dtype=torch.float64, device=torch.as_tensor(x).device)
        a = a.expand(x.shape[0]) if a.dim() == 0 else a.reshape(-1)
        return -(1.0 - a).sqrt()[:, None] * self.score(x, a, labels)

    def assign_components(self, x: Tensor, labels: Tensor) -> Tensor:
        """The most probable component of each clean point among its target class's, (B,)."""
        return self.component_log_joint(x, 1.0, labels).argmax(-1)


def _component_cov(spec: Mapping[str, Any], dim: int, where: str) -> Tensor:
    if "cov" in spec:
        cov = torch.as_tensor(spec["cov"], dtype=torch.float64)
        if cov.shape != (dim, dim):
            raise ValueError(f"{where}.cov must be a {dim}×{dim} matrix")
        return cov
    std = torch.as_tensor(spec.get("std", 1.0), dtype=torch.float64).reshape(-1)
    if std.numel() == 1:
        std = std.expand(dim)
    if std.shape != (dim,) or not bool((std > 0).all()):
        raise ValueError(f"{where}.std must be a positive number or {dim} positive numbers")
    cov = torch.diag(std**2)
    angle = spec.get("angle")
    if angle is not None:
        if dim != 2:
            raise ValueError(f"{where}.angle (a rotation in degrees) needs dim 2")
        c, s = math.cos(math.radians(float(angle))), math.sin(math.radians(float(angle)))
        rot = torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
        cov = rot @ cov @ rot.T
    return cov


def mixture_from_config(components: Sequence[Mapping[str, Any]]) -> GaussianMixture:
    """From ``mixture.components``: each ``{class, weight, mean, std | cov, angle}``; ``std`` is
    a number or one per axis (axis-aligned, rotated by ``angle`` degrees in 2-D), ``cov`` a full
    matrix. Weights are relative (normalised over all components)."""
    if not components:
        raise ValueError("mixture.components: at least one component is required")
    means, covs, weights, classes = [], [], [], []
    dim = None
    for i, spec in enumerate(components):
        where = f"mixture.components[{i}]"
        missing = [key for key in ("class", "mean") if key not in spec]
        if missing:
            raise ValueError(f"{where}: missing {', '.join(missing)}")
        mean = torch.as_tensor(spec["mean"], dtype=torch.float64).reshape(-1)
        dim = dim or mean.numel()
        if mean.numel() != dim:
            raise ValueError(f"{where}.mean has {mean.numel()} numbers; the first had {dim}")
        means.append(mean)
        covs.append(_component_cov(spec, dim, where))
        weights.append(float(spec.get("weight", 1.0)))
        classes.append(int(spec["class"]))
    return GaussianMixture(
        torch.stack(means), torch.stack(covs), torch.tensor(weights), torch.tensor(classes)
    )
