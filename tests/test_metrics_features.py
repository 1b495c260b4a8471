"""Feature extractors: the classifier extractor, and Inception's offline error (no network)."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch

from calguide.metrics import (
    ClassifierFeatureExtractor,
    FeatureExtractor,
    InceptionExtractor,
    InceptionWeightsNotFoundError,
    inception_weights_path,
)
from calguide.metrics.features import INCEPTION_WEIGHTS_FILE
from calguide.nets import small_resnet


def test_classifier_extractor_features_logits_and_batching():
    torch.manual_seed(0)
    net = small_resnet(num_classes=5, in_channels=3, width=8, image_size=8)
    ext = ClassifierFeatureExtractor(net, "tiny", batch_size=3)
    assert isinstance(ext, FeatureExtractor) and ext.dim == net.num_features
    images = torch.randint(0, 256, (7, 8, 8, 3), dtype=torch.uint8)
    feats, logits = ext(images), ext.logits(images)
    assert feats.shape == (7, ext.dim) and feats.dtype == torch.float32
    x = images.permute(0, 3, 1, 2).float() / 127.5 - 1.0
    with torch.no_grad():
        torch.testing.assert_close(feats, net.features(x))
        torch.testing.assert_close(logits, net(x))
    f2, z2 = ext.features_and_logits(images)
    torch.testing.assert_close(f2, feats)
    torch.testing.assert_close(z2, logits)
    assert not net.training


def test_classifier_extractor_grey_to_rgb_and_preprocess():
    net = small_resnet(num_classes=3, in_channels=3, width=8, image_size=8)
    seen = []

    def prep(x):
        seen.append((x.min().item(), x.max().item()))
        return x

    ext = ClassifierFeatureExtractor(net, "tiny", preprocess=prep)
    grey = torch.full((2, 8, 8), 255, dtype=torch.uint8)
    assert ext(grey).shape == (2, ext.dim)
    assert seen == [(1.0, 1.0)]
    with pytest.raises(TypeError, match="uint8"):
        ext(torch.zeros(2, 8, 8, 3))
    grey_net = small_resnet(num_classes=3, in_channels=1, width=8, image_size=8)
    with pytest.raises(ValueError, match="channels"):
        ClassifierFeatureExtractor(grey_net, "g")(torch.zeros(1, 8, 8, 3, dtype=torch.uint8))


@pytest.fixture
def empty_torch_home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    return tmp_path / "torch_home" / "hub" / "checkpoints"


def test_inception_weights_path_follows_torch_home(empty_torch_home):
    assert inception_weights_path() == empty_torch_home / INCEPTION_WEIGHTS_FILE


def test_inception_offline_is_one_clear_error(empty_torch_home, monkeypatch):
    calls = []

    def no_network(url, dst, *args, **kwargs):
        calls.append((url, dst))
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(InceptionWeightsNotFoundError) as info:
        InceptionExtractor()
    msg = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert INCEPTION_WEIGHTS_FILE in msg and str(empty_torch_home) in msg
    assert "Temporary failure" in msg and "github.com" in msg
    assert calls and calls[0][1] == str(empty_torch_home / INCEPTION_WEIGHTS_FILE)
    assert not list(empty_torch_home.glob("*"))  # nothing half-written left


def test_inception_without_download_never_touches_the_network(empty_torch_home, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("network attempted")

    monkeypatch.setattr(torch.hub, "download_url_to_file", forbidden)
    with pytest.raises(InceptionWeightsNotFoundError, match="download=False"):
        InceptionExtractor(download=False)
    with pytest.raises(InceptionWeightsNotFoundError, match="does not exist"):
        InceptionExtractor(weights_path=empty_torch_home / "nope.pth")


def test_inception_wiring_with_fake_download(empty_torch_home, monkeypatch):
    """A fake 'download' writes a file; the random-init network stands in for the weights."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    calls = []

    def fake_download(url, dst, *args, **kwargs):
        calls.append(url)
        torch.save({}, dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    monkeypatch.setattr(FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None)
    monkeypatch.setattr(FeatureExtractorInceptionV3, "INPUT_IMAGE_SIZE", 75)  # speed only
    torch.manual_seed(0)
    ext = InceptionExtractor(batch_size=2)
    assert calls and calls[0].endswith(INCEPTION_WEIGHTS_FILE)
    assert (empty_torch_home / INCEPTION_WEIGHTS_FILE).is_file()
    grey = torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8)
    feats = ext(grey)
    assert feats.shape == (3, 2048) and feats.dtype == torch.float32
    assert torch.isfinite(feats).all()
    rgb = grey[..., None].expand(3, 16, 16, 3)
    torch.testing.assert_close(ext(rgb), feats)
    InceptionExtractor()  # cached now: no second download
    assert len(calls) == 1
