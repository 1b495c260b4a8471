"""ADM U-Net / classifier: checkpoint layouts, tiny forward passes and flag validation."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from calguide.nets import (
    EncoderUNetModel,
    UNetModel,
    create_adm_classifier,
    create_unet,
    load_state_dict_file,
    load_weights,
    state_dict_layout,
)
from calguide.nets.checkpoint import diff_layouts
from calguide.nets.unet import QKVAttention, QKVAttentionLegacy, timestep_embedding

MANIFESTS = Path(__file__).parent / "data" / "manifests"
ADM_MANIFESTS = sorted(p.name for p in MANIFESTS.glob("*x*_*.json"))

TINY_UNET = dict(
    image_size=16,
    in_channels=1,
    num_channels=32,
    num_res_blocks=1,
    channel_mult="1,2",
    class_cond=True,
    num_classes=10,
    learn_sigma=True,
    attention_resolutions="8",
    num_heads=2,
    resblock_updown=True,
    use_scale_shift_norm=True,
)

TINY_CLASSIFIER = dict(
    image_size=16,
    in_channels=1,
    num_classes=10,
    classifier_width=32,
    classifier_depth=1,
    classifier_channel_mult="1,2,2",
    classifier_attention_resolutions="8,4",
    classifier_num_head_channels=16,
)


def _diff_message(expected: dict, actual: dict) -> str:
    missing, unexpected, mismatched = diff_layouts(expected, actual)
    return (
        f"missing={missing[:20]} (n={len(missing)})\n"
        f"unexpected={unexpected[:20]} (n={len(unexpected)})\n"
        f"mismatched={mismatched[:20]} (n={len(mismatched)})"
    )


def _build(manifest: dict) -> nn.Module:
    flags = manifest["flags"]
    with torch.device("meta"):
        if "classifier_width" in flags:
            return create_adm_classifier(**flags)
        return create_unet(**flags)


@pytest.mark.parametrize("name", ADM_MANIFESTS)
def test_adm_layout_matches_manifest(name: str) -> None:
    manifest = json.loads((MANIFESTS / name).read_text())
    model = _build(manifest)
    expected = manifest["state_dict"]
    actual = state_dict_layout(model)
    assert actual == expected, f"{name}:\n{_diff_message(expected, actual)}"


def test_all_six_adm_manifests_present() -> None:
    assert len(ADM_MANIFESTS) == 6


def _tiny_inputs(batch: int = 2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 1, 16, 16, generator=g)
    t = torch.tensor([0.0, 731.0])[:batch]
    y = torch.tensor([3, 9])[:batch]
    return x, t, y


def test_tiny_unet_forward_shape_and_zero_init() -> None:
    torch.manual_seed(0)
    model = create_unet(**TINY_UNET).eval()
    x, t, y = _tiny_inputs()
    out = model(x, t, y)
    assert out.shape == (2, 2, 16, 16)
    assert out.dtype == torch.float32
    assert torch.count_nonzero(out) == 0  # zero-initialised output conv


def test_tiny_unet_input_gradients_after_perturbation() -> None:
    torch.manual_seed(0)
    model = create_unet(**TINY_UNET).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    x, t, y = _tiny_inputs()
    x.requires_grad_(True)
    out = model(x, t, y)
    assert torch.isfinite(out).all() and out.abs().sum() > 0
    out.square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_scalar_timestep_is_broadcast() -> None:
    model = create_unet(**TINY_UNET).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    x, _, y = _tiny_inputs()
    a = model(x, torch.tensor(5.0), y)
    b = model(x, torch.tensor([5.0, 5.0]), y)
    torch.testing.assert_close(a, b)


def test_labels_required_iff_class_conditional() -> None:
    model = create_unet(**TINY_UNET)
    x, t, _ = _tiny_inputs()
    with pytest.raises(ValueError, match="requires class labels"):
        model(x, t)
    uncond = create_unet(**{**TINY_UNET, "class_cond": False})
    with pytest.raises(ValueError, match="does not accept class labels"):
        uncond(x, t, torch.tensor([1, 2]))


def test_gradient_checkpointing_matches_plain() -> None:
    torch.manual_seed(0)
    plain = create_unet(**TINY_UNET).eval()
    with torch.no_grad():
        for p in plain.parameters():
            p.add_(0.02 * torch.randn_like(p))
    ckpt = create_unet(**{**TINY_UNET, "use_checkpoint": True}).eval()
    ckpt.load_state_dict(plain.state_dict())
    grads = []
    for model in (plain, ckpt):
        x, t, y = _tiny_inputs()
        x.requires_grad_(True)
        model(x, t, y).sum().backward()
        grads.append(x.grad)
    torch.testing.assert_close(grads[0], grads[1])


def test_fp16_converts_torso_only() -> None:
    model = create_unet(**{**TINY_UNET, "use_fp16": True}).eval()
    assert model.dtype == torch.float16
    torso_convs = [
        m
        for part in (model.input_blocks, model.middle_block, model.output_blocks)
        for m in part.modules()
        if isinstance(m, nn.Conv1d | nn.Conv2d)
    ]
    assert torso_convs and all(m.weight.dtype == torch.float16 for m in torso_convs)
    # As in ADM: norms, linears, embeddings and the output head stay float32.
    assert model.time_embed[0].weight.dtype == torch.float32
    assert model.label_emb.weight.dtype == torch.float32
    assert model.out[2].weight.dtype == torch.float32
    norms = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert all(m.weight.dtype == torch.float32 for m in norms)
    x, t, y = _tiny_inputs()
    try:
        out = model(x, t, y)
    except RuntimeError as exc:  # half convolutions are not implemented on every CPU build
        pytest.skip(f"fp16 forward unsupported here: {exc}")
    assert out.dtype == torch.float32 and out.shape == (2, 2, 16, 16)
    model.convert_to_fp32()
    assert model.dtype == torch.float32


def test_timestep_embedding_layout() -> None:
    emb = timestep_embedding(torch.tensor([0.0, 10.0]), 8)
    assert emb.shape == (2, 8)
    # t = 0: cos part is one, sin part is zero (cos first, as in ADM).
    torch.testing.assert_close(emb[0, :4], torch.ones(4))
    torch.testing.assert_close(emb[0, 4:], torch.zeros(4))
    assert timestep_embedding(torch.tensor([3.0]), 7).shape == (1, 7)


def test_attention_orders_agree_for_single_head() -> None:
    qkv = torch.randn(2, 3 * 8, 5)
    torch.testing.assert_close(QKVAttention(1)(qkv), QKVAttentionLegacy(1)(qkv))


def test_attention_orders_differ_in_channel_layout() -> None:
    heads, ch, length = 2, 4, 6
    qkv_new = torch.randn(1, 3 * heads * ch, length)
    # Rearrange (qkv, heads, ch) -> (heads, qkv, ch): legacy must then give the same result.
    qkv_legacy = qkv_new.reshape(1, 3, heads, ch, length).transpose(1, 2).reshape_as(qkv_new)
    torch.testing.assert_close(QKVAttention(heads)(qkv_new), QKVAttentionLegacy(heads)(qkv_legacy))


@pytest.mark.parametrize("pool", ["adaptive", "attention", "spatial", "spatial_v2"])
def test_tiny_classifier_pools(pool: str) -> None:
    torch.manual_seed(0)
    model = create_adm_classifier(**TINY_CLASSIFIER, classifier_pool=pool).eval()
    assert isinstance(model, EncoderUNetModel)
    x, t, _ = _tiny_inputs()
    x.requires_grad_(True)
    logits = model(x, t)
    assert logits.shape == (2, 10)
    logits.logsumexp(-1).sum().backward()  # guidance needs d log p / dx to exist
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_attention_pool_rejects_wrong_image_size() -> None:
    model = create_adm_classifier(**TINY_CLASSIFIER)
    with pytest.raises(ValueError, match="image size"):
        model(torch.randn(1, 1, 32, 32), torch.tensor([1.0]))


def test_classifier_fp16_alias() -> None:
    model = create_adm_classifier(**TINY_CLASSIFIER, use_fp16=True)
    assert model.dtype == torch.float16
    with pytest.raises(ValueError, match="disagree"):
        create_adm_classifier(**TINY_CLASSIFIER, use_fp16=True, classifier_use_fp16=False)


def test_channel_mult_and_attention_formats_agree() -> None:
    layouts = []
    for mult, attn in (("1,2", "8"), ((1, 2), [8]), ([1, 2], (8,)), ("1, 2", 8)):
        with torch.device("meta"):
            model = create_unet(
                **{**TINY_UNET, "channel_mult": mult, "attention_resolutions": attn}
            )
        layouts.append(state_dict_layout(model))
    assert all(layout == layouts[0] for layout in layouts)


def test_adm_default_channel_mult() -> None:
    with torch.device("meta"):
        model = create_unet(image_size=64, num_channels=64, num_res_blocks=1)
    assert model.channel_mult == (1, 2, 3, 4)
    assert isinstance(model, UNetModel)
    assert model.adm_flags["attention_resolutions"] == "16"


@pytest.mark.parametrize(
    ("change", "exc", "pattern"),
    [
        ({"attention_resolutions": "5"}, ValueError, "attention_resolutions"),
        ({"attention_resolutions": "2"}, ValueError, "attention_resolutions"),
        ({"num_classes": None}, ValueError, "num_classes"),
        ({"num_classes": 0}, ValueError, "num_classes"),
        ({"num_channels": 48}, ValueError, "num_channels"),
        ({"channel_mult": "", "image_size": 24}, ValueError, "channel_mult"),
        ({"channel_mult": "1,a"}, ValueError, "channel_mult"),
        ({"num_heads": 3}, ValueError, "num_heads"),
        ({"num_head_channels": 24}, ValueError, "num_head_channels"),
        ({"image_size": 18}, ValueError, "image_size"),
        ({"dropout": 1.5}, ValueError, "dropout"),
        ({"bogus_flag": 1}, TypeError, "accepted flags"),
    ],
)
def test_bad_unet_flags(change: dict, exc: type[Exception], pattern: str) -> None:
    with pytest.raises(exc, match=pattern):
        create_unet(**{**TINY_UNET, **change})


def test_missing_required_unet_flag() -> None:
    flags = {k: v for k, v in TINY_UNET.items() if k != "num_res_blocks"}
    with pytest.raises(TypeError, match="num_res_blocks"):
        create_unet(**flags)


def test_unknown_flag_lists_accepted() -> None:
    with pytest.raises(TypeError) as info:
        create_unet(**TINY_UNET, num_chanels=64)
    message = str(info.value)
    assert "num_chanels" in message and "num_channels" in message and "use_fp16" in message


@pytest.mark.parametrize(
    ("change", "exc", "pattern"),
    [
        ({"classifier_pool": "max"}, ValueError, "classifier_pool"),
        ({"classifier_attention_resolutions": "3"}, ValueError, "attention_resolutions"),
        ({"classifier_width": 40}, ValueError, "classifier_width"),
        ({"classifier_num_head_channels": -1}, ValueError, "num_head_channels"),
        ({"classifier_depth": 0}, ValueError, "classifier_depth"),
        ({"diffusion_steps": 1000}, TypeError, "accepted flags"),
    ],
)
def test_bad_classifier_flags(change: dict, exc: type[Exception], pattern: str) -> None:
    with pytest.raises(exc, match=pattern):
        create_adm_classifier(**{**TINY_CLASSIFIER, **change})


_WEIGHTS_DIR = os.environ.get("CALGUIDE_ADM_WEIGHTS_DIR")


@pytest.mark.slow
@pytest.mark.skipif(not _WEIGHTS_DIR, reason="set CALGUIDE_ADM_WEIGHTS_DIR to check real files")
@pytest.mark.parametrize("name", ADM_MANIFESTS)
def test_real_adm_weights_load_strict(name: str) -> None:
    path = Path(str(_WEIGHTS_DIR)) / name.replace(".json", ".pt")
    if not path.exists():
        pytest.skip(f"{path} not present")
    manifest = json.loads((MANIFESTS / name).read_text())
    model = _build(manifest)
    sd = load_state_dict_file(path, what=f"ADM {name[:-5]} checkpoint")
    load_weights(model, sd, strict=True, source=str(path), assign=True)


@pytest.mark.parametrize("order", [QKVAttention, QKVAttentionLegacy])
def test_fused_attention_equals_adms_einsum_in_fp32(order) -> None:
    """scaled_dot_product_attention in place of ADM's einsum: the same attention in fp32 (to
    float rounding), for both qkv layouts and several heads."""
    torch.manual_seed(0)
    qkv = 3.0 * torch.randn(3, 3 * 4 * 16, 64)
    plain, fused = order(4), order(4)
    fused.fused = True
    torch.testing.assert_close(fused(qkv), plain(qkv), rtol=1e-5, atol=1e-5)


def test_fused_attention_switches_every_block_and_keeps_the_output() -> None:
    """use_fused_attention on a UNet with attention and an attention-pooled classifier: the
    blocks it switched are counted, and the outputs and input gradients agree in fp32."""
    from calguide.nets.unet import use_fused_attention

    torch.manual_seed(0)
    for build, kwargs in ((create_unet, TINY_UNET),
                          (create_adm_classifier, {**TINY_CLASSIFIER,
                                                   "classifier_pool": "attention"})):  # fmt: skip
        model = build(**kwargs).eval()
        for p in model.parameters():  # zero-initialised layers would hide the attention
            p.data.add_(0.05 * torch.randn_like(p))
        x, t, y = _tiny_inputs()
        x.requires_grad_(True)
        args = (x, t, y) if build is create_unet else (x, t)
        want = model(*args)
        (want_grad,) = torch.autograd.grad(want.square().sum(), x)
        assert use_fused_attention(model) > 0
        got = model(*args)
        (got_grad,) = torch.autograd.grad(got.square().sum(), x)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got_grad, want_grad, rtol=1e-4, atol=1e-4)
        assert use_fused_attention(model, on=False) > 0
