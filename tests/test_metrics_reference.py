"""Reference statistics: streaming computation, the disk cache, ADM reference batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from calguide.metrics import (
    FeatureStats,
    cached_reference,
    iter_adm_reference_batch,
    load_adm_reference_batch,
    reference_features,
    to_uint8_nhwc,
)
from calguide.metrics.reference import reference_cache_path


class _MeanPixels:
    """A cheap deterministic 'extractor': per-channel means and a few pixel values."""

    name = "mean-pixels"
    dim = 4

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float()
        return torch.stack(
            [x.mean((1, 2, 3)), x[:, 0, 0, 0], x[:, -1, -1, -1], x[:, 1, 2, 0]], dim=1
        )


def _images(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 6, 6, 3), generator=g, dtype=torch.uint8)


def test_reference_features_tensor_and_loader_agree():
    imgs = _images(40)
    ext = _MeanPixels()
    a = reference_features(ext, imgs, batch_size=7)
    # the project's loaders yield (float [-1,1] N×C×H×W, labels)
    floats = imgs.permute(0, 3, 1, 2).float() / 127.5 - 1.0
    loader = [(floats[i : i + 16], torch.zeros(16)) for i in range(0, 40, 16)]
    b = reference_features(ext, loader)
    full = FeatureStats.from_features(ext(imgs))
    for ref in (a, b):
        assert ref["count"] == 40 and ref["dim"] == 4 and ref["extractor"] == "mean-pixels"
        torch.testing.assert_close(ref["mean"], full.mean)
        torch.testing.assert_close(ref["cov"], full.covariance)
        assert ref["features"].dtype == torch.float16  # the default storage
        torch.testing.assert_close(ref["features"], ext(imgs).half())
    assert torch.equal(to_uint8_nhwc(floats), imgs)


def test_reference_feature_cap_is_a_deterministic_subset():
    imgs, ext = _images(50), _MeanPixels()
    a = reference_features(ext, imgs, batch_size=3, max_features=12)
    b = reference_features(ext, imgs, batch_size=50, max_features=12, features_dtype=torch.float16)
    assert a["features"].shape == (12, 4) and a["count"] == 50
    torch.testing.assert_close(a["features"].half(), b["features"])
    assert reference_features(ext, imgs, keep_features=False)["features"] is None


def test_cached_reference_recomputes_only_when_the_key_changes(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"mean": torch.arange(3.0), "cov": torch.eye(3), "count": 9, "features": None}

    key = {"extractor": "x", "data": "digits", "resolution": 16, "count": 9}
    first = cached_reference(tmp_path, key, compute)
    second = cached_reference(tmp_path, dict(reversed(list(key.items()))), compute)
    assert len(calls) == 1
    torch.testing.assert_close(second["mean"], first["mean"])
    assert second["count"] == 9 and second["features"] is None
    cached_reference(tmp_path, {**key, "resolution": 32}, compute)
    assert len(calls) == 2
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(
        [
            reference_cache_path(tmp_path, key).name,
            reference_cache_path(tmp_path, {**key, "resolution": 32}).name,
        ]
    )
    assert all(n.startswith("reference-") and n.endswith(".pt") for n in names)


def test_cached_reference_survives_a_corrupt_file_and_rejects_bad_keys(tmp_path):
    key = {"extractor": "x"}
    reference_cache_path(tmp_path, key).write_bytes(b"not a torch file")
    calls = []
    with pytest.warns(UserWarning, match="unreadable"):
        cached_reference(tmp_path, key, lambda: calls.append(1) or {"mean": torch.zeros(1)})
    assert calls == [1]
    assert cached_reference(tmp_path, key, lambda: pytest.fail("recomputed"))["mean"].shape == (1,)
    with pytest.raises(TypeError, match="JSON"):
        cached_reference(tmp_path, {"extractor": object()}, dict)


def test_cached_reference_leaves_no_temp_file_when_compute_or_save_fails(tmp_path):
    with pytest.raises(RuntimeError):
        cached_reference(tmp_path, {"a": 1}, lambda: (_ for _ in ()).throw(RuntimeError("x")))
    with pytest.raises(Exception):  # noqa: B017 - not serialisable by torch.save
        cached_reference(tmp_path, {"a": 2}, lambda: {"f": lambda: None})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("compressed", [False, True])
def test_adm_reference_batch_full_and_streaming(tmp_path, compressed):
    imgs = _images(11).numpy()
    labels = np.arange(11) % 3
    path = tmp_path / "VIRTUAL_tiny_labeled.npz"
    (np.savez_compressed if compressed else np.savez)(
        path, arr_0=imgs, arr_1=labels, mu=np.zeros(4), sigma=np.eye(4)
    )
    ref = load_adm_reference_batch(path)
    assert ref["images"].dtype == torch.uint8 and torch.equal(ref["images"], torch.from_numpy(imgs))
    assert ref["labels"].tolist() == labels.tolist() and ref["adm_sigma"].shape == (4, 4)
    batches = list(iter_adm_reference_batch(path, batch_size=4))
    assert [b.shape[0] for b in batches] == [4, 4, 3]
    assert torch.equal(torch.cat(batches), ref["images"])


def test_adm_reference_batch_errors_name_the_file_and_keys(tmp_path):
    missing = tmp_path / "VIRTUAL_imagenet128_labeled.npz"
    with pytest.raises(FileNotFoundError, match="VIRTUAL_imagenet128_labeled.npz.*arr_0"):
        load_adm_reference_batch(missing)
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, images=_images(2).numpy())
    with pytest.raises(ValueError, match=r"wrong\.npz.*\['images'\].*arr_0"):
        load_adm_reference_batch(wrong)
    bad = tmp_path / "bad.npz"
    np.savez(bad, arr_0=np.zeros((2, 4, 4, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="uint8"):
        next(iter_adm_reference_batch(bad))


def test_cached_reference_stores_numpy_values_loadably(tmp_path):
    compute = lambda: {"mean": np.arange(3.0), "count": np.int64(3)}  # noqa: E731
    first = cached_reference(tmp_path, {"k": 1}, compute)
    second = cached_reference(tmp_path, {"k": 1}, lambda: pytest.fail("recomputed"))
    assert isinstance(second["mean"], torch.Tensor) and second["count"] == 3
    torch.testing.assert_close(first["mean"], second["mean"])
