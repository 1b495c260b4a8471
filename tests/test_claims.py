"""The claims rule: supported / not supported / within noise from means, spreads and counts."""

from __future__ import annotations

import math

import pytest

from calguide.tools.claims import difference_verdict, judge, verdict_block


def test_a_difference_beyond_two_standard_errors_decides() -> None:
    # FID 5.0 ± 0.1 (3 seeds) against 6.0 ± 0.1: d = −1, se = 0.1·sqrt(2/3)
    verdict, d, se = difference_verdict(5.0, 0.1, 3, 6.0, 0.1, 3)
    assert verdict == "supported" and d == pytest.approx(-1.0)
    assert se == pytest.approx(0.1 * math.sqrt(2 / 3))
    assert difference_verdict(6.0, 0.1, 3, 5.0, 0.1, 3)[0] == "not supported"
    assert difference_verdict(5.0, 1.0, 3, 5.5, 1.0, 3)[0] == "within noise"
    # Higher is better (e.g. precision): the sides swap.
    assert difference_verdict(0.9, 0.01, 3, 0.8, 0.01, 3, lower_is_better=False)[0] == "supported"


def test_exactly_at_the_threshold_is_within_noise() -> None:
    se = 0.5 * math.sqrt(2 / 2)
    assert difference_verdict(5.0 - 2 * se, 0.5, 2, 5.0, 0.5, 2)[0] == "within noise"


def test_a_metric_without_spread_uses_the_relative_tolerance() -> None:
    assert difference_verdict(0.010, None, 1, 0.020, None, 1)[0] == "supported"
    assert difference_verdict(0.0199, None, 1, 0.020, None, 1)[0] == "within noise"
    assert difference_verdict(0.030, 0.0, 3, 0.020, 0.0, 3)[0] == "not supported"


def test_judge_reads_rows_by_their_keys_and_reports_missing_ones() -> None:
    summary = [
        {"guidance.name": "js", "fid_mean": 4.0, "fid_std": 0.1, "fid_n": 3},
        {"guidance.name": "vanilla", "fid_mean": 5.0, "fid_std": 0.1, "fid_n": 3},
    ]
    claims = [
        {"id": "a", "text": "JS beats vanilla", "metric": "fid",
         "better": {"guidance.name": "js"}, "than": {"guidance.name": "vanilla"}},
        {"id": "b", "text": "RKL beats vanilla", "metric": "fid",
         "better": {"guidance.name": "rkl"}, "than": {"guidance.name": "vanilla"}},
    ]  # fmt: skip
    first, second = judge(summary, claims)
    assert first.verdict == "supported" and first.difference == pytest.approx(-1.0)
    assert second.verdict == "not measured"
    block = verdict_block([first, second])
    assert "- JS beats vanilla: **supported** (fid 4 vs 5: d = -1, 2·se = 0.163)" in block
    assert "Rule: every row runs the same seeds" in block


def test_rows_with_the_same_seeds_are_compared_pairwise() -> None:
    """A shared per-seed offset (each seed's noise is the same for every row) cancels: the
    unpaired means are within noise, the paired differences are not."""
    offsets = {0: 0.0, 1: 8.0, 2: 3.0}
    jitters = {"js": (0.0, 0.1, -0.1), "vanilla": (0.05, -0.05, 0.0)}
    records = [
        {"guidance.name": name, "seed": seed, "fid": base + offset + jitter}
        for name, base in (("js", 10.0), ("vanilla", 11.0))
        for (seed, offset), jitter in zip(offsets.items(), jitters[name])
    ]
    summary = [
        {"guidance.name": "js", "fid_mean": 13.67, "fid_std": 4.0, "fid_n": 3},
        {"guidance.name": "vanilla", "fid_mean": 14.67, "fid_std": 4.0, "fid_n": 3},
    ]
    claim = {"id": "a", "text": "JS beats vanilla", "metric": "fid",
             "better": {"guidance.name": "js"}, "than": {"guidance.name": "vanilla"}}  # fmt: skip
    assert judge(summary, [claim])[0].verdict == "within noise"  # no records: unpaired
    paired = judge(summary, [claim], records=records)[0]
    assert paired.verdict == "supported" and paired.difference == pytest.approx(-1.0)
    assert "paired over 3 seeds" in paired.detail
    # A metric with the same difference every seed (a classifier's smECE) falls back to the
    # relative tolerance: 5% of the other row's mean.
    flat = [{**r, "fid": 0.02 if r["guidance.name"] == "js" else 0.021} for r in records]
    rows = [{**summary[0], "fid_mean": 0.02}, {**summary[1], "fid_mean": 0.021}]
    assert judge(rows, [claim], records=flat)[0].verdict == "within noise"  # 0.001 < 2·0.00105
