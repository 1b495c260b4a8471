"""The verdict rule end to end on synthetic runs whose true difference is known: paired pooled
metrics, the delete-one-group jackknife, replicates, Bonferroni families, the three words."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import torch

from calguide.commands import aggregate
from calguide.commands.aggregate import verdict_block
from calguide.metrics.fid import FeatureStats
from calguide.metrics.per_sample import write_eval_features
from calguide.tables import records as run_records
from calguide.tables import summary as summ
from calguide.verdicts import NOT_JUDGED, ClaimError, Settings, clear_caches, judge

D = 3
MIX = torch.tensor([[1.0, 0.3, 0.0], [0.0, 0.8, 0.2], [0.1, 0.0, 0.6]])
MU_REF = torch.zeros(D)


def draw(n: int, seed: int, shift: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, D, generator=g) @ MIX + shift


def true_fid_difference(shift_a: float, shift_b: float) -> float:
    """With one covariance, E FID_n(A) − E FID_n(B) = |μ_A − μ_r|² − |μ_B − μ_r|² exactly:
    the covariance terms are identically distributed, the mean term's bias is tr Σ/n in both."""
    return D * (shift_a**2 - shift_b**2)


@pytest.fixture
def reference_file(tmp_path: Path) -> str:
    """The population statistics of the reference distribution, in calguide's cache format."""
    cov = MIX.T @ MIX
    real = draw(2000, 12345, 0.0)
    stats = {"mean": MU_REF.double(), "cov": cov.double(), "features": real.half()}
    path = tmp_path / "reference.pt"
    torch.save({"format": 1, "key": "{}", "stats": stats}, path)
    return str(path)


def run_record(
    tmp_path: Path, name: str, seed: int, x: torch.Tensor, reference: str, **keys
) -> dict:
    folder = tmp_path / f"{name}-{seed}-{keys.get('rep', 0)}"
    folder.mkdir(parents=True, exist_ok=True)
    n = x.shape[0]
    path = write_eval_features(
        folder / "eval_features.npz",
        {
            "indices": torch.arange(n),
            "labels": torch.arange(n) % 4,
            "features": x.half(),
            "correct": torch.ones(n, dtype=torch.int8),
        },
        extractor="toy",
        reference_file=reference,
    )
    return {"guidance.name": name, "seed": seed, "eval_features": str(path), **keys}


def claim(better: str, than: str, **extra) -> dict:
    return {
        "id": f"{better}>{than}",
        "text": f"{better} beats {than}",
        "metric": "fid",
        "better": {"guidance.name": better},
        "than": {"guidance.name": than},
        **extra,
    }


def test_known_differences_get_the_right_words(tmp_path, reference_file) -> None:
    clear_caches()
    records = []
    for seed in range(2):  # A far from the reference, B on it, C = B's distribution again
        records.append(run_record(tmp_path, "a", seed, draw(300, seed, 0.6), reference_file))
        records.append(run_record(tmp_path, "b", seed, draw(300, 100 + seed, 0.0), reference_file))
        records.append(run_record(tmp_path, "c", seed, draw(300, 200 + seed, 0.0), reference_file))
    settings = Settings(block_size=30)
    verdicts = judge(records, [claim("b", "a"), claim("a", "b"), claim("b", "c")], settings)
    assert [v.verdict for v in verdicts] == ["supported", "contradicted", "within noise"]
    first = verdicts[0]
    assert first.units == 20 and first.df == 19 and first.unit == "blocks of 30 samples"
    assert first.level == pytest.approx(1 - 0.05 / 3)  # three judged claims, one family
    assert first.lo < true_fid_difference(0.0, 0.6) < first.hi
    assert first.resolvable == pytest.approx((first.hi - first.lo) / 2)
    block = verdict_block(verdicts, settings)
    assert "- b beats a: **supported** (fid" in block and "98.33% interval" in block
    assert "3 judged claims share one 5% error rate" in block
    # Centred on the bias-corrected difference, the plug-in beside it.
    assert first.plugin is not None and first.plugin != first.difference
    shown = f"d = {first.difference:+.3g}"
    if f"{first.plugin:+.3g}" != f"{first.difference:+.3g}":  # printed where they differ
        shown += f" (plug-in {first.plugin:+.3g})"
    assert shown in block


def test_one_error_rate_for_the_whole_table(tmp_path, reference_file) -> None:
    """Families only group claims for reading: every interval is at 1 − 0.05/m, m the
    table's judged claims."""
    clear_caches()
    records = [
        run_record(tmp_path, name, 0, draw(200, seed, shift), reference_file)
        for name, seed, shift in (("a", 1, 0.6), ("b", 2, 0.0), ("c", 3, 0.0))
    ]
    claims = [
        claim("b", "a", family="one"),
        claim("b", "c", family="two"),
        claim("c", "a", family="two"),
    ]
    verdicts = judge(records, claims, Settings())
    assert [v.level for v in verdicts] == pytest.approx([1 - 0.05 / 3] * 3)
    block = verdict_block(verdicts, Settings())
    assert "*one* (1 judged claim)" in block and "*two* (2 judged claims)" in block


def test_equivalence_claims_are_two_one_sided_tests(tmp_path, reference_file) -> None:
    clear_caches()
    records = []
    for seed in range(2):
        records.append(run_record(tmp_path, "a", seed, draw(300, seed, 0.6), reference_file))
        records.append(run_record(tmp_path, "b", seed, draw(300, 100 + seed, 0.0), reference_file))
        records.append(run_record(tmp_path, "c", seed, draw(300, 200 + seed, 0.0), reference_file))

    def same(a: str, b: str, margin: float) -> dict:
        return {
            "id": f"{a}={b}",
            "text": f"{a} equals {b} within ±{margin}",
            "metric": "fid",
            "margin": margin,
            "a": {"guidance.name": a},
            "b": {"guidance.name": b},
        }

    settings = Settings(block_size=30)
    found = judge(
        records, [same("b", "c", 1.0), same("a", "b", 0.05), same("b", "c", 1e-4)], settings
    )
    assert [v.verdict for v in found] == ["equivalent", "different", "inconclusive"]
    assert found[0].level == pytest.approx(1 - 2 * 0.05 / 3)  # two one-sided tests at α/m
    assert found[0].lo > -1.0 and found[0].hi < 1.0
    block = verdict_block(found, settings)
    assert "against ±1" in block and "equivalent when the (1 − 2·0.05/3) interval" in block
    with pytest.raises(ClaimError, match="margin must be a number > 0"):
        judge(records, [same("b", "c", 0.0)], settings)


def test_intervals_cover_the_true_difference(tmp_path, reference_file) -> None:
    """Over many independent pairs of runs, the 95% interval covers the true difference at
    about its rate (FID's nonlinearity makes the jackknife slightly conservative)."""
    clear_caches()
    truth = true_fid_difference(0.25, 0.0)
    covered, runs = 0, 120
    for rep in range(runs):
        records = [
            run_record(tmp_path, "a", 0, draw(200, 10_000 + rep, 0.25), reference_file, rep=rep),
            run_record(tmp_path, "b", 0, draw(200, 20_000 + rep, 0.0), reference_file, rep=rep),
        ]
        (v,) = judge(records, [claim("a", "b")], Settings())  # one run: 20 index blocks
        assert v.units == 20
        covered += v.lo <= truth <= v.hi
    assert covered / runs >= 0.88


def test_replicates_are_the_units_and_one_is_not_enough(tmp_path, reference_file) -> None:
    clear_caches()
    records = []
    for rep, offset in enumerate((0.5, 0.55, 0.45)):  # three trainings, each a bit different
        x_a = draw(200, 300 + rep, 0.0)
        records.append(run_record(tmp_path, "a", 0, x_a, reference_file, rep=rep))
        records.append(run_record(tmp_path, "b", 0, x_a + offset, reference_file, rep=rep))
    found = judge(records, [claim("a", "b", replicates="rep")], Settings(block_size=20))[0]
    assert found.verdict == "supported" and found.units == 3 and found.df == 2
    assert found.unit == "rep values"
    one = judge(records[:2], [claim("a", "b", replicates="rep")], Settings())[0]
    assert one.verdict == NOT_JUDGED and "trainings' variation is unmeasured" in one.reason


def test_a_number_per_model_needs_replicates() -> None:
    records = [
        {"guidance.name": g, "seed": s, "classifier_smece": v}
        for s in range(3)
        for g, v in (("a", 0.02), ("b", 0.021))
    ]
    (v,) = judge(records, [{**claim("a", "b"), "metric": "classifier_smece"}])
    assert v.verdict == NOT_JUDGED and "needs independent trainings" in v.reason
    # Per-run values that do vary: Student's interval over the seeds.
    varied = [
        {**r, "classifier_smece": r["classifier_smece"] + bump}
        for r in records
        for bump in [0.001 * r["seed"] ** 2 if r["guidance.name"] == "a" else 0.0]
    ]
    (v,) = judge(varied, [{**claim("a", "b"), "metric": "classifier_smece"}])
    assert v.verdict != NOT_JUDGED and v.unit == "seeds" and v.df == 2


def test_families_share_their_error_rate_and_missing_rows_do_not_count() -> None:
    records = [
        {"guidance.name": g, "seed": s, "fid": base + s + (0.1 * s * s if g == "a" else 0.0)}
        for s in range(4)
        for g, base in (("a", 5.0), ("b", 6.0), ("c", 6.0))
    ]
    claims = [
        {**claim("a", "b"), "family": "one"},
        {**claim("a", "c"), "family": "one"},
        {**claim("a", "zz"), "family": "one"},  # no such row
        {**claim("b", "c"), "family": "two"},
    ]
    verdicts = judge(records, claims)
    assert [v.level for v in verdicts] == pytest.approx([1 - 0.05 / 2, 1 - 0.05 / 2, None, None])
    assert verdicts[2].verdict == NOT_JUDGED and "rows missing" in verdicts[2].reason
    assert verdicts[3].verdict == NOT_JUDGED  # b − c is 0 on every seed: nothing varies
    block = verdict_block(verdicts)
    assert "*one* (2 judged claims)" in block and "*two* (0 judged claims)" in block


def test_aggregate_prints_intervals_and_verdicts(tmp_path, reference_file, capsys) -> None:
    clear_caches()
    root = tmp_path / "sweep"
    for job, (name, shift) in enumerate((("none", 0.5), ("js", 0.0))):
        x = draw(240, 7 + job, shift)
        rec = run_record(tmp_path, name, 0, x, reference_file)
        data = {
            "num_samples": 240,
            "run": {"guidance": {"name": name, "scale": 1.0}, "seed": 0, "samples": 240},
            "eval_features": rec["eval_features"],
            "metrics": {"fid": 1.0, "num_samples": 240},
            "config": {
                "seed": 0,
                "guidance": {"name": name, "scale": 1.0},
                "experiment": {
                    "verdicts": {"block_size": 40},
                    "claims": [claim("js", "none")],
                },
            },
        }
        (root / str(job) / ".hydra").mkdir(parents=True)
        (root / str(job) / "sampling.json").write_text(json.dumps(data))
    assert aggregate.main([str(root), "--rows", "guidance.name", "--metrics", "fid,kid"]) == 0
    text = (root / "table.md").read_text()
    assert "**Intervals**" in text and "6 jackknife" in text
    assert "- js beats none: **supported**" in text
    saved = json.loads((root / "claims.json").read_text())
    assert saved[0]["units"] == 6 and saved[0]["verdict"] == "supported"
    row = {
        r["guidance.name"]: r
        for r in summ.summarize(run_records.collect_runs([root]), ["guidance.name"])
    }
    assert statistics.fmean([1.0]) == row["js"]["fid_mean"]
    # --block-size on the command line wins over the recorded setting.
    assert aggregate.main([str(root), "--rows", "guidance.name", "--block-size", "60"]) == 0
    assert json.loads((root / "claims.json").read_text())[0]["units"] == 4
    capsys.readouterr()


def test_bad_verdict_settings_are_one_line(tmp_path, capsys) -> None:
    with pytest.raises(Exception, match="block_size"):
        Settings.from_mapping({"block_size": 1})
    with pytest.raises(Exception, match="unknown"):
        Settings.from_mapping({"blocks": 3})


def test_reference_statistics_are_the_populations(reference_file) -> None:
    stats = torch.load(reference_file, weights_only=True)["stats"]
    sample = FeatureStats.from_features(draw(20000, 1, 0.0))
    assert torch.allclose(sample.covariance, stats["cov"], atol=0.05)
