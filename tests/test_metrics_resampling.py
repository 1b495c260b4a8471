"""KID against torch-fidelity, and every metric's reweighted replicates against the metric of
the explicitly repeated (or deleted) rows: what the verdicts' jackknife computes."""

from __future__ import annotations

import pytest
import torch

from calguide.metrics.fid import (
    FeatureStats,
    fid_from_features,
    fid_from_stats,
    fid_leave_one_out,
    fid_replicates,
)
from calguide.metrics.kid import _mmd2, kid, kid_replicates
from calguide.metrics.per_sample import (
    PerSample,
    leave_one_out,
    read_eval_features,
    replicates,
    values,
    write_eval_features,
)
from calguide.metrics.prdc import precision_recall, precision_recall_replicates


def _gaussian(n: int, d: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    """n draws of one correlated Gaussian per dimension d (the same for every seed)."""
    mix = torch.randn(d, d, generator=torch.Generator().manual_seed(d)) / d**0.5
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) @ mix + shift


def _reference(d: int = 6, m: int = 300) -> dict:
    real = _gaussian(m, d, 99)
    stats = FeatureStats.from_features(real)
    return {"mean": stats.mean, "cov": stats.covariance, "features": real.half(), "file": "x"}


@pytest.mark.parametrize("n,d", [(40, 6), (8, 20), (30, 30)])
def test_fid_replicates_equal_fid_of_the_repeated_rows(n: int, d: int) -> None:
    """Both routes (D × D when n > D, n × n otherwise), integer weights = repeated rows."""
    x = _gaussian(n, d, 1, shift=0.3)
    real = _gaussian(200, d, 2)
    ref = FeatureStats.from_features(real)
    g = torch.Generator().manual_seed(0)
    w = torch.randint(0, 3, (5, n), generator=g).double()
    w[:, :3] += 1  # at least a few rows in every replicate
    got = fid_replicates(x, w, ref.mean, ref.covariance)
    for b in range(5):
        rows = x.repeat_interleave(w[b].long(), dim=0)
        want = fid_from_features(real, rows, method="sqrtm")
        assert got[b].item() == pytest.approx(want, rel=1e-6, abs=1e-6)
    ones = torch.ones(1, n, dtype=torch.float64)
    stats = FeatureStats.from_features(x)
    assert fid_replicates(x, ones, ref.mean, ref.covariance)[0].item() == pytest.approx(
        fid_from_stats(stats.mean, stats.covariance, ref.mean, ref.covariance), rel=1e-7
    )


def test_fid_leave_one_out_recomputes_without_each_group() -> None:
    x = _gaussian(90, 5, 3)
    real = _gaussian(150, 5, 4)
    ref = FeatureStats.from_features(real)
    groups = torch.arange(90) % 7
    full, loo = fid_leave_one_out(x, groups, ref.mean, ref.covariance)
    assert full == pytest.approx(fid_from_features(real, x), rel=1e-9)
    for g in range(7):
        want = fid_from_features(real, x[groups != g])
        assert loo[g].item() == pytest.approx(want, rel=1e-8)


def test_kid_matches_torch_fidelity_on_whole_sets_and_subsets() -> None:
    from torch_fidelity.metric_kid import (
        KEY_METRIC_KID_MEAN,
        KEY_METRIC_KID_STD,
        kid_features_to_metric,
    )

    fake, real = _gaussian(60, 8, 5, shift=0.2), _gaussian(60, 8, 6)
    value, spread = kid(fake, real, subset_size=1000)
    theirs = kid_features_to_metric(
        fake, real, kid_subsets=1, kid_subset_size=60, verbose=False, rng_seed=0
    )
    assert spread is None
    assert value == pytest.approx(theirs[KEY_METRIC_KID_MEAN], rel=1e-5, abs=1e-7)
    # Larger than one subset: their protocol (subsets drawn by numpy's RandomState(seed)).
    fake, real = _gaussian(150, 8, 7, shift=0.1), _gaussian(180, 8, 8)
    value, spread = kid(fake, real, subsets=7, subset_size=50, seed=11)
    theirs = kid_features_to_metric(
        fake, real, kid_subsets=7, kid_subset_size=50, verbose=False, rng_seed=11
    )
    assert value == pytest.approx(theirs[KEY_METRIC_KID_MEAN], rel=1e-5, abs=1e-7)
    assert spread == pytest.approx(theirs[KEY_METRIC_KID_STD], rel=1e-4, abs=1e-7)


def test_kid_is_unbiased_where_fid_is_not() -> None:
    """Samples from the reference's own distribution: KID's mean over many draws is 0 within
    its standard error at any size; FID's is positive and shrinks with the sample size (its
    small-sample bias)."""
    import statistics

    real = _gaussian(400, 4, 0)
    for n in (20, 80):
        k = [kid(_gaussian(n, 4, 1000 + seed), real)[0] for seed in range(80)]
        se = statistics.stdev(k) / len(k) ** 0.5
        assert abs(statistics.fmean(k)) < 4 * se, n
    fid20 = statistics.fmean(fid_from_features(real, _gaussian(20, 4, s)) for s in range(80))
    fid80 = statistics.fmean(fid_from_features(real, _gaussian(80, 4, s)) for s in range(80))
    assert fid20 > 2 * fid80 > 0


def test_kid_replicates_equal_kid_of_the_repeated_rows() -> None:
    fake, real = _gaussian(25, 5, 9, shift=0.3), _gaussian(40, 5, 10)
    w = torch.randint(0, 3, (4, 25), generator=torch.Generator().manual_seed(1)).double()
    w[:, :2] += 1
    got = kid_replicates(fake, w, real)
    for b in range(4):
        rows = fake.repeat_interleave(w[b].long(), dim=0)
        assert got[b].item() == pytest.approx(_mmd2(rows, real), rel=1e-9, abs=1e-12)
    assert kid_replicates(fake, torch.ones(1, 25), real)[0].item() == pytest.approx(
        kid(fake, real)[0], rel=1e-12
    )


def test_precision_recall_replicates() -> None:
    fake, real = _gaussian(50, 4, 11, shift=0.4), _gaussian(60, 4, 12)
    ones = torch.ones(1, 50)
    p, r = precision_recall_replicates(real, fake, ones, 3, batch_size=17)
    assert (p.item(), r.item()) == pytest.approx(precision_recall(real, fake, 3, batch_size=17))
    # Deleting samples: precision is the mean of the kept samples' indicators; recall can
    # only fall (fewer balls), never rise.
    keep = torch.ones(2, 50)
    keep[1, :25] = 0
    p2, r2 = precision_recall_replicates(real, fake, keep, 3)
    assert r2[1] <= r2[0] and r2[0] == pytest.approx(r.item())
    inside = precision_recall_replicates(real, fake, torch.eye(50), 3)[0]
    assert set(inside.tolist()) <= {0.0, 1.0}
    assert p2[1].item() == pytest.approx(inside[25:].mean().item())


def test_per_sample_file_round_trip_and_leave_one_out(tmp_path) -> None:
    ref = _reference()
    feats = _gaussian(60, 6, 13).half()
    rows = {
        "indices": torch.arange(60).flip(0),
        "labels": torch.arange(60) % 3,
        "features": feats,
        "correct": (torch.arange(60) % 4 != 0).to(torch.int8),
    }
    path = write_eval_features(
        tmp_path / "eval_features.npz", rows, extractor="toy", reference_file="/ref.pt"
    )
    back = read_eval_features(path)
    assert back.extractor == "toy" and back.reference_file == "/ref.pt"
    assert torch.equal(back.indices, torch.arange(60))  # sorted by index
    assert torch.equal(back.features, feats.flip(0))
    metrics = ["fid", "kid", "precision", "recall", "class_acc"]
    full = values(back, ref, metrics)
    assert full["class_acc"] == pytest.approx(45 / 60)
    groups = torch.arange(60) // 10
    loo = leave_one_out(back, groups, ref, metrics)
    for m in metrics:
        assert loo[m][0] == pytest.approx(full[m], rel=1e-9)
    # A real jackknife: every metric without a group is that metric of the kept samples, the
    # k-NN radii of recall recomputed on them too.
    for g in range(6):
        kept = back.take(torch.nonzero(groups != g).reshape(-1))
        direct = values(kept, ref, metrics)
        for m in metrics:
            assert loo[m][1][g].item() == pytest.approx(direct[m], rel=1e-7, abs=1e-9), (g, m)
    # Replicates with all-ones weights are the set's values.
    ones = torch.ones(1, 60, dtype=torch.float64)
    again = replicates(back, ones, ref, metrics)
    assert {m: again[m][0].item() for m in metrics} == pytest.approx(full)


def test_unreadable_per_sample_file_is_one_clear_error(tmp_path) -> None:
    from calguide.metrics.per_sample import PerSampleError

    bad = tmp_path / "eval_features.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(PerSampleError, match="cannot read"):
        read_eval_features(bad)
    with pytest.raises(PerSampleError, match="no per-sample evaluation file"):
        read_eval_features(tmp_path / "missing.npz")
    assert isinstance(PerSample, type)
