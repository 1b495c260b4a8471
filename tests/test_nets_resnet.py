"""ResNets: torchvision layouts, tiny forward passes and the ReLU -> Softplus swap."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from calguide.nets import (
    resnet18,
    resnet34,
    resnet50,
    resnet101,
    resnet152,
    small_resnet,
    state_dict_layout,
    swap_relu_for_softplus,
)
from calguide.nets.checkpoint import diff_layouts

MANIFESTS = Path(__file__).parent / "data" / "manifests"


@pytest.mark.parametrize(
    ("name", "factory"),
    [("resnet18", resnet18), ("resnet50", resnet50), ("resnet101", resnet101)],
)
def test_torchvision_layout_matches_manifest(name: str, factory) -> None:
    expected = json.loads((MANIFESTS / f"torchvision_{name}.json").read_text())["state_dict"]
    with torch.device("meta"):
        model = factory()
    actual = state_dict_layout(model)
    missing, unexpected, mismatched = diff_layouts(expected, actual)
    assert actual == expected, (
        f"{name}: missing={missing[:20]} unexpected={unexpected[:20]} mismatched={mismatched[:20]}"
    )


@pytest.mark.parametrize(
    ("factory", "n_params"),
    # Parameter counts of torchvision's ImageNet ResNets.
    [(resnet34, 21_797_672), (resnet152, 60_192_808)],
)
def test_other_depths_parameter_counts(factory, n_params: int) -> None:
    with torch.device("meta"):
        model = factory()
    assert sum(p.numel() for p in model.parameters()) == n_params


def test_resnet18_forward_and_features() -> None:
    model = resnet18(num_classes=7).eval()
    x = torch.randn(2, 3, 32, 32)
    feats = model.features(x)
    assert feats.shape == (2, model.num_features) == (2, 512)
    torch.testing.assert_close(model(x), model.fc(feats))
    assert model(x).shape == (2, 7)


def test_resnet50_features_width() -> None:
    with torch.device("meta"):
        model = resnet50()
    assert model.num_features == 2048 and model.fc.in_features == 2048


@pytest.mark.parametrize(("image_size", "stages"), [(16, 3), (28, 4), (8, 2), (4, 1)])
def test_small_resnet_shapes(image_size: int, stages: int) -> None:
    model = small_resnet(num_classes=10, in_channels=1, width=32, image_size=image_size).eval()
    assert model.num_stages == stages
    x = torch.randn(3, 1, image_size, image_size)
    feats = model.features(x)
    assert feats.shape == (3, model.num_features)
    assert model(x).shape == (3, 10)
    names = state_dict_layout(model)
    assert "conv1.weight" in names and "fc.weight" in names
    assert names["conv1.weight"] == [32, 1, 3, 3]


def test_small_resnet_input_gradient() -> None:
    model = small_resnet().eval()
    x = torch.randn(2, 1, 16, 16, requires_grad=True)
    model(x).logsumexp(-1).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def _count(module: nn.Module, kind: type[nn.Module]) -> int:
    return sum(isinstance(m, kind) for m in module.modules())


@pytest.mark.parametrize("factory", [small_resnet, resnet18, resnet50])
def test_swap_relu_for_softplus_replaces_all(factory) -> None:
    model = factory()
    n_relu = _count(model, nn.ReLU)
    assert n_relu > 0
    layout_before = state_dict_layout(model)
    out = swap_relu_for_softplus(model, beta=10.0)
    assert out is model
    assert _count(model, nn.ReLU) == 0
    assert _count(model, nn.Softplus) == n_relu
    assert all(m.beta == 10.0 for m in model.modules() if isinstance(m, nn.Softplus))
    assert state_dict_layout(model) == layout_before


def test_softplus_swap_changes_outputs_slightly_for_large_beta() -> None:
    torch.manual_seed(0)
    base = small_resnet(image_size=16).eval()
    x = torch.randn(4, 1, 16, 16)
    ref = base(x)
    sharp = swap_relu_for_softplus(small_resnet(image_size=16).eval(), beta=1000.0)
    sharp.load_state_dict(base.state_dict())
    smooth = swap_relu_for_softplus(small_resnet(image_size=16).eval(), beta=1.0)
    smooth.load_state_dict(base.state_dict())
    err_sharp = (sharp(x) - ref).abs().max() / ref.abs().max()
    err_smooth = (smooth(x) - ref).abs().max() / ref.abs().max()
    assert 0 < err_sharp < 0.02
    assert err_smooth > err_sharp


def test_swap_on_bare_relu_and_bad_beta() -> None:
    assert isinstance(swap_relu_for_softplus(nn.ReLU(), beta=5.0), nn.Softplus)
    with pytest.raises(ValueError, match="beta"):
        swap_relu_for_softplus(small_resnet(), beta=0.0)
