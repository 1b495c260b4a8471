"""A metric added from outside calguide: one Metric subclass registered here, nothing else.

``feature_norm`` (the mean L2 norm of the generated samples' features) declares a per-rank
(sum, count) state, combines ranks by adding them and takes a sample repeated on another rank
back by subtracting its norm. The tests run it through GenerativeMetrics (a Lightning predict
loop, simulated ranks with a padding sampler, repeats) and through the ``calguide-eval`` job
(``metrics.compute=[fid,feature_norm]``, the module imported with ``plugins=[...]``).
The metric has no knobs, so it needs no YAML.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from calguide.config import check
from calguide.metrics import (
    BUILTIN_METRICS,
    ClassifierFeatureExtractor,
    Metric,
    MetricBatch,
    get_metric,
    metric_keys,
    metric_names,
    register_metric,
    unregister_metric,
)
from calguide.metrics.reference import reference_features
from calguide.modules.metrics import (
    METRIC_NAMES,
    GenerativeMetrics,
    combine_rank_states,
    combine_states,
)
from calguide.nets import small_resnet

TOY = "feature_norm"
SIZE, CLASSES = 8, 4
# The shared fakes of the callback tests: indexed requests, a sampler, a logger in memory.
from test_metrics_callback import (  # noqa: E402
    _FakeSampler,
    _feed,
    _images_for,
    _MemoryLogger,
    _rank_shards,
    _Requests,
)


@register_metric(TOY)
class FeatureNorm(Metric):
    """Mean L2 norm of the features (float64): per rank a sum and a count, added on rank 0."""

    keys = ("feature_norm",)
    inputs = frozenset({"features"})

    def new_state(self) -> dict[str, Any]:
        return {"sum": 0.0, "count": 0}

    @staticmethod
    def _norms(batch: MetricBatch) -> Tensor:
        assert batch.features is not None
        return batch.features.detach().to(torch.float64).norm(dim=1).cpu()

    def update(self, state: dict[str, Any], batch: MetricBatch) -> None:
        norms = self._norms(batch)
        state["sum"] += float(norms.sum())
        state["count"] += int(norms.shape[0])

    def state_dict(self, state: dict[str, Any]) -> dict[str, Any]:
        return dict(state)

    def combine(self, states: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "sum": sum(s["sum"] for s in states),
            "count": sum(s["count"] for s in states),
        }

    def sample_rows(self, batch: MetricBatch) -> dict[str, Tensor]:
        return {"norm": self._norms(batch)}

    def remove(self, combined: dict[str, Any], rows: Mapping[str, Tensor]) -> dict[str, Any]:
        combined["sum"] -= float(rows["norm"].sum())
        combined["count"] -= int(rows["norm"].shape[0])
        return combined

    def compute(self, combined: dict[str, Any], ctx: Any) -> dict[str, Any]:
        count = combined["count"]
        return {"feature_norm": combined["sum"] / count if count else None}


# ---------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def extractor() -> ClassifierFeatureExtractor:
    torch.manual_seed(0)
    net = small_resnet(num_classes=CLASSES, in_channels=1, width=8, image_size=SIZE)
    return ClassifierFeatureExtractor(net, "tiny-resnet", batch_size=16)


@pytest.fixture(scope="module")
def reference(extractor) -> dict:
    return reference_features(extractor, _images_for(torch.arange(60), seed=1), batch_size=25)


def _expected_norm(extractor, indices: Tensor) -> float:
    feats = extractor(_images_for(indices))
    return float(feats.double().norm(dim=1).mean())


# ------------------------------------------------------------------------------ tests


def test_the_plugin_is_registered_after_the_builtins():
    names = metric_names()
    assert names[: len(BUILTIN_METRICS)] == BUILTIN_METRICS and TOY in names
    assert get_metric(TOY) is FeatureNorm and FeatureNorm.name == TOY
    assert metric_keys([TOY]) == ("feature_norm",) and "feature_norm" in metric_keys()
    assert METRIC_NAMES == ("fid", "precision", "recall", "class_acc", "kid")  # the built-ins' keys


def test_plugin_metric_through_a_lightning_predict_loop(extractor, reference, tmp_path):
    logger = _MemoryLogger()
    cb = GenerativeMetrics(
        extractor, reference, metrics=["fid", TOY], classifier=extractor, output_dir=tmp_path
    )
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        logger=logger,
        callbacks=[cb],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.predict(
        _FakeSampler(), DataLoader(_Requests(40), batch_size=7), return_predictions=False
    )
    results = cb.results
    assert list(results) == ["fid", "feature_norm", "num_samples", "extractor"]
    assert results["feature_norm"] == pytest.approx(
        _expected_norm(extractor, torch.arange(40)), rel=1e-6
    )
    full = GenerativeMetrics(extractor, reference)
    _feed(full, torch.arange(40), 7)
    assert results["fid"] == full.compute()["fid"] and results["num_samples"] == 40
    assert logger.logged == [{"fid": results["fid"], "feature_norm": results["feature_norm"]}]
    assert json.loads((tmp_path / "metrics.json").read_text()) == results
    assert cb.accumulator.states[TOY] == {"sum": 0.0, "count": 0}  # freed after predict


class _NoLogits:
    name = "tiny-resnet"

    def __init__(self, extractor) -> None:
        self.extractor = extractor

    def __call__(self, images):
        return self.extractor(images)

    def logits(self, images):
        raise AssertionError("logits were computed although no selected metric needs them")


def test_plugin_metric_alone_touches_neither_reference_nor_classifier(extractor):
    def never():
        raise AssertionError("the reference was resolved although no metric needs it")

    wrapped = _NoLogits(extractor)
    cb = GenerativeMetrics(wrapped, never, metrics=[TOY], classifier=wrapped)
    _feed(cb, torch.arange(12), 5)
    got = cb.compute()
    assert got == {
        "feature_norm": pytest.approx(_expected_norm(extractor, torch.arange(12)), rel=1e-6),
        "num_samples": 12,
        "extractor": "tiny-resnet",
    }


@pytest.mark.parametrize(("n", "world"), [(33, 2), (47, 4)])
def test_ranks_with_padding_sampler_combine_to_single_process(extractor, reference, n, world):
    single = GenerativeMetrics(extractor, reference, metrics=["fid", TOY])
    _feed(single, torch.arange(n), 10)
    expected = single.compute()

    ranks = [GenerativeMetrics(extractor, reference, metrics=["fid", TOY]) for _ in range(world)]
    for cb, shard in zip(ranks, _rank_shards(n, world)):
        _feed(cb, shard, 4)
    states = [cb.local_state() for cb in ranks]
    assert sum(s["metrics"][TOY]["count"] for s in states) == math.ceil(n / world) * world
    combined = combine_states(states, ranks[0].metrics)
    assert combined["num_samples"] == n and combined["metrics"][TOY]["count"] == n
    got = ranks[0]._compute(combined, torch.device("cpu"))
    assert got["num_samples"] == n
    assert got["fid"] == pytest.approx(expected["fid"], rel=1e-6)
    assert got["feature_norm"] == pytest.approx(expected["feature_norm"], rel=1e-6)
    # The name-based combine builds the plugin from the registry too.
    legacy = combine_rank_states(states, 50_000)
    assert ranks[0]._compute(legacy, torch.device("cpu")) == got


def test_repeats_are_taken_back_from_the_rank_that_still_has_them(extractor):
    def toy(window: int) -> GenerativeMetrics:
        return GenerativeMetrics(extractor, None, metrics=[TOY], dedup_window=window)

    ranks = [toy(8), toy(8)]
    _feed(ranks[0], torch.arange(0, 20), 4)
    _feed(ranks[1], torch.arange(20, 40), 4)
    _feed(ranks[1], torch.arange(16, 20), 4)  # rank 0's last samples again, on rank 1
    _feed(ranks[0], torch.tensor([20]), 4)  # rank 1's first sample (long out of its window)
    combined = combine_states([cb.local_state() for cb in ranks], ranks[0].metrics)
    assert combined["num_samples"] == 40 and combined["metrics"][TOY]["count"] == 40
    got = ranks[0]._compute(combined, torch.device("cpu"))
    assert got["feature_norm"] == pytest.approx(
        _expected_norm(extractor, torch.arange(40)), rel=1e-6
    )

    # Every rank generating every sample is refused, whatever the metrics.
    everything = [toy(4), toy(4)]
    for cb in everything:
        _feed(cb, torch.arange(20), 10)
    with pytest.raises(RuntimeError, match="sample index 0 was generated on ranks"):
        combine_states([cb.local_state() for cb in everything], everything[0].metrics)


class _CountOnly(Metric):
    """Not registered, passed as an instance; cannot take samples back."""

    name = "count_only"
    keys = ("count_only",)
    inputs = frozenset()

    def new_state(self) -> list[int]:
        return [0]

    def update(self, state: list[int], batch: MetricBatch) -> None:
        state[0] += len(batch)

    def state_dict(self, state: list[int]) -> int:
        return state[0]

    def combine(self, states: list[int]) -> int:
        return sum(states)

    def compute(self, combined: int, ctx: Any) -> dict[str, Any]:
        return {"count_only": float(combined)}


def test_an_instance_without_take_back_works_until_a_sample_repeats(extractor):
    ranks = [GenerativeMetrics(extractor, None, metrics=[_CountOnly()]) for _ in range(2)]
    _feed(ranks[0], torch.arange(10), 4)
    _feed(ranks[1], torch.arange(10, 15), 4)
    states = [cb.local_state() for cb in ranks]
    combined = combine_states(states, ranks[0].metrics)
    assert ranks[0]._compute(combined, torch.device("cpu"))["count_only"] == 15.0
    _feed(ranks[1], torch.tensor([9]), 4)
    with pytest.raises(NotImplementedError, match="'count_only' cannot take back a sample"):
        combine_states([cb.local_state() for cb in ranks], ranks[0].metrics)


def test_registration_is_checked():
    with pytest.raises(ValueError, match=f"metric {TOY!r} is already registered"):
        register_metric(TOY)(FeatureNorm)
    with pytest.raises(ValueError, match="built-in metric"):
        register_metric("fid", FeatureNorm, overwrite=True)
    with pytest.raises(ValueError, match="built-in metric"):
        unregister_metric("class_acc")

    class ReportsFid(FeatureNorm):
        keys = ("fid",)

    class ReportsCount(FeatureNorm):
        keys = ("num_samples",)

    class ReadsImages(FeatureNorm):
        keys = ("norm2",)
        inputs = frozenset({"images"})

    with pytest.raises(ValueError, match=r"result keys \['fid'\] are already reported by 'fid'"):
        register_metric("norm2", ReportsFid)
    with pytest.raises(ValueError, match="GenerativeMetrics' own"):
        register_metric("norm2", ReportsCount)
    with pytest.raises(ValueError, match=r"unknown inputs \['images'\]"):
        register_metric("norm2", ReadsImages)
    with pytest.raises(TypeError, match="subclass of Metric"):
        register_metric("norm2", dict)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="identifier"):
        register_metric("norm 2", FeatureNorm)
    assert "norm2" not in metric_names()

    class Norm2(FeatureNorm):
        keys = ("norm2",)

    register_metric("norm2", Norm2)
    try:
        assert metric_names()[-1] == "norm2" and get_metric("norm2") is Norm2
    finally:
        unregister_metric("norm2")
    with pytest.raises(ValueError, match=r"unknown metric 'norm2'; registered: \['fid'"):
        get_metric("norm2")


# ---------------------------------------------------------------- the calguide-eval job


def _evaluation_classifier(path: Path) -> Path:
    from calguide.nets.classifiers import build_classifier, export_classifier

    torch.manual_seed(0)
    net = build_classifier(
        "small_resnet", {"in_channels": 1, "image_size": 8, "num_classes": 10, "width": 32}
    ).eval()
    export_classifier(net, path, temperature=1.0)
    return path


def test_plugin_metric_runs_in_the_eval_job(compose_config, tmp_path):
    """metrics.compute selects registry entries by name; plugins=[...] imports this module."""
    from calguide.commands.evaluate import main as eval_main
    from calguide.config import ConfigError
    from calguide.config.plugins import import_plugins
    from calguide.nets.classifiers import load_classifier

    evaluator = _evaluation_classifier(tmp_path / "eval.pt")
    g = torch.Generator().manual_seed(5)
    images = torch.randint(0, 256, (24, 8, 8, 1), generator=g, dtype=torch.uint8)
    labels = torch.arange(24) % 10
    np.savez(tmp_path / "samples.npz", images.numpy(), labels.numpy())
    common = [
        f"hydra.searchpath=[file://{Path(__file__).resolve().parent / 'conf'}]",
        "data.image_size=8",
        f"samples={tmp_path / 'samples.npz'}",
        f"output_dir={tmp_path / 'e'}",
        "metrics=toy_metric",  # tests/conf/metrics/toy_metric.yaml: domain + feature_norm
        f"metrics.evaluator={evaluator}",
        f"metrics.cache_dir={tmp_path / 'reference'}",
        f"plugins=[{__name__}]",
    ]
    cfg = compose_config("eval", common)
    assert list(cfg.metrics.compute) == ["fid", TOY]
    assert import_plugins(cfg) == [__name__]
    check(cfg)
    results = eval_main.task(check(cfg))

    assert list(results) == ["fid", "feature_norm", "num_samples", "extractor"]
    assert math.isfinite(results["fid"]) and results["num_samples"] == 24
    classifier, _ = load_classifier(evaluator)
    direct = ClassifierFeatureExtractor(classifier.net, "direct", preprocess=classifier.prepare)
    norms = direct(images).double().norm(dim=1)
    assert results["feature_norm"] == pytest.approx(float(norms.mean()), rel=1e-6)
    assert json.loads((tmp_path / "e" / "metrics.json").read_text()) == results

    bad = compose_config("eval", [*common, "metrics.compute=[fid,no_such_metric]"])
    with pytest.raises(ConfigError, match="no_such_metric"):
        check(bad)
