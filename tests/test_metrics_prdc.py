"""Improved precision/recall (k-NN manifolds), blockwise, and the deterministic subsets."""

from __future__ import annotations

import pytest
import torch

from calguide.metrics import precision_recall
from calguide.metrics._subset import SampleBuffer, index_keys, select_subset
from calguide.metrics.prdc import knn_radii


def _brute(real: torch.Tensor, fake: torch.Tensor, k: int) -> tuple[float, float]:
    """Full N×N float64 matrices, kth value including self (k+1)."""
    real, fake = real.double(), fake.double()
    r_real = torch.cdist(real, real).kthvalue(k + 1, dim=1).values
    r_fake = torch.cdist(fake, fake).kthvalue(k + 1, dim=1).values
    d = torch.cdist(fake, real)
    precision = (d <= r_real[None, :]).any(1).double().mean().item()
    recall = (d <= r_fake[:, None]).any(0).double().mean().item()
    return precision, recall


def test_identical_sets_give_one_and_far_clusters_give_zero():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 16, generator=g)
    assert precision_recall(x, x.clone()) == (1.0, 1.0)
    assert precision_recall(x, x + 1000.0) == (0.0, 0.0)


def test_hand_made_example_matches_brute_force_and_by_hand():
    # real: five points on a line (k=1 radii: 1, 1, 1, 1, 1); fake: one inside, one far away,
    # one exactly on the border of a real ball (counts as inside), plus a tight pair.
    real = torch.tensor([[0.0, 0], [1, 0], [2, 0], [3, 0], [4, 0]])
    fake = torch.tensor([[0.5, 0], [10, 0], [5, 0], [10.5, 0]])
    p, r = precision_recall(real, fake, k=1, batch_size=2)
    assert (p, r) == _brute(real, fake, 1)
    # fake radii (k=1): 4.5, 0.5, 4.5, 0.5 → real points within 4.5 of (0.5,0) or (5,0): all
    assert p == pytest.approx(2 / 4) and r == pytest.approx(1.0)


@pytest.mark.parametrize("k", [1, 3, 5])
def test_random_sets_match_brute_force(k):
    g = torch.Generator().manual_seed(k)
    real = torch.randn(230, 12, generator=g)
    fake = 1.3 * torch.randn(170, 12, generator=g) + 0.4
    assert precision_recall(real, fake, k, batch_size=64) == _brute(real, fake, k)


def test_block_size_changes_nothing():
    g = torch.Generator().manual_seed(1)
    real = torch.randn(151, 8, generator=g)
    fake = torch.randn(127, 8, generator=g) * 1.2 + 0.2
    results = {precision_recall(real, fake, 3, batch_size=bs) for bs in (5, 17, 100, 151, 10000)}
    assert len(results) == 1
    radii = [knn_radii(real, 3, batch_size=bs) for bs in (3, 50, 1000)]
    torch.testing.assert_close(radii[0], radii[1], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(radii[0], radii[2], rtol=1e-6, atol=1e-6)


def test_float16_storage_is_computed_in_float32():
    g = torch.Generator().manual_seed(2)
    real = torch.randn(150, 8, generator=g)
    fake = torch.randn(150, 8, generator=g) + 0.3
    p16 = precision_recall(real.half(), fake.half(), 3, batch_size=40)
    assert p16 == _brute(real.half().float(), fake.half().float(), 3)


def test_precision_recall_errors():
    x = torch.randn(10, 4)
    with pytest.raises(ValueError, match="dims differ"):
        precision_recall(x, torch.randn(10, 3))
    with pytest.raises(ValueError, match="more than 3 points"):
        precision_recall(x[:3], x)


def test_index_subset_is_independent_of_batching_and_order():
    keys = index_keys(torch.arange(1000), seed=0)
    assert keys.unique().numel() == 1000  # bijective hash: no ties
    assert not torch.equal(keys, index_keys(torch.arange(1000), seed=1))
    feats = torch.arange(1000, dtype=torch.float32)[:, None].repeat(1, 3)

    def stream(batch: int, perm: torch.Tensor) -> torch.Tensor:
        buf = SampleBuffer(capacity=50)
        for chunk in perm.split(batch):
            buf.add(chunk, feats[chunk])
        return torch.sort(buf.state()["indices"]).values

    a = stream(7, torch.arange(1000))
    b = stream(333, torch.randperm(1000, generator=torch.Generator().manual_seed(0)))
    assert a.numel() == 50 and torch.equal(a, b)
    idx, f = select_subset(torch.cat([a, a[:10]]), feats[torch.cat([a, a[:10]])], capacity=None)
    assert torch.equal(idx, a) and torch.equal(f[:, 0].long(), a)


def test_float16_buffer_refuses_out_of_range_features():
    buf = SampleBuffer(capacity=None, dtype=torch.float16)
    with pytest.raises(ValueError, match="float16"):
        buf.add(torch.arange(2), torch.tensor([[1.0], [1e6]]))
    assert len(buf) == 0


# ----------------------------------------------------- the "precision_recall" registry entry


def test_precision_recall_entry_combines_ranks_by_index_and_caps():
    from calguide.metrics import MetricBatch, MetricOptions, PrecisionRecallMetric, get_metric
    from calguide.metrics.registry import ComputeContext

    entry = get_metric("precision_recall").from_options(
        MetricOptions(k=2, max_pr_samples=40, pr_features_dtype="float32", seed=3)
    )
    assert isinstance(entry, PrecisionRecallMetric) and entry.k == 2
    assert entry.keys == ("precision", "recall") and entry.extra_keys == ("num_pr_samples",)
    g = torch.Generator().manual_seed(0)
    fake, real = torch.randn(100, 4, generator=g), torch.randn(70, 4, generator=g)
    ranks = [entry.new_state(), entry.new_state()]
    entry.update(ranks[0], MetricBatch(torch.arange(0, 100, 2), features=fake[0::2]))
    entry.update(ranks[1], MetricBatch(torch.arange(1, 100, 2), features=fake[1::2]))
    entry.update(ranks[1], MetricBatch(torch.tensor([0]), features=fake[:1]))  # a repeat
    combined = entry.combine([entry.state_dict(s) for s in ranks])
    assert entry.remove(combined, entry.sample_rows(MetricBatch(torch.tensor([0])))) is combined
    idx, feats = select_subset(torch.arange(100), fake, 40, seed=3)
    assert torch.equal(combined["indices"], idx) and torch.equal(combined["features"], feats)

    ctx = ComputeContext(torch.device("cpu"), None, lambda: {"features": real})
    got = entry.compute(combined, ctx)
    _, real40 = select_subset(torch.arange(70), real, 40, seed=3)
    assert (got["precision"], got["recall"]) == precision_recall(real40, feats, 2)
    assert got["num_pr_samples"] == 40
    without = entry.compute(combined, ComputeContext(torch.device("cpu"), None, dict))
    assert without == {"precision": None, "recall": None, "num_pr_samples": 40}


def test_precision_recall_entry_checks_its_options():
    from calguide.metrics import PrecisionRecallMetric

    with pytest.raises(ValueError, match="k must be >= 1"):
        PrecisionRecallMetric(k=0)
    with pytest.raises(ValueError, match="max_pr_samples must exceed k=3"):
        PrecisionRecallMetric(max_pr_samples=3)
    with pytest.raises(ValueError, match="floating dtype"):
        PrecisionRecallMetric(pr_features_dtype="int8")


@pytest.mark.parametrize(
    ("n", "m", "groups", "k"), [(120, 90, 6, 3), (61, 80, 5, 1), (200, 150, 20, 3)]
)
def test_leave_one_group_out_recomputes_the_radii(n, m, groups, k) -> None:
    """Each entry is precision_recall of the kept rows, radii included (a real jackknife)."""
    from calguide.metrics.prdc import precision_recall_leave_one_out

    gen = torch.Generator().manual_seed(n)
    real = torch.randn(m, 6, generator=gen)
    fake = torch.randn(n, 6, generator=gen) * 1.2 + 0.2
    ids = torch.randperm(n, generator=gen) % groups
    precision, recall = precision_recall_leave_one_out(real, fake, ids, k, batch_size=37)
    sets = [fake] + [fake[ids != g] for g in range(groups)]
    for i, kept in enumerate(sets):
        assert (precision[i].item(), recall[i].item()) == precision_recall(real, kept, k)
