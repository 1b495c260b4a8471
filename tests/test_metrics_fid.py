"""FID and the streaming FeatureStats accumulator."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import linalg

from calguide.metrics import FeatureStats, fid_from_features, fid_from_stats


def _features(n: int, d: int, seed: int, scale: float = 1.0, offset: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g) / d**0.5 + torch.eye(d)
    return (torch.randn(n, d, generator=g) @ mix) * scale + offset


def _closed_form(mu1, s1, mu2, s2) -> float:
    covmean = linalg.sqrtm(s1 @ s2).real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def test_fid_of_a_set_with_itself_is_zero():
    x = _features(600, 24, 0, scale=7.0, offset=3.0)
    scale = float(torch.var(x.double(), dim=0).sum())
    for method in ("eigvals", "sqrtm"):
        assert abs(fid_from_features(x, x, method=method)) <= 1e-6 * scale


@pytest.mark.parametrize("method", ["eigvals", "sqrtm"])
def test_fid_matches_closed_form_of_fitted_gaussians(method):
    a = _features(800, 16, 1).numpy().astype(np.float64)
    b = _features(700, 16, 2, scale=1.5, offset=0.4).numpy().astype(np.float64)
    expected = _closed_form(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    got = fid_from_features(torch.from_numpy(a).float(), torch.from_numpy(b).float(), method=method)
    # float32 inputs: the features themselves are rounded before the float64 statistics
    a32, b32 = (torch.from_numpy(v).float().double().numpy() for v in (a, b))
    expected32 = _closed_form(
        a32.mean(0), np.cov(a32, rowvar=False), b32.mean(0), np.cov(b32, rowvar=False)
    )
    assert got == pytest.approx(expected32, rel=1e-9)
    assert got == pytest.approx(expected, rel=1e-5)
    assert got > 1.0


def test_fid_from_stats_methods_agree_and_accept_numpy():
    a = _features(300, 12, 3).double()
    b = _features(300, 12, 4, offset=1.0).double()
    sa, sb = FeatureStats.from_features(a), FeatureStats.from_features(b)
    f1 = fid_from_stats(sa.mean, sa.covariance, sb.mean, sb.covariance)
    f2 = fid_from_stats(
        sa.mean.numpy(),
        sa.covariance.numpy(),
        sb.mean.numpy(),
        sb.covariance.numpy(),
        method="sqrtm",
    )
    assert f1 == pytest.approx(f2, rel=1e-9)


def test_fid_rank_deficient_covariances_is_finite_and_methods_agree():
    # fewer samples than dimensions: singular covariances (the eigvals route needs no ε)
    a, b = _features(20, 40, 5), _features(25, 40, 6, offset=0.5)
    f1 = fid_from_features(a, b)
    f2 = fid_from_features(a, b, method="sqrtm")
    assert np.isfinite(f1) and f1 > 0
    assert f1 == pytest.approx(f2, rel=1e-3)


def test_fid_input_errors():
    x = torch.randn(10, 4)
    with pytest.raises(ValueError, match="dims differ"):
        fid_from_features(x, torch.randn(10, 5))
    with pytest.raises(ValueError, match="2-D"):
        fid_from_features(torch.randn(10), x)
    with pytest.raises(ValueError, match="unknown FID method"):
        fid_from_features(x, x, method="nope")
    s = FeatureStats.from_features(x)
    with pytest.raises(ValueError, match="dimension"):
        fid_from_stats(s.mean, s.covariance, s.mean[:3], s.covariance)


@pytest.mark.parametrize("batch", [1, 7, 64, 1000])
def test_feature_stats_streaming_matches_numpy_cov(batch):
    x = _features(500, 20, 7, scale=0.5, offset=100.0).double()  # large mean, small spread
    stats = FeatureStats()
    for chunk in x.split(batch):
        stats.update(chunk)
    ref = x.numpy()
    assert stats.count == 500
    np.testing.assert_allclose(stats.mean.numpy(), ref.mean(0), rtol=0, atol=1e-10)
    np.testing.assert_allclose(stats.covariance.numpy(), np.cov(ref, rowvar=False), atol=1e-10)
    assert stats.mean.dtype == torch.float64 and stats.covariance.dtype == torch.float64


def test_feature_stats_merge_equals_one_pass():
    x = _features(450, 10, 8, offset=-5.0).double()
    one = FeatureStats().update(x)
    parts = [FeatureStats().update(c * 1.0) for c in (x[:13], x[13:200], x[200:])]
    merged = FeatureStats()
    for p in parts:
        merged.merge(p)
    assert merged.count == one.count
    torch.testing.assert_close(merged.mean, one.mean, rtol=0, atol=1e-10)
    torch.testing.assert_close(merged.covariance, one.covariance, rtol=0, atol=1e-10)
    # merging into a non-empty accumulator and merging an empty one
    left = (
        FeatureStats().update(x[:100]).merge(FeatureStats()).merge(FeatureStats().update(x[100:]))
    )
    torch.testing.assert_close(left.covariance, one.covariance, rtol=0, atol=1e-10)


def test_feature_stats_state_dict_roundtrip_and_remove(tmp_path):
    x = _features(120, 6, 9).double()
    stats = FeatureStats().update(x[:70]).update(x[70:])
    torch.save(stats.state_dict(), tmp_path / "s.pt")
    back = FeatureStats.from_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    assert back.count == 120 and back.dim == 6
    torch.testing.assert_close(back.covariance, stats.covariance, rtol=0, atol=0)
    back.update(x[:5]).remove(x[:5])
    torch.testing.assert_close(back.covariance, stats.covariance, rtol=0, atol=1e-12)
    torch.testing.assert_close(back.mean, stats.mean, rtol=0, atol=1e-12)


def test_feature_stats_errors():
    s = FeatureStats()
    with pytest.raises(ValueError, match="empty"):
        s.mean
    s.update(torch.randn(1, 3))
    with pytest.raises(ValueError, match="at least 2"):
        s.covariance
    with pytest.raises(ValueError, match="dim"):
        s.update(torch.randn(2, 4))
    with pytest.raises(ValueError, match="NaN"):
        s.update(torch.tensor([[float("nan"), 0.0, 0.0]]))


# ------------------------------------------------------------------ the "fid" registry entry


def _ctx(reference, name="ext"):
    from calguide.metrics.registry import ComputeContext

    return ComputeContext(torch.device("cpu"), name, lambda: reference)


def test_fid_entry_two_ranks_with_a_taken_back_repeat_equals_one_pass():
    from calguide.metrics import FIDMetric, MetricBatch, get_metric

    entry = get_metric("fid")()
    assert isinstance(entry, FIDMetric) and entry.keys == ("fid",)
    x = _features(90, 5, 10, offset=2.0)
    ranks = [entry.new_state(), entry.new_state()]
    entry.update(ranks[0], MetricBatch(torch.arange(50), features=x[:50]))
    entry.update(ranks[1], MetricBatch(torch.arange(50, 90), features=x[50:]))
    repeat = MetricBatch(torch.tensor([3]), features=x[3:4])  # index 3 again on rank 1
    entry.update(ranks[1], repeat)
    combined = entry.combine([entry.state_dict(s) for s in ranks])
    assert combined.count == 91
    combined = entry.remove(combined, entry.sample_rows(repeat))
    one = FeatureStats.from_features(x)
    assert combined.count == 90
    torch.testing.assert_close(combined.covariance, one.covariance, rtol=0, atol=1e-10)

    ref = FeatureStats.from_features(_features(80, 5, 11))
    got = entry.compute(combined, _ctx({"mean": ref.mean, "cov": ref.covariance}))
    assert got["fid"] == pytest.approx(fid_from_features(_features(80, 5, 11), x), rel=1e-6)


def test_fid_entry_errors():
    from calguide.metrics import FIDMetric

    entry = FIDMetric()
    few = FeatureStats.from_features(torch.randn(1, 3))
    with pytest.raises(RuntimeError, match="saw 1 samples; need at least 2"):
        entry.compute(few, _ctx({}))
    stats = FeatureStats.from_features(torch.randn(6, 3))
    with pytest.raises(ValueError, match="need 'mean' and 'cov'"):
        entry.compute(stats, _ctx({"mean": torch.zeros(3)}))
    with pytest.raises(ValueError, match="have dim 3 \\(extractor 'ext'\\)"):
        entry.compute(stats, _ctx({"mean": torch.zeros(4), "cov": torch.eye(4)}))
