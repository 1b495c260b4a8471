"""Exact measurements of class-conditional samples against the mixture's p(x | y)."""

from __future__ import annotations

import torch
from torch import Tensor

from calguide.data.gmm import GaussianMixture


def _mean_pairwise_distance(a: Tensor, b: Tensor, *, exclude_diagonal: bool, chunk: int) -> float:
    total = 0.0
    for start in range(0, a.shape[0], chunk):
        block = torch.cdist(a[start : start + chunk], b)
        total += float(block.sum())
    count = a.shape[0] * b.shape[0]
    if exclude_diagonal:
        count -= a.shape[0]  # the zero self-distances were summed, not counted
    return total / count


def energy_distance(a: Tensor, b: Tensor, *, chunk: int = 2048) -> float:
    """Unbiased (U-statistic) squared energy distance 2E|X−Y| − E|X−X'| − E|Y−Y'|.

    Zero in expectation when both sets come from the same law, so its spread over exact-vs-exact
    replicates is the noise floor a sampler is compared with.
    """
    a, b = a.double().flatten(1), b.double().flatten(1)
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise ValueError("energy_distance needs at least 2 points in each set")
    cross = _mean_pairwise_distance(a, b, exclude_diagonal=False, chunk=chunk)
    within_a = _mean_pairwise_distance(a, a, exclude_diagonal=True, chunk=chunk)
    within_b = _mean_pairwise_distance(b, b, exclude_diagonal=True, chunk=chunk)
    return 2.0 * cross - within_a - within_b


def mode_coverage_tv(mixture: GaussianMixture, x: Tensor, labels: Tensor) -> float:
    """Mean over the sampled classes of TV(empirical component shares, true within-class
    weights), components assigned by their exact posterior among the target class's.

    0 = every mode of p(x | y) gets its share; a class collapsed onto its major mode scores
    that mode's missing weight."""
    labels = labels.long().cpu()
    comp = mixture.assign_components(x.cpu(), labels)
    within = mixture.within_class_weights()
    tvs = []
    for c in labels.unique().tolist():
        members = torch.nonzero(mixture.classes == c).flatten()
        counts = torch.bincount(comp[labels == c], minlength=mixture.num_components).double()
        shares = counts[members] / counts[members].sum()
        tvs.append(0.5 * float((shares - within[members]).abs().sum()))
    return sum(tvs) / len(tvs)


def exact_reference(mixture: GaussianMixture, labels: Tensor, *, seed: int) -> Tensor:
    """Exact draws from p(x | y) with the same labels (the energy distance's comparison set)."""
    generator = torch.Generator().manual_seed(int(seed))
    x, _, _ = mixture.sample(labels.shape[0], labels.cpu(), generator=generator)
    return x


def class_energy(x: Tensor, reference: Tensor, labels: Tensor) -> float:
    """Mean over the classes in ``labels`` of the energy distance between the class-c rows of
    ``x`` and of ``reference`` (both drawn for the same ``labels``). Per class, so both sets
    are i.i.d. within each comparison: over a class-balanced set the pooled estimate is biased
    (its within-set pairs are less often same-class than its cross pairs)."""
    labels = labels.long().cpu()
    values = [
        energy_distance(x[labels == c].cpu(), reference[labels == c].cpu())
        for c in labels.unique().tolist()
        if int((labels == c).sum()) >= 2
    ]
    if not values:
        raise ValueError("class_energy needs at least 2 samples of some class")
    return sum(values) / len(values)


def per_class_energy(mixture: GaussianMixture, x: Tensor, labels: Tensor, *, seed: int) -> float:
    """:func:`class_energy` against fresh exact draws from p(x | y) for the same labels."""
    return class_energy(x, exact_reference(mixture, labels, seed=seed), labels)


def evaluate_samples(
    mixture: GaussianMixture, x: Tensor, labels: Tensor, *, seed: int = 0
) -> dict[str, float]:
    """Everything the lab reports for samples ``x`` drawn for ``labels``:

    * ``class_acc``: argmax of the exact p(y | x) equals the target;
    * ``mode_tv``: :func:`mode_coverage_tv`;
    * ``energy``: :func:`per_class_energy` (×1000 in tables);
    * ``log_density``: mean log p(x | y) (higher = more typical of the target class; strong
      guidance raises it by concentrating on the densest mode, so read it with ``mode_tv``).
    """
    x = x.double().cpu()
    labels = labels.long().cpu()
    posterior = mixture.class_log_posterior(x, 1.0)
    return {
        "class_acc": float((posterior.argmax(-1) == labels).double().mean()),
        "mode_tv": mode_coverage_tv(mixture, x, labels),
        "energy": per_class_energy(mixture, x, labels, seed=seed),
        "log_density": float(mixture.log_prob(x, 1.0, labels).mean()),
    }
