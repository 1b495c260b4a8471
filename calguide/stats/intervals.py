"""Intervals for a difference and the verdict they give, at one error rate per table.

A claim "A is better than B on metric m" is judged by a two-sided interval for the difference
d = m(A) − m(B). The claims of one printed table share one error rate: with m judged claims,
each interval has level 1 − α/m (Bonferroni), so the probability that *any* claim of the table
gets a decisive verdict although its rows do not differ is at most α (:data:`FAMILY_ALPHA` =
5%), whatever the dependence between the claims. (A table may group its claims into families
for reading; the error rate is the table's.) Bonferroni rather than Holm: its verdicts are
exactly "the printed interval excludes 0", so the interval and the word never disagree.

- **supported**: the whole interval lies on the claimed side of 0;
- **contradicted**: the whole interval lies on the other side;
- **within noise**: it contains 0.

A claim of equivalence, "A equals B within ±δ" (δ stated with the claim, before looking), is two
one-sided tests at α/m each: the (1 − 2α/m) interval lying inside (−δ, δ) gives
**equivalent**, lying wholly beyond ±δ **different**, anything else **inconclusive**.

The smallest difference a run could have resolved is the interval's half-width: a true
difference of that size gives a decisive verdict about half the time. Set metrics such as FID
are biased by O(1/n), differently for rows of different diversity; their intervals are centred
on the jackknife's bias-corrected estimate, a statement about the distributions rather than
about the sample size at hand, with the plug-in value kept beside it.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

VERDICTS = ("supported", "contradicted", "within noise")
EQUIVALENCE_VERDICTS = ("equivalent", "different", "inconclusive")
FAMILY_ALPHA = 0.05


def per_claim_level(claims: int, alpha: float = FAMILY_ALPHA) -> float:
    """The two-sided coverage of each interval of a family of ``claims`` claims (Bonferroni)."""
    if claims < 1:
        raise ValueError(f"a family needs at least one claim, got {claims}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    return 1.0 - alpha / claims


def critical_value(level: float, df: float | None = None) -> float:
    """The two-sided critical value of a ``level`` interval: Student's t with ``df`` degrees of
    freedom, or the normal one when ``df`` is None or infinite."""
    from scipy import stats

    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    q = 0.5 + level / 2.0
    if df is None or math.isinf(df):
        return float(stats.norm.ppf(q))
    if df <= 0:
        raise ValueError(f"degrees of freedom must be positive, got {df}")
    return float(stats.t.ppf(q, df))


@dataclass(frozen=True)
class Interval:
    """A two-sided interval ``estimate ± critical·se`` for a difference.

    ``plugin`` is the statistic of the samples at hand when ``estimate`` is its bias-corrected
    value (a set metric such as FID is biased by O(1/n), differently for rows of different
    diversity: the claim is about the distributions, so the interval is centred on the
    corrected estimate and the plug-in is shown beside it)."""

    estimate: float
    se: float
    level: float
    df: float | None  # None: normal critical value
    method: str  # "seeds" (t over independent runs) | "bootstrap" (over samples)
    units: int  # independent runs (seeds), or paired samples of the bootstrap
    plugin: float | None = None

    @property
    def critical(self) -> float:
        return critical_value(self.level, self.df)

    @property
    def half_width(self) -> float:
        """The smallest |difference| this interval resolves (decisive about half the time)."""
        return self.critical * self.se

    @property
    def lo(self) -> float:
        return self.estimate - self.half_width

    @property
    def hi(self) -> float:
        return self.estimate + self.half_width


def t_interval(differences: Sequence[float], level: float, method: str = "seeds") -> Interval:
    """Student's interval for the mean of independent paired differences (one per seed or per
    fine-tuning run): se = sd/√n on n − 1 degrees of freedom."""
    values = [float(v) for v in differences]
    n = len(values)
    if n < 2:
        raise ValueError(f"a t-interval needs at least 2 independent differences, got {n}")
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"differences must be finite, got {values}")
    se = statistics.stdev(values) / math.sqrt(n)
    return Interval(statistics.fmean(values), se, level, float(n - 1), method, n)


def jackknife_bias_corrected(estimate: float, leave_one_out: Sequence[float]) -> float:
    """Quenouille's jackknife estimate G·θ − (G − 1)·mean(θ_(g)): removes the O(1/n) term of
    a statistic's bias (for a mean it is the mean itself)."""
    values = [float(v) for v in leave_one_out]
    g = len(values)
    if g < 2:
        raise ValueError(f"a jackknife needs at least 2 groups, got {g}")
    return g * float(estimate) - (g - 1) * statistics.fmean(values)


def jackknife_interval(
    estimate: float,
    leave_one_out: Sequence[float],
    level: float,
    method: str = "jackknife",
    *,
    bias_corrected: bool = True,
) -> Interval:
    """The delete-one-group jackknife: se² = (G − 1)/G · Σ_g (θ_(g) − θ̄)² from the statistic
    recomputed without each of G independent groups, on G − 1 degrees of freedom, centred on
    the bias-corrected estimate (:func:`jackknife_bias_corrected`; the plug-in ``estimate``
    kept as ``plugin``). For a mean it is exactly the t-interval; for a nonlinear statistic
    (FID) its variance is conservative in expectation (Efron–Stein)."""
    values = [float(v) for v in leave_one_out]
    g = len(values)
    if g < 2:
        raise ValueError(f"a jackknife needs at least 2 groups, got {g}")
    if not (math.isfinite(estimate) and all(math.isfinite(v) for v in values)):
        raise ValueError("jackknife values must be finite")
    centre = statistics.fmean(values)
    se = math.sqrt((g - 1) / g * sum((v - centre) ** 2 for v in values))
    if not bias_corrected:
        return Interval(float(estimate), se, level, float(g - 1), method, g)
    corrected = jackknife_bias_corrected(estimate, values)
    return Interval(corrected, se, level, float(g - 1), method, g, plugin=float(estimate))


def normal_interval(estimate: float, se: float, level: float, units: int) -> Interval:
    """The normal interval ``estimate ± z·se`` (``se`` from a bootstrap over ``units``)."""
    if not (math.isfinite(estimate) and math.isfinite(se)) or se < 0:
        raise ValueError(f"need a finite estimate and se >= 0, got {estimate}, {se}")
    return Interval(float(estimate), float(se), level, None, "bootstrap", int(units))


def verdict_of(interval: Interval, lower_is_better: bool = True) -> str:
    """``supported`` / ``contradicted`` / ``within noise`` for "A is better than B" from the
    interval of d = A − B (better = lower d when ``lower_is_better``)."""
    lo, hi = interval.lo, interval.hi
    if lower_is_better:
        lo, hi = -hi, -lo  # the interval of the improvement B − A
    if lo > 0.0:
        return "supported"
    if hi < 0.0:
        return "contradicted"
    return "within noise"


def equivalence_level(claims: int, alpha: float = FAMILY_ALPHA) -> float:
    """The two-sided coverage of an equivalence claim's interval in a family of ``claims``:
    two one-sided tests at α/m each are the (1 − 2α/m) interval lying inside the margin."""
    return 1.0 - 2.0 * (1.0 - per_claim_level(claims, alpha))


def equivalence_of(interval: Interval, margin: float) -> str:
    """``equivalent`` / ``different`` / ``inconclusive`` for "A equals B within ±margin" from
    the interval of d = A − B at :func:`equivalence_level`: equivalent when it lies inside
    (−margin, +margin) (both one-sided tests reject |d| ≥ margin), different when it lies
    wholly beyond +margin or below −margin (|d| > margin, at the same error rate), else
    inconclusive."""
    if not (math.isfinite(margin) and margin > 0.0):
        raise ValueError(f"an equivalence margin must be a finite number > 0, got {margin}")
    lo, hi = interval.lo, interval.hi
    if -margin < lo and hi < margin:
        return "equivalent"
    if lo > margin or hi < -margin:
        return "different"
    return "inconclusive"


def clopper_pearson(successes: int, trials: int, level: float = 0.95) -> tuple[float, float]:
    """The exact (Clopper–Pearson) interval of a binomial rate: how an observed error rate of
    ``successes``/``trials`` bounds the true one."""
    from scipy import stats

    if trials < 1 or not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials, trials >= 1; got {successes}/{trials}")
    tail = (1.0 - level) / 2.0
    lo = 0.0 if successes == 0 else float(stats.beta.ppf(tail, successes, trials - successes + 1))
    hi = (
        1.0
        if successes == trials
        else float(stats.beta.ppf(1 - tail, successes + 1, trials - successes))
    )
    return lo, hi
