"""What a table says about each claim of the paper, decided by a rule with a stated error rate.

A claim compares two rows of a table on one metric ("row A has a lower FID than row B", or "A
equals B within ±δ"). Rows share each sample index's noise and requested label, so the
comparison is *paired*. The rule (docs/verdicts.md):

1. **Estimate.** d = m(A) − m(B) on the rows' pooled paired samples (every paired seed), the
   metric recomputed from the runs' per-sample features (``eval_features.npz``). For FID and
   KID it is centred on the jackknife's bias-corrected estimate G·d − (G − 1)·mean(d_(g)): FID
   is biased by O(1/n), differently for rows of different diversity, and a claim is about the
   distributions, not the sample size at hand; the plug-in d (the metric at the rows' sample
   count, as the paper's tables report it) is kept beside it. Precision and recall are judged
   at the rows' sample size (:data:`~calguide.metrics.per_sample.SMOOTH_METRICS`).
2. **Independent groups.** The paired samples fall into groups that are independent by
   construction: blocks of ``block_size`` sample indices within each run (every sample has its
   own noise generator), else each seed's run, else (one run per row) 20 index blocks.
3. **Interval.** The delete-one-group jackknife: d recomputed without each of the G groups
   (every metric recomputed on what it keeps, the k-NN radii of precision and recall
   included), se² = (G − 1)/G · Σ (d_(g) − mean)², Student's critical value on G − 1 degrees of
   freedom. For a mean it is the paired t-interval; for FID its variance is conservative in
   expectation (Efron–Stein), and experiments/verdict_calibration.py and
   experiments/verdict_simulation.py measure its error rate and coverage. A claim with
   ``replicates: <key>`` (a model trained once per value, e.g. a fine-tuning seed) takes one
   corrected pooled d per value and Student's interval over those: the training run is then
   what varies most. A metric without per-sample data (``classifier_smece``, a plugin's) uses
   Student's interval over the paired runs' recorded values.
4. **One error rate per table.** The table's judged claims share a 5% error rate by
   Bonferroni: with m judged claims each interval has level 1 − 0.05/m, so the chance that any
   verdict of the table is decisive while its rows do not differ is at most 5%. A claim's
   ``family`` only groups it for reading.
5. **Verdict.** supported (the interval lies on the claimed side of 0), contradicted (on the
   other side), within noise (it contains 0). An equivalence claim (``margin: δ``) is two
   one-sided tests at 0.05/m each: equivalent (the 1 − 0.1/m interval lies inside ±δ),
   different (it lies wholly beyond ±δ), inconclusive. The interval's half-width is the
   smallest difference the run could resolve.

Claims are YAML (the experiment's ``experiment.claims``, or ``calguide-aggregate --claims``)::

    - id: js_beats_elucd
      text: JS-regularized guidance gives a lower FID than EluCD's
      metric: fid
      lower_is_better: true
      better: {guidance.name: js, denoiser.name: unet_tiny}
      than: {guidance.name: vanilla, denoiser.name: unet_tiny}
      family: main                       # optional
      replicates: classifier.finetune    # optional
    - id: fast_path_equals_fp32
      text: sampling with channels_last equals the plain layout within ±1 FID
      metric: fid
      margin: 1.0                        # an equivalence claim: rows a and b
      a: {sampling.channels_last: true}
      b: {sampling.channels_last: false}

Settings (``experiment.verdicts`` or the command line): ``alpha``, ``block_size``, ``k`` (the
k-NN neighbourhood of precision and recall), ``device``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from calguide.metrics.per_sample import (
    PER_SAMPLE_METRICS,
    SMOOTH_METRICS,
    PerSample,
    leave_one_out,
    read_eval_features,
)
from calguide.metrics.reference import load_reference_file
from calguide.stats import (
    FAMILY_ALPHA,
    Interval,
    equivalence_level,
    equivalence_of,
    jackknife_bias_corrected,
    jackknife_interval,
    per_claim_level,
    t_interval,
    verdict_of,
)

NOT_JUDGED = "not judged"

DEFAULT_FAMILY = "claims"


class ClaimError(ValueError):
    """A malformed claim (missing key, wrong type)."""


@dataclass(frozen=True)
class Settings:
    alpha: float = FAMILY_ALPHA
    block_size: int | None = None
    k: int = 3
    device: str | None = None

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> Settings:
        values = dict(values or {})
        unknown = sorted(set(values) - {f for f in cls.__dataclass_fields__})
        if unknown:
            raise ClaimError(
                f"verdict settings {unknown} unknown; allowed {sorted(cls.__dataclass_fields__)}"
            )
        out = cls(**values)
        if not 0.0 < out.alpha < 1.0:
            raise ClaimError(f"verdicts.alpha={out.alpha}: must be in (0, 1)")
        if out.block_size is not None and out.block_size < 2:
            raise ClaimError(f"verdicts.block_size={out.block_size}: must be >= 2 or null")
        return out


@dataclass(frozen=True)
class Verdict:
    claim: str
    text: str
    family: str
    metric: str
    verdict: str
    better_value: float | None = None
    than_value: float | None = None
    difference: float | None = None
    lo: float | None = None
    hi: float | None = None
    resolvable: float | None = None  # the interval's half-width
    level: float | None = None
    df: float | None = None
    method: str | None = None
    units: int = 0
    unit: str = ""
    lower_is_better: bool = True
    reason: str = ""
    samples_factor: float | None = None  # × samples for the observed |d| to be decided
    plugin: float | None = None  # the uncorrected d of the samples at hand
    margin: float | None = None  # an equivalence claim's ±δ


def _same(ours: Any, wanted: Any) -> bool:
    """Equal as numbers when both read as numbers (a scale of 1 is 1.0), else as text."""
    try:
        return float(ours) == float(wanted)
    except (TypeError, ValueError):
        return str(ours) == str(wanted)


def _matches(record: Mapping[str, Any], selector: Mapping[str, Any]) -> bool:
    return all(_same(record.get(key), value) for key, value in selector.items())


def _sides(claim: Mapping[str, Any]) -> tuple[str, str]:
    """The keys of the two rows' selectors: ``better``/``than``, or ``a``/``b`` (equivalence)."""
    return ("a", "b") if "margin" in claim else ("better", "than")


def _check_claim(claim: Mapping[str, Any]) -> None:
    for key in ("id", "text", "metric", *_sides(claim)):
        if key not in claim:
            raise ClaimError(f"claim {claim.get('id', '?')!r} has no {key!r}")
    for key in _sides(claim):
        if not isinstance(claim[key], Mapping) or not claim[key]:
            raise ClaimError(f"claim {claim['id']!r}: {key!r} must be a non-empty mapping")
    if "margin" in claim:
        margin = claim["margin"]
        if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not margin > 0:
            raise ClaimError(f"claim {claim['id']!r}: margin must be a number > 0, got {margin!r}")


@lru_cache(maxsize=64)
def _per_sample(path: str) -> PerSample:
    return read_eval_features(path)


@lru_cache(maxsize=8)
def _reference(path: str) -> dict[str, Any]:
    return load_reference_file(path)


def clear_caches() -> None:
    _per_sample.cache_clear()
    _reference.cache_clear()


def _rows_of(record: Mapping[str, Any]) -> PerSample | None:
    path = record.get("eval_features")
    return _per_sample(str(path)) if path else None


def _paired_rows(a: PerSample, b: PerSample) -> tuple[PerSample, PerSample]:
    """The samples both runs have, in index order (positions of each)."""
    common = torch.from_numpy(np.intersect1d(a.indices.numpy(), b.indices.numpy()))
    pos_a = torch.searchsorted(a.indices, common)
    pos_b = torch.searchsorted(b.indices, common)
    return a.take(pos_a), b.take(pos_b)


def _reference_of(*rows: PerSample) -> dict[str, Any]:
    """The reference statistics every one of ``rows`` was evaluated against."""
    files = {r.reference_file for r in rows}
    if len(files) != 1 or None in files:
        raise ClaimError(
            "paired runs were evaluated against different or unknown references: "
            f"{sorted(map(str, files))}"
        )
    return _reference(str(files.pop()))


DEFAULT_GROUPS = 20
"""Groups of a single run (no seeds, no block size): its samples in this many index blocks."""


def _pooled(
    pairs: Sequence[tuple[Mapping, Mapping, Any]], settings: Settings
) -> tuple[PerSample, PerSample, torch.Tensor] | None:
    """Both rows' paired samples over all paired runs, and each sample's independent group:
    a block of ``block_size`` indices of its run, or its run (seed) when there is no block
    size, or one of :data:`DEFAULT_GROUPS` index blocks of a single run. None without
    per-sample data."""
    parts_a, parts_b, groups = [], [], []
    offset = 0
    for ra, rb, _ in pairs:
        rows_a, rows_b = _rows_of(ra), _rows_of(rb)
        if rows_a is None or rows_b is None:
            return None
        pa, pb = _paired_rows(rows_a, rows_b)
        n = len(pa)
        size = settings.block_size
        if size is None and len(pairs) == 1:
            size = -(-n // DEFAULT_GROUPS)
        if size:
            count = max(1, n // size)
            ids = torch.clamp(torch.arange(n) // size, max=count - 1) + offset
            offset += count
        else:
            ids = torch.full((n,), offset, dtype=torch.int64)
            offset += 1
        parts_a.append(pa)
        parts_b.append(pb)
        groups.append(ids)
    return _concat(parts_a), _concat(parts_b), torch.cat(groups)


def _concat(parts: Sequence[PerSample]) -> PerSample:
    return PerSample(
        torch.cat([p.indices for p in parts]),
        torch.cat([p.labels for p in parts]),
        torch.cat([p.features for p in parts]),
        torch.cat([p.correct for p in parts]),
        parts[0].extractor,
        parts[0].reference_file,
    )


def _jackknife(rows: PerSample, groups: torch.Tensor, metric: str, settings: Settings):
    ref = _reference_of(rows)
    return leave_one_out(rows, groups, ref, [metric], k=settings.k, device=settings.device)[metric]


def _pooled_difference(
    pairs: Sequence[tuple[Mapping, Mapping, Any]], metric: str, settings: Settings
) -> tuple[float, float, float, torch.Tensor] | None:
    """(A, B, d = A − B on the pooled paired samples, d without each group) or None."""
    pooled = _pooled(pairs, settings)
    if pooled is None:
        return None
    rows_a, rows_b, groups = pooled
    _reference_of(rows_a, rows_b)  # one reference for both rows
    a, loo_a = _jackknife(rows_a, groups, metric, settings)
    b, loo_b = _jackknife(rows_b, groups, metric, settings)
    return a, b, a - b, loo_a - loo_b


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return None if math.isnan(value) else float(value)


def paired_runs(
    records: Sequence[Mapping[str, Any]], claim: Mapping[str, Any]
) -> tuple[list[tuple[Mapping, Mapping, Any]], str]:
    """(paired runs (A, B, replicate value), problem) matched by seed and replicate."""
    rep_key = claim.get("replicates")

    def keyed(selector: Mapping[str, Any]) -> dict[tuple, Mapping[str, Any]]:
        out: dict[tuple, Mapping[str, Any]] = {}
        for record in records:
            if _matches(record, selector):
                key = (str(record.get("seed")), str(record.get(rep_key)) if rep_key else None)
                if key in out:
                    return {}  # two runs of one seed: the selector is ambiguous
                out[key] = record
        return out

    first, second = _sides(claim)
    a, b = keyed(claim[first]), keyed(claim[second])
    if not a or not b:
        return [], "rows missing or ambiguous (a selector matches no run, or two runs per seed)"
    common = sorted(set(a) & set(b))
    if not common:
        return [], "the two rows share no seed"
    return [(a[k], b[k], k[1]) for k in common], ""


@dataclass
class _Measured:
    claim: Mapping[str, Any]
    interval: Interval | None
    a_mean: float | None
    b_mean: float | None
    unit: str
    reason: str = ""


def _per_run(pairs: Sequence[tuple[Mapping, Mapping, Any]], metric: str) -> list[tuple]:
    """(A, B, replicate) of each paired run's recorded metric (runs without it left out)."""
    out = []
    for ra, rb, rep in pairs:
        a, b = _number(ra.get(metric)), _number(rb.get(metric))
        if a is not None and b is not None:
            out.append((a, b, rep))
    return out


def _measure(
    records: Sequence[Mapping[str, Any]], claim: Mapping[str, Any], settings: Settings
) -> _Measured:
    metric = str(claim["metric"])
    pairs, problem = paired_runs(records, claim)
    if problem:
        return _Measured(claim, None, None, None, "", problem)
    per_sample = metric in PER_SAMPLE_METRICS and all(
        _rows_of(ra) is not None and _rows_of(rb) is not None for ra, rb, _ in pairs
    )
    rep_key = claim.get("replicates")
    if rep_key:  # the independent units are the trainings
        by_rep: dict[Any, list] = {}
        for pair in pairs:
            by_rep.setdefault(pair[2], []).append(pair)
        diffs, plugins, a_vals, b_vals = [], [], [], []
        for members in by_rep.values():
            if per_sample:
                a, b, d, loo = _pooled_difference(members, metric, settings)  # type: ignore[misc]
                if metric in SMOOTH_METRICS:
                    plugins.append(d)
                    d = jackknife_bias_corrected(d, loo.tolist())
            else:
                runs = _per_run(members, metric)
                if not runs:
                    continue
                a = statistics.fmean(r[0] for r in runs)
                b = statistics.fmean(r[1] for r in runs)
                d = a - b
            diffs.append(d)
            a_vals.append(a)
            b_vals.append(b)
        unit = f"{rep_key} values"
        if len(diffs) < 2:
            reason = f"{len(diffs)} value(s) of {rep_key}: the trainings' variation is unmeasured"
            return _Measured(claim, None, _mean(a_vals), _mean(b_vals), unit, reason)
        interval = t_interval(diffs, 0.95, method=unit)
        if plugins:
            interval = replace(interval, plugin=statistics.fmean(plugins))
        return _Measured(claim, interval, _mean(a_vals), _mean(b_vals), unit)
    if per_sample:
        a, b, d, loo = _pooled_difference(pairs, metric, settings)  # type: ignore[misc]
        groups = int(loo.shape[0])
        if groups < 2:
            return _Measured(claim, None, a, b, "", "fewer than 2 independent groups")
        unit = (
            f"blocks of {settings.block_size} samples"
            if settings.block_size
            else ("seeds" if len(pairs) > 1 else "index blocks of one run")
        )
        interval = jackknife_interval(
            d, loo.tolist(), 0.95, unit, bias_corrected=metric in SMOOTH_METRICS
        )
        return _Measured(claim, interval, a, b, unit)
    runs = _per_run(pairs, metric)
    if not runs:
        return _Measured(claim, None, None, None, "", f"no {metric} values in the paired runs")
    a, b = _mean([r[0] for r in runs]), _mean([r[1] for r in runs])
    diffs = [r[0] - r[1] for r in runs]
    if len(diffs) < 2:
        return _Measured(
            claim, None, a, b, "",
            f"one run per row and no per-sample {metric} to resample",
        )  # fmt: skip
    if max(diffs) - min(diffs) <= 1e-12 * max(1.0, max(abs(x) for x in diffs)):
        return _Measured(
            claim, None, a, b, "seeds",
            f"{metric} does not vary between seeds (a number per model): judging it needs "
            "independent trainings of the model (claim key 'replicates')",
        )  # fmt: skip
    return _Measured(claim, t_interval(diffs, 0.95, method="seeds"), a, b, "seeds")


def _mean(values: Sequence[float]) -> float | None:
    return statistics.fmean(values) if values else None


def judge(
    records: Sequence[Mapping[str, Any]],
    claims: Sequence[Mapping[str, Any]],
    settings: Settings | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[Verdict]:
    """One :class:`Verdict` per claim, in order; the level of every interval set after
    measuring, from the number m of claims the table could judge (Bonferroni over the table:
    1 − α/m two-sided, 1 − 2α/m for an equivalence claim's two one-sided tests)."""
    settings = settings or Settings()
    measured = []
    for claim in claims:
        _check_claim(claim)
        if progress is not None:
            progress(str(claim["id"]))
        measured.append(_measure(records, claim, settings))
    judged = sum(m.interval is not None for m in measured)
    out = []
    for m in measured:
        claim = m.claim
        fam = str(claim.get("family", DEFAULT_FAMILY))
        lower = bool(claim.get("lower_is_better", True))
        margin = float(claim["margin"]) if "margin" in claim else None
        base = Verdict(
            claim=str(claim["id"]), text=str(claim["text"]), family=fam,
            metric=str(claim["metric"]), verdict=NOT_JUDGED, better_value=m.a_mean,
            than_value=m.b_mean, unit=m.unit, lower_is_better=lower, reason=m.reason,
            margin=margin,
        )  # fmt: skip
        if m.interval is None:
            out.append(base)
            continue
        if margin is None:
            interval = replace(m.interval, level=per_claim_level(judged, settings.alpha))
            verdict = verdict_of(interval, lower)
        else:
            interval = replace(m.interval, level=equivalence_level(judged, settings.alpha))
            verdict = equivalence_of(interval, margin)
        factor = None  # × samples for the interval to exclude 0 (or to fit inside ±margin)
        room = abs(interval.estimate) if margin is None else margin - abs(interval.estimate)
        if verdict in ("within noise", "inconclusive") and room > 0.0:
            factor = (interval.half_width / room) ** 2
        out.append(
            replace(
                base, verdict=verdict, difference=interval.estimate, lo=interval.lo,
                hi=interval.hi, resolvable=interval.half_width, level=interval.level,
                df=interval.df, method=interval.method, units=interval.units,
                samples_factor=factor, plugin=interval.plugin,
            )
        )  # fmt: skip
    return out


def row_interval(
    runs: Sequence[Mapping[str, Any]], metric: str, settings: Settings, level: float = 0.95
) -> Interval | None:
    """A row's interval for ``metric`` by the claims' rule: the metric of its pooled samples
    with a delete-one-group jackknife over its independent groups (per-sample metrics), or
    Student's over its runs' recorded values."""
    if metric in PER_SAMPLE_METRICS and runs and all(_rows_of(r) is not None for r in runs):
        pairs = [(r, r, None) for r in runs]
        pooled = _pooled(pairs, settings)
        assert pooled is not None
        rows, _, groups = pooled
        if int(groups.max()) >= 1:
            value, loo = _jackknife(rows, groups, metric, settings)
            return jackknife_interval(
                value, loo.tolist(), level, bias_corrected=metric in SMOOTH_METRICS
            )
    values = [float(r[metric]) for r in runs if _number(r.get(metric)) is not None]
    if len(values) >= 2:
        return t_interval(values, level, method="seeds")
    return None
