"""The comparison rule's pieces against closed forms and scipy: critical values, Bonferroni
levels, Student and jackknife intervals, verdict words, stratified bootstrap draws."""

from __future__ import annotations

import math
import statistics

import pytest
import torch
from scipy import stats

from calguide.stats import (
    Interval,
    bootstrap_weights,
    critical_value,
    jackknife_interval,
    normal_interval,
    per_claim_level,
    strata_of,
    t_interval,
    verdict_of,
)
from calguide.stats.resample import stratum_correction


def test_critical_values_are_students_and_the_normal_ones() -> None:
    # The point: at 2 degrees of freedom the 95% value is 4.30, not 2.
    assert critical_value(0.95, 2) == pytest.approx(4.302653, abs=1e-6)
    assert critical_value(0.95) == pytest.approx(1.959964, abs=1e-6)
    assert critical_value(0.99, 10) == pytest.approx(stats.t.ppf(0.995, 10))
    assert critical_value(0.95, math.inf) == pytest.approx(1.959964, abs=1e-6)
    with pytest.raises(ValueError):
        critical_value(1.0, 3)
    with pytest.raises(ValueError):
        critical_value(0.95, 0)


def test_bonferroni_level_of_a_family() -> None:
    assert per_claim_level(1) == pytest.approx(0.95)
    assert per_claim_level(9) == pytest.approx(1 - 0.05 / 9)
    assert per_claim_level(4, alpha=0.1) == pytest.approx(0.975)
    with pytest.raises(ValueError):
        per_claim_level(0)


def test_t_interval_is_the_textbook_one() -> None:
    d = [1.0, 2.0, 4.0]
    interval = t_interval(d, 0.95)
    se = statistics.stdev(d) / math.sqrt(3)
    assert interval.estimate == pytest.approx(7 / 3)
    assert interval.se == pytest.approx(se)
    assert interval.df == 2 and interval.units == 3
    assert interval.half_width == pytest.approx(4.302653 * se, rel=1e-6)
    assert (interval.lo, interval.hi) == pytest.approx(
        (7 / 3 - 4.302653 * se, 7 / 3 + 4.302653 * se), rel=1e-6
    )
    with pytest.raises(ValueError):
        t_interval([1.0], 0.95)


def test_jackknife_of_a_mean_is_the_t_interval() -> None:
    """For the mean, the delete-one jackknife's standard error is exactly sd/√n."""
    values = [0.3, -1.2, 2.5, 0.7, 1.1, -0.4]
    n = len(values)
    loo = [(sum(values) - v) / (n - 1) for v in values]
    jack = jackknife_interval(statistics.fmean(values), loo, 0.99)
    student = t_interval(values, 0.99)
    assert jack.se == pytest.approx(student.se)
    assert jack.df == student.df and (jack.lo, jack.hi) == pytest.approx((student.lo, student.hi))


def test_verdict_words_follow_the_interval_and_the_claimed_side() -> None:
    def interval(lo: float, hi: float) -> Interval:
        centre, half = (lo + hi) / 2, (hi - lo) / 2
        return normal_interval(centre, half / critical_value(0.95), 0.95, 100)

    assert verdict_of(interval(-3.0, -1.0)) == "supported"  # lower is better, A − B < 0
    assert verdict_of(interval(1.0, 3.0)) == "contradicted"
    assert verdict_of(interval(-1.0, 1.0)) == "within noise"
    assert verdict_of(interval(1.0, 3.0), lower_is_better=False) == "supported"
    assert verdict_of(interval(-3.0, -1.0), lower_is_better=False) == "contradicted"
    # An interval that reaches past 0 is not decisive; a point at 0 neither.
    assert verdict_of(interval(-1e-9, 2.0)) == "within noise"
    assert verdict_of(normal_interval(0.0, 0.0, 0.95, 10)) == "within noise"


def test_bootstrap_weights_keep_each_stratum_size_and_are_seeded() -> None:
    seeds = torch.tensor([0] * 6 + [1] * 4)
    labels = torch.tensor([0, 1, 0, 1, 0, 1, 2, 2, 3, 3])
    strata = strata_of(seeds, labels)
    assert strata.unique().numel() == 4
    w = bootstrap_weights(strata, 500, seed=3)
    assert w.shape == (500, 10) and w.dtype == torch.float64
    for s in strata.unique():
        assert torch.all(w[:, strata == s].sum(1) == (strata == s).sum())
    assert torch.equal(w, bootstrap_weights(strata, 500, seed=3))
    assert not torch.equal(w, bootstrap_weights(strata, 500, seed=4))
    # Each sample is drawn about once per replicate on average.
    assert w.mean(0) == pytest.approx(torch.ones(10, dtype=torch.float64), abs=0.15)


def test_stratum_correction_undoes_the_within_stratum_shrinkage() -> None:
    """The stratified bootstrap's variance of a mean is (k − 1)/k of the usual one per
    stratum of size k; the correction factor restores it."""
    torch.manual_seed(0)
    x = torch.randn(40, dtype=torch.float64)
    strata = torch.arange(40) % 4  # 4 strata of 10
    w = bootstrap_weights(strata, 20000, seed=0)
    boot_sd = float(((w @ x) / 40).std())
    within = sum(float(x[strata == s].var(unbiased=True)) * 10 for s in range(4)) / 40**2
    assert boot_sd * stratum_correction(strata) == pytest.approx(math.sqrt(within), rel=0.03)
    assert stratum_correction(strata) == pytest.approx(math.sqrt(10 / 9))
