"""GenerativeMetrics with a real Lightning predict loop, simulated ranks and a tiny classifier."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import Logger
from torch.utils.data import DataLoader, Dataset

from calguide.metrics import (
    ClassifierFeatureExtractor,
    FeatureStats,
    fid_from_features,
    fid_from_stats,
    precision_recall,
)
from calguide.metrics.reference import reference_features
from calguide.modules.metrics import GenerativeMetrics
from calguide.nets import small_resnet

SIZE, CLASSES = 8, 4


def _images_for(indices: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """One uint8 8×8 grey image per index, a function of the index alone."""
    out = []
    for i in indices.tolist():
        g = torch.Generator().manual_seed(seed * 1_000_003 + i)
        out.append(torch.randint(0, 256, (SIZE, SIZE, 1), generator=g, dtype=torch.uint8))
    return torch.stack(out)


class _Requests(Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return torch.tensor(i), torch.tensor(i % CLASSES)


class _FakeSampler(L.LightningModule):
    def predict_step(self, batch, batch_idx):
        indices, labels = batch
        return {"images": _images_for(indices), "labels": labels, "indices": indices}


class _MemoryLogger(Logger):
    def __init__(self) -> None:
        super().__init__()
        self.logged: list[dict[str, float]] = []
        self.saved = 0

    @property
    def name(self) -> str:
        return "memory"

    @property
    def version(self) -> int:
        return 0

    def log_metrics(self, metrics, step=None) -> None:
        self.logged.append(dict(metrics))

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def save(self) -> None:
        self.saved += 1


@pytest.fixture(scope="module")
def extractor() -> ClassifierFeatureExtractor:
    torch.manual_seed(0)
    net = small_resnet(num_classes=CLASSES, in_channels=1, width=8, image_size=SIZE)
    return ClassifierFeatureExtractor(net, "tiny-resnet", batch_size=16)


@pytest.fixture(scope="module")
def reference(extractor) -> dict:
    return reference_features(extractor, _images_for(torch.arange(60), seed=1), batch_size=25)


def _predict(extractor, reference, batch_size: int, tmp_path, n: int = 50, **kwargs):
    logger = _MemoryLogger()
    cb = GenerativeMetrics(
        extractor, reference, classifier=extractor, output_dir=tmp_path, **kwargs
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
        _FakeSampler(), DataLoader(_Requests(n), batch_size=batch_size), return_predictions=False
    )
    return cb, logger


def test_predict_writes_metrics_json_and_logs(extractor, reference, tmp_path):
    cb, logger = _predict(extractor, reference, 16, tmp_path)
    data = json.loads((tmp_path / "metrics.json").read_text())
    keys = ("fid", "precision", "recall", "class_acc", "kid")
    for key in keys:
        assert math.isfinite(data[key]), key
        assert data[key] == cb.results[key]
    assert data["num_samples"] == 50 and data["extractor"] == "tiny-resnet"
    assert 0.0 <= data["precision"] <= 1.0 and 0.0 <= data["recall"] <= 1.0
    assert logger.logged == [{k: data[k] for k in keys}]
    assert not [p for p in tmp_path.iterdir() if p.name != "metrics.json"]  # no temp files


def test_kept_features_are_every_sample_once_and_reproduce_the_metrics(
    extractor, reference, tmp_path
):
    """keep_features: eval_features.npz holds each sample once, in index order, with its
    label and correctness; the metrics recomputed from it equal the streamed ones."""
    from calguide.metrics.per_sample import read_eval_features, values

    cb, _ = _predict(extractor, reference, 16, tmp_path, keep_features=True)
    rows = read_eval_features(tmp_path / "eval_features.npz")
    assert torch.equal(rows.indices, torch.arange(50)) and rows.features.dtype == torch.float16
    assert rows.extractor == "tiny-resnet"
    assert float((rows.correct == 1).float().mean()) == pytest.approx(cb.results["class_acc"])
    again = values(rows, reference, ["fid", "class_acc", "kid"])
    assert again["fid"] == pytest.approx(cb.results["fid"], rel=1e-3)  # float16 storage
    assert again["kid"] == pytest.approx(cb.results["kid"], rel=1e-2, abs=1e-4)


def test_results_match_direct_computation(extractor, reference, tmp_path):
    cb, _ = _predict(extractor, reference, 16, tmp_path)
    images = _images_for(torch.arange(50))
    feats = extractor(images)
    stats = FeatureStats.from_features(feats)
    assert cb.results["fid"] == pytest.approx(
        fid_from_stats(stats.mean, stats.covariance, reference["mean"], reference["cov"]), rel=1e-6
    )
    # kept rows are float16 by default (reference and generated alike)
    assert reference["features"].dtype == torch.float16
    assert (cb.results["precision"], cb.results["recall"]) == precision_recall(
        reference["features"], feats.half()
    )
    labels = torch.arange(50) % CLASSES
    acc = (extractor.logits(images).argmax(1) == labels).double().mean().item()
    assert cb.results["class_acc"] == pytest.approx(acc)


def test_float32_storage_matches_float32_direct_computation(extractor, tmp_path):
    ref = reference_features(
        extractor, _images_for(torch.arange(60), seed=1), features_dtype=torch.float32
    )
    cb, _ = _predict(extractor, ref, 16, tmp_path, pr_features_dtype=torch.float32)
    feats = extractor(_images_for(torch.arange(50)))
    assert cb.results["fid"] == pytest.approx(fid_from_features(ref["features"], feats), rel=1e-6)
    assert (cb.results["precision"], cb.results["recall"]) == precision_recall(
        ref["features"], feats
    )


def test_results_do_not_depend_on_predict_batch_size(extractor, reference, tmp_path):
    a, _ = _predict(extractor, reference, 7, tmp_path / "a")
    b, _ = _predict(extractor, reference, 50, tmp_path / "b")
    assert a.results["fid"] == pytest.approx(b.results["fid"], rel=1e-6)
    for key in ("precision", "recall", "class_acc", "num_samples"):
        assert a.results[key] == b.results[key], key


def test_capped_pr_subset_is_deterministic(extractor, reference, tmp_path):
    a, _ = _predict(extractor, reference, 5, tmp_path / "a", max_pr_samples=20)
    b, _ = _predict(extractor, reference, 13, tmp_path / "b", max_pr_samples=20)
    assert a.results["num_pr_samples"] == 20 and a.results["num_samples"] == 50
    assert (a.results["precision"], a.results["recall"]) == (
        b.results["precision"],
        b.results["recall"],
    )


def _rank_shards(n: int, world: int) -> list[torch.Tensor]:
    """DistributedSampler(shuffle=False) layout: pad by wrapping around, then stride."""
    total = math.ceil(n / world) * world
    padded = torch.cat([torch.arange(n), torch.arange(total - n)])
    return [padded[r::world] for r in range(world)]


def _feed(cb: GenerativeMetrics, indices: torch.Tensor, batch: int) -> None:
    for chunk in indices.split(batch):
        cb.update({"images": _images_for(chunk), "labels": chunk % CLASSES, "indices": chunk})


def test_ranks_with_padding_sampler_combine_to_single_process(extractor, reference):
    from calguide.modules.metrics import combine_rank_states

    n, world = 47, 4  # 1 padded sample (index 0 repeated on the last rank)
    single = GenerativeMetrics(extractor, reference, classifier=extractor)
    _feed(single, torch.arange(n), 10)
    expected = single.compute()

    ranks = [GenerativeMetrics(extractor, reference, classifier=extractor) for _ in range(world)]
    for cb, shard in zip(ranks, _rank_shards(n, world)):
        _feed(cb, shard, 4)
    combined = combine_rank_states([cb.local_state() for cb in ranks], 50_000)
    got = ranks[0]._compute(combined, torch.device("cpu"))
    assert got["num_samples"] == n
    assert got["fid"] == pytest.approx(expected["fid"], rel=1e-6)
    for key in ("precision", "recall", "class_acc", "num_pr_samples"):
        assert got[key] == expected[key], key


def test_every_rank_generating_everything_is_an_error(extractor, reference):
    from calguide.modules.metrics import combine_rank_states

    ranks = [GenerativeMetrics(extractor, reference, dedup_window=4) for _ in range(2)]
    for cb in ranks:
        _feed(cb, torch.arange(20), 10)
    with pytest.raises(RuntimeError, match="sample index 0 was generated on ranks"):
        combine_rank_states([cb.local_state() for cb in ranks], None)


def test_repeated_indices_on_one_rank_count_once(extractor, reference):
    cb = GenerativeMetrics(extractor, reference)
    _feed(cb, torch.arange(30), 8)
    _feed(cb, torch.arange(10), 8)  # repeats
    assert cb.compute()["num_samples"] == 30


def test_bad_outputs_and_reference_are_clear_errors(extractor, reference):
    cb = GenerativeMetrics(extractor, reference)
    with pytest.raises(TypeError, match="'images'"):
        cb.update(torch.zeros(2, 8, 8, 1, dtype=torch.uint8))
    with pytest.raises(TypeError, match="uint8"):
        cb.update({"images": torch.zeros(2, 8, 8, 1), "indices": torch.arange(2)})
    wrong = dict(reference, extractor="inception-v3-compat-2048")
    cb = GenerativeMetrics(extractor, wrong)
    _feed(cb, torch.arange(10), 5)
    with pytest.raises(ValueError, match="computed with extractor"):
        cb.compute()


def test_reference_may_be_a_lazy_callable_without_features(extractor, reference):
    calls = []

    def make():
        calls.append(1)
        return {"mean": reference["mean"], "cov": reference["cov"]}

    cb = GenerativeMetrics(extractor, make)
    _feed(cb, torch.arange(12), 5)
    assert not calls
    res = cb.compute()
    assert calls == [1] and math.isfinite(res["fid"])
    assert res["precision"] is None and res["recall"] is None and res["class_acc"] is None


def _ddp_worker(rank: int, world: int, init_file: str, out_dir: str, n: int) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        net = small_resnet(num_classes=CLASSES, in_channels=1, width=8, image_size=SIZE)
        ext = ClassifierFeatureExtractor(net, "tiny-resnet", batch_size=16)
        ref = reference_features(ext, _images_for(torch.arange(60), seed=1), batch_size=25)
        cb = GenerativeMetrics(ext, ref, classifier=ext, output_dir=out_dir)
        _feed(cb, _rank_shards(n, world)[rank], 4)
        trainer = SimpleNamespace(loggers=[])
        cb.on_predict_end(trainer, SimpleNamespace(device=torch.device("cpu")))
        with open(f"{out_dir}/rank{rank}.json", "w") as fh:
            json.dump(cb.results, fh)
    finally:
        dist.destroy_process_group()


def test_real_process_group_gathers_on_rank_zero_and_broadcasts(extractor, reference, tmp_path):
    """Two gloo processes, a padded shard layout: same numbers as one process, on both ranks."""
    import torch.multiprocessing as mp

    n, world = 33, 2
    mp.spawn(
        _ddp_worker, args=(world, str(tmp_path / "pg"), str(tmp_path), n), nprocs=world, join=True
    )
    single = GenerativeMetrics(extractor, reference, classifier=extractor)
    _feed(single, torch.arange(n), 8)
    expected = single.compute()
    written = json.loads((tmp_path / "metrics.json").read_text())
    for rank in range(world):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got == written
    assert written["num_samples"] == n
    assert written["fid"] == pytest.approx(expected["fid"], rel=1e-6)
    for key in ("precision", "recall", "class_acc"):
        assert written[key] == expected[key], key


def test_a_rank_without_samples_and_float16_storage(extractor, reference):
    from calguide.modules.metrics import combine_rank_states

    idle = GenerativeMetrics(extractor, reference, pr_features_dtype="float16")
    busy = GenerativeMetrics(extractor, reference, pr_features_dtype="float16")
    _feed(busy, torch.arange(25), 10)
    combined = combine_rank_states([idle.local_state(), busy.local_state()], 50_000)
    assert combined["num_samples"] == 25 and combined["metrics"]["fid"].count == 25
    assert combined["metrics"]["precision_recall"]["features"].dtype == torch.float16
    got = busy._compute(combined, torch.device("cpu"))
    assert got == busy.compute()
    with pytest.raises(ValueError, match="floating dtype"):
        GenerativeMetrics(extractor, reference, pr_features_dtype="int8")


def test_state_is_freed_after_predict(extractor, reference, tmp_path):
    cb, _ = _predict(extractor, reference, 16, tmp_path)
    states = cb.accumulator.states
    assert len(states["precision_recall"]) == 0 and states["fid"].count == 0
    assert states["class_acc"] == {"correct": 0, "labeled": 0} and cb.results["num_samples"] == 50


# -------------------------------------------------------------------- selecting registry entries


def test_builtin_entries_give_the_historical_names():
    from calguide.metrics import BUILTIN_METRICS, metric_keys, metric_names
    from calguide.modules.metrics import METRIC_NAMES

    assert BUILTIN_METRICS == ("fid", "precision_recall", "class_acc", "kid")
    assert metric_names()[:4] == BUILTIN_METRICS
    assert metric_keys(BUILTIN_METRICS) == METRIC_NAMES
    assert METRIC_NAMES == ("fid", "precision", "recall", "class_acc", "kid")


def test_a_subset_of_metrics_reports_and_logs_only_its_keys(extractor, reference, tmp_path):
    full, _ = _predict(extractor, reference, 16, tmp_path / "full")
    cb, logger = _predict(extractor, reference, 16, tmp_path / "fid", metrics=["fid"])
    assert list(cb.results) == ["fid", "num_samples", "extractor"]
    assert cb.results["fid"] == full.results["fid"] and cb.results["num_samples"] == 50
    assert logger.logged == [{"fid": cb.results["fid"]}]
    assert json.loads((tmp_path / "fid" / "metrics.json").read_text()) == cb.results


class _Refuses:
    """An extractor that must not be asked for features."""

    name = "tiny-resnet"

    def __call__(self, images):
        raise AssertionError("features were computed although no selected metric needs them")


def test_class_acc_alone_needs_neither_features_nor_the_reference(extractor, reference):
    full = GenerativeMetrics(extractor, reference, classifier=extractor)
    _feed(full, torch.arange(30), 8)

    def never():
        raise AssertionError("the reference was resolved although no metric needs it")

    cb = GenerativeMetrics(_Refuses(), never, classifier=extractor, metrics=("class_acc",))
    _feed(cb, torch.arange(30), 8)
    got = cb.compute()
    assert got == {
        "class_acc": full.compute()["class_acc"],
        "num_samples": 30,
        "extractor": "tiny-resnet",
    }


def test_metric_selection_errors(extractor, reference):
    with pytest.raises(ValueError, match="unknown metric 'nope'; registered: \\['fid'"):
        GenerativeMetrics(extractor, reference, metrics=["fid", "nope"])
    with pytest.raises(ValueError, match="selected twice"):
        GenerativeMetrics(extractor, reference, metrics=["fid", "fid"])
    with pytest.raises(ValueError, match="no metrics selected"):
        GenerativeMetrics(extractor, reference, metrics=[])
    with pytest.raises(ValueError, match="max_pr_samples must exceed k=3"):
        GenerativeMetrics(extractor, reference, max_pr_samples=3)
    # the precision/recall knobs belong to its entry: without it they are not used
    GenerativeMetrics(extractor, reference, metrics=["fid"], max_pr_samples=3)
