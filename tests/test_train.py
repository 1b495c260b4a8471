"""calguide-train end to end on tiny settings: train, resume, export, rebuild, sample grid."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from tiny import tiny_denoiser_module

from calguide.commands.train import main as train_main
from calguide.config import check
from calguide.modules.denoiser import (
    DenoiserModule,
    ema_decay_at,
    export_denoiser,
    load_denoiser,
    update_ema,
    warmup_factor,
)
from calguide.nets import StateDictMismatchError, create_unet
from calguide.samples.grid import save_image_grid, tile, to_uint8

TINY = [
    "data.image_size=8",
    "data.batch_size=16",
    "denoiser.flags.num_channels=32",
    "denoiser.flags.channel_mult='1,2'",
    "denoiser.flags.attention_resolutions='4'",
    "trainer.max_steps=3",
    "trainer.enable_progress_bar=false",
    "logger=csv",
    "sample_grid.per_class=2",
    "sample_grid.respacing='4'",
]


def test_train_resume_export_and_grid(compose_config):
    cfg = compose_config("train", TINY)
    train_main.task(check(cfg))
    out = Path(cfg.out_dir)
    assert (out / "last.ckpt").is_file()
    net, meta = load_denoiser(out / "denoiser.pt")
    assert meta["trained_steps"] == 3
    assert meta["flags"]["image_size"] == 8 and meta["flags"]["class_cond"] is True
    grid = Image.open(out / "samples.png")
    assert grid.mode == "L" and grid.width > 8 * 2 and grid.height > 8 * 10
    assert not list(out.glob(".*.tmp"))

    # A rerun with a larger budget continues from last.ckpt instead of starting over.
    cfg = compose_config("train", [*TINY, "trainer.max_steps=5"])
    train_main.task(check(cfg))
    _, meta = load_denoiser(out / "denoiser.pt")
    assert meta["trained_steps"] == 5

    # The exported EMA weights rebuild the network exactly from the file alone, and equal the
    # checkpoint's (which is written after the step's EMA update, not one update behind).
    net, _ = load_denoiser(out / "denoiser.pt")
    ckpt = torch.load(out / "last.ckpt", map_location="cpu", weights_only=False)
    ema = {k[len("ema.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("ema.")}
    for key, value in net.state_dict().items():
        torch.testing.assert_close(value, ema[key])


def test_train_rejects_denoiser_not_matching_data(compose_config):
    from calguide.config import ConfigError

    cfg = compose_config("train", [*TINY, "denoiser.flags.image_size=16"])
    with pytest.raises((ConfigError, SystemExit)):
        train_main.task(check(cfg))


def tiny_module(**flag_overrides) -> DenoiserModule:
    return tiny_denoiser_module(steps=100, **flag_overrides)


def test_training_step_loss_is_finite_and_backpropagates():
    module = tiny_module()
    batch = (torch.rand(4, 1, 8, 8) * 2 - 1, torch.randint(0, 10, (4,)))
    loss = module._losses(batch)["loss"]
    assert torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in module.net.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert all(p.grad is None for p in module.ema.parameters())


def test_ema_update_rule():
    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    before = [p.clone() for p in a.parameters()]
    update_ema(a, b, decay=0.75)
    for old, new, src in zip(before, a.parameters(), b.parameters()):
        torch.testing.assert_close(new, 0.75 * old + 0.25 * src)
    assert warmup_factor(0, 10) == pytest.approx(0.1)
    assert warmup_factor(50, 10) == 1.0 and warmup_factor(0, 0) == 1.0


def test_unconditional_sampling_ignores_labels(tmp_path):
    module = tiny_module(class_cond=False)
    labels = torch.tensor([0, 5])
    g1 = torch.Generator().manual_seed(3)
    g2 = torch.Generator().manual_seed(3)
    a = module.sample(labels, respacing="3", generator=g1)
    b = module.sample(torch.tensor([7, 1]), respacing="3", generator=g2)
    assert a.shape == (2, 1, 8, 8)
    torch.testing.assert_close(a, b)
    assert a.min() >= -1 and a.max() <= 1


def test_load_official_layout_state_dict_with_config_flags(tmp_path):
    flags = dict(
        image_size=8,
        in_channels=3,
        num_channels=32,
        num_res_blocks=1,
        channel_mult="1,2",
        attention_resolutions="4",
        learn_sigma=True,
    )
    net = create_unet(**flags)
    torch.save(net.state_dict(), tmp_path / "adm.pt")
    loaded, _ = load_denoiser(tmp_path / "adm.pt", flags=flags)
    for key, value in net.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value)
    with pytest.raises(ValueError, match="bare state dict"):
        load_denoiser(tmp_path / "adm.pt")
    with pytest.raises(StateDictMismatchError, match="adm.pt"):
        load_denoiser(tmp_path / "adm.pt", flags={**flags, "num_channels": 64})
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_denoiser(tmp_path / "missing.pt", flags=flags)


def test_export_is_atomic_and_readable(tmp_path):
    module = tiny_module()
    path = export_denoiser(module, tmp_path / "sub" / "d.pt")
    assert path.is_file() and not list(path.parent.glob(".*.tmp"))
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == "calguide-denoiser/1"


def test_grid_layout_and_uint8_conversion(tmp_path):
    images = torch.linspace(-1, 1, 6 * 3 * 2 * 2).reshape(6, 3, 2, 2)
    pixels = to_uint8(images)
    assert pixels.shape == (6, 2, 2, 3) and pixels.dtype == torch.uint8
    assert pixels.min() == 0 and pixels.max() == 255
    mosaic = tile(pixels, ncols=3, pad=1)
    assert mosaic.shape == (2 * 3 + 1, 3 * 3 + 1, 3)
    assert torch.equal(mosaic[1:3, 1:3], pixels[0])
    assert torch.equal(mosaic[4:6, 7:9], pixels[5])
    path = save_image_grid(images, tmp_path / "g.png", ncols=3, upscale=2)
    assert Image.open(path).size == (2 * 10, 2 * 7)


def test_uint8_truncates_as_adm_and_elucd():
    """((x + 1)·127.5).clamp(0, 255).to(uint8): 127.9 → 127, not 128 (the published protocol)."""
    x = torch.tensor([127.9, 0.6, 254.99, 255.0, -3.0, 300.0]) / 127.5 - 1.0
    got = to_uint8(x.view(1, 1, 1, -1))[0, 0, :, 0]
    assert got.tolist() == [127, 0, 254, 255, 0, 255]


def test_ema_decay_warms_up_so_the_random_init_fades():
    assert ema_decay_at(0, 0.999) == 0.1
    assert ema_decay_at(90, 0.999) == 91 / 100
    assert ema_decay_at(100_000, 0.999) == 0.999
    # Share of the initial weights left after n updates: ∏ decay_k, negligible with warm-up.
    share = 1.0
    for k in range(2000):
        share *= ema_decay_at(k, 0.999)
    assert share < 1e-6 and 0.999**2000 > 0.13
