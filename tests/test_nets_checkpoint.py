"""Weight-file loading: containers, prefixes, clear errors and the layout diff."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from calguide.nets import (
    StateDictMismatchError,
    create_unet,
    load_state_dict_file,
    load_weights,
    small_resnet,
    state_dict_layout,
)

TINY = dict(
    image_size=16,
    in_channels=1,
    num_channels=32,
    num_res_blocks=1,
    channel_mult="1,2",
    class_cond=True,
    num_classes=10,
    learn_sigma=True,
    attention_resolutions="8",
    resblock_updown=True,
    use_scale_shift_norm=True,
)


def _randomised_unet() -> nn.Module:
    torch.manual_seed(0)
    model = create_unet(**TINY)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.05)
    return model


def _assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], msg=k)


def test_save_load_round_trip_strict(tmp_path: Path) -> None:
    src = _randomised_unet()
    path = tmp_path / "tiny.pt"
    torch.save(src.state_dict(), path)
    sd = load_state_dict_file(path, what="tiny U-Net checkpoint")
    dst = create_unet(**TINY)
    assert load_weights(dst, sd, strict=True, source=str(path)) is dst
    _assert_same_weights(src, dst)
    x = torch.randn(2, 1, 16, 16)
    t, y = torch.tensor([3.0, 70.0]), torch.tensor([1, 2])
    torch.testing.assert_close(src(x, t, y), dst(x, t, y))


def test_meta_build_then_assign(tmp_path: Path) -> None:
    src = _randomised_unet()
    path = tmp_path / "tiny.pt"
    torch.save(src.state_dict(), path)
    with torch.device("meta"):
        dst = create_unet(**TINY)
    load_weights(dst, load_state_dict_file(path, what="tiny"), assign=True)
    assert not any(p.is_meta for p in dst.parameters())
    _assert_same_weights(src, dst)


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: {"state_dict": sd, "epoch": 3},
        lambda sd: {"model": sd, "optimizer": {"lr": 0.1}},
        lambda sd: {"model_state_dict": sd},
        lambda sd: {f"module.{k}": v for k, v in sd.items()},
    ],
    ids=["state_dict", "model", "model_state_dict", "dataparallel"],
)
def test_containers_are_unwrapped(tmp_path: Path, wrap) -> None:
    src = small_resnet()
    path = tmp_path / "wrapped.ckpt"
    torch.save(wrap(src.state_dict()), path)
    sd = load_state_dict_file(path, what="wrapped")
    assert state_dict_layout(sd) == state_dict_layout(src)


def test_lightning_prefix_is_stripped(tmp_path: Path) -> None:
    src = small_resnet()
    inner = {f"model.{k}": v for k, v in src.state_dict().items()}
    inner.update({f"ema_model.{k}": v for k, v in src.state_dict().items()})
    path = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": inner, "global_step": 10}, path)
    sd = load_state_dict_file(path, what="Lightning checkpoint", strip_prefix="model.")
    load_weights(small_resnet(), sd, source=str(path))
    with pytest.raises(ValueError, match="prefix"):
        load_state_dict_file(path, what="Lightning checkpoint", strip_prefix="net.")


def test_mismatch_error_lists_all_three_kinds() -> None:
    model = small_resnet()
    sd = dict(model.state_dict())
    del sd["bn1.running_mean"]
    sd["extra.weight"] = torch.zeros(3)
    sd["fc.weight"] = torch.zeros(5, model.num_features)
    with pytest.raises(StateDictMismatchError) as info:
        load_weights(model, sd, source="my-test-source")
    err = info.value
    assert isinstance(err, ValueError)
    message = str(err)
    for needle in ("bn1.running_mean", "extra.weight", "fc.weight", "my-test-source"):
        assert needle in message
    assert "[10, 128]" in message and "[5, 128]" in message
    assert err.missing == ["bn1.running_mean"]
    assert err.unexpected == ["extra.weight"]
    assert [k for k, _, _ in err.mismatched] == ["fc.weight"]


def test_non_strict_allows_missing_but_not_misshaped() -> None:
    model = small_resnet()
    sd = {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}
    load_weights(model, sd, strict=False)
    sd["conv1.weight"] = torch.zeros(1)
    with pytest.raises(StateDictMismatchError, match=r"conv1\.weight"):
        load_weights(model, sd, strict=False)


def test_mismatch_listing_is_capped() -> None:
    model = create_unet(**TINY)
    with pytest.raises(StateDictMismatchError) as info:
        load_weights(model, {}, source="empty")
    n = len(model.state_dict())
    assert f"missing keys (in module, not in state dict) ({n})" in str(info.value)
    assert f"and {n - 10} more" in str(info.value)
    assert len(info.value.missing) == n


def test_missing_file_message(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "128x128_diffusion.pt"
    with pytest.raises(FileNotFoundError) as info:
        load_state_dict_file(path, what="ADM 128x128 diffusion checkpoint")
    message = str(info.value)
    assert str(path) in message and "ADM 128x128 diffusion checkpoint" in message
    assert "\n" not in message


def test_garbage_file_is_value_error(tmp_path: Path) -> None:
    path = tmp_path / "notes.pt"
    path.write_text("this is not a checkpoint\n")
    with pytest.raises(ValueError, match=r"notes\.pt"):
        load_state_dict_file(path, what="classifier weights")


def test_non_tensor_payload_is_value_error(tmp_path: Path) -> None:
    path = tmp_path / "config.pt"
    torch.save({"lr": 0.1, "steps": [1, 2]}, path)
    with pytest.raises(ValueError, match=r"config\.pt"):
        load_state_dict_file(path, what="weights")


def test_directory_is_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a regular file"):
        load_state_dict_file(tmp_path, what="weights")


def test_state_dict_layout_lists_shapes() -> None:
    layout = state_dict_layout(nn.Linear(3, 2))
    assert layout == {"weight": [2, 3], "bias": [2]}
    assert state_dict_layout(nn.BatchNorm1d(4))["num_batches_tracked"] == []
