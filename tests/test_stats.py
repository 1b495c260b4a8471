"""The comparison rule's pieces against closed forms and scipy: critical values, Bonferroni
levels, Student and jackknife intervals (bias-corrected), verdict and equivalence words,
Clopper–Pearson intervals."""

from __future__ import annotations

import math
import statistics

import pytest
import torch
from scipy import stats

from calguide.stats import (
    Interval,
    clopper_pearson,
    critical_value,
    equivalence_level,
    equivalence_of,
    jackknife_bias_corrected,
    jackknife_interval,
    normal_interval,
    per_claim_level,
    t_interval,
    verdict_of,
)


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


def test_the_jackknife_removes_the_plug_in_variances_bias() -> None:
    """Quenouille's correction of the plug-in variance (biased by −σ²/n) is exactly the
    unbiased sample variance: the delete-one jackknife on a closed form."""
    x = torch.randn(40, generator=torch.Generator().manual_seed(3), dtype=torch.float64)

    def plugin_var(v: torch.Tensor) -> float:
        return float(((v - v.mean()) ** 2).mean())

    loo = [plugin_var(torch.cat([x[:i], x[i + 1 :]])) for i in range(len(x))]
    corrected = jackknife_bias_corrected(plugin_var(x), loo)
    assert corrected == pytest.approx(float(x.var(unbiased=True)), rel=1e-12)
    interval = jackknife_interval(plugin_var(x), loo, 0.95)
    assert interval.estimate == pytest.approx(corrected) and interval.plugin == plugin_var(x)
    # For a mean the correction changes nothing: the interval is the t-interval.
    means = [float(torch.cat([x[:i], x[i + 1 :]]).mean()) for i in range(len(x))]
    same = jackknife_interval(float(x.mean()), means, 0.95)
    assert same.estimate == pytest.approx(float(x.mean()), abs=1e-12)


def test_equivalence_is_two_one_sided_tests() -> None:
    assert equivalence_level(1) == pytest.approx(0.90)  # TOST at 5% = the 90% interval
    assert equivalence_level(5) == pytest.approx(0.98)
    inside = Interval(0.1, 0.2, 0.9, 20.0, "x", 21)
    assert equivalence_of(inside, 1.0) == "equivalent"
    assert equivalence_of(inside, 0.3) == "inconclusive"  # the interval reaches past ±0.3
    beyond = Interval(2.0, 0.2, 0.9, 20.0, "x", 21)
    assert equivalence_of(beyond, 1.0) == "different"
    assert equivalence_of(Interval(-2.0, 0.2, 0.9, 20.0, "x", 21), 1.0) == "different"
    # The TOST p-value rule: both one-sided t tests reject exactly when the interval fits.
    lo_t = (inside.estimate + 1.0) / inside.se
    hi_t = (1.0 - inside.estimate) / inside.se
    p_tost = max(stats.t.sf(lo_t, 20), stats.t.sf(hi_t, 20))
    assert (p_tost < 0.05) == (equivalence_of(inside, 1.0) == "equivalent")
    with pytest.raises(ValueError):
        equivalence_of(inside, 0.0)


@pytest.mark.parametrize(("k", "n"), [(0, 100), (5, 100), (3, 1000), (1000, 1000), (7, 7)])
def test_clopper_pearson_is_scipys_exact_interval(k, n) -> None:
    lo, hi = clopper_pearson(k, n)
    ref = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    assert lo == pytest.approx(ref.low, abs=1e-12) and hi == pytest.approx(ref.high, abs=1e-12)
