"""Tiny networks shared by the tests (8×8 grey images, 10 classes)."""

from __future__ import annotations

from typing import Any

from calguide.modules.denoiser import DenoiserModule

TINY_UNET_FLAGS: dict[str, Any] = dict(
    image_size=8,
    in_channels=1,
    num_classes=10,
    class_cond=True,
    learn_sigma=True,
    num_channels=32,
    num_res_blocks=1,
    channel_mult="1,2",
    attention_resolutions="4",
)

TINY_ADM_CLASSIFIER_FLAGS: dict[str, Any] = dict(
    image_size=8,
    in_channels=1,
    num_classes=10,
    classifier_width=32,
    classifier_depth=1,
    classifier_attention_resolutions="4",
    classifier_channel_mult="1,2",
    classifier_num_head_channels=32,
)


def tiny_denoiser_module(steps: int = 1000, ema_decay: float = 0.9, **flags: Any) -> DenoiserModule:
    """A randomly initialised DenoiserModule on the tiny UNet (flags override the defaults)."""
    return DenoiserModule(
        flags={**TINY_UNET_FLAGS, **flags},
        diffusion={"steps": steps, "schedule": "linear", "sigma_small": False},
        optim={"lr": 1e-3, "weight_decay": 0.0, "warmup_steps": 10, "ema_decay": ema_decay},
    )
