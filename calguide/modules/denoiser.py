"""Denoiser lifecycle: train (LightningModule with EMA), export, and rebuild from a file.

An exported denoiser file holds the ADM flags and diffusion settings next to the EMA weights, so
later stages rebuild the exact model from the file alone. Official guided-diffusion checkpoints
(bare state dicts) load too, with their flags taken from the config.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from calguide.diffusion import GaussianDiffusion, build_sampler, sample_loop
from calguide.errors import CheckpointError
from calguide.io import atomic_torch_save
from calguide.nets import create_unet, extract_state_dict, load_weights, read_weights_file

EXPORT_FORMAT = "calguide-denoiser/1"
DIFFUSION_KEYS = ("steps", "schedule", "sigma_small")


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema ← decay·ema + (1−decay)·model, parameter by parameter; buffers are copied."""
    for e, p in zip(ema.parameters(), model.parameters(), strict=True):
        e.lerp_(p.detach(), 1.0 - decay)
    for e, b in zip(ema.buffers(), model.buffers(), strict=True):
        e.copy_(b)


def ema_decay_at(step: int, decay: float) -> float:
    """The decay used after optimizer step ``step`` (0-based): min(decay, (1 + n)/(10 + n)).

    The EMA starts as a copy of the initial (random) weights; with a constant decay d their
    share after n updates is dⁿ (13% after 2,000 steps at d = 0.999), which visibly spoils
    short runs. The warm-up makes the early average follow the weights closely."""
    return min(float(decay), (1.0 + step) / (10.0 + step))


def warmup_factor(step: int, warmup_steps: int) -> float:
    return 1.0 if warmup_steps <= 0 else min(1.0, (step + 1) / warmup_steps)


def build_diffusion(flags: Mapping[str, Any], diffusion: Mapping[str, Any], respacing: str = ""):
    return GaussianDiffusion.from_config(
        steps=int(diffusion.get("steps", 1000)),
        schedule=str(diffusion.get("schedule", "linear")),
        learn_sigma=bool(flags.get("learn_sigma", False)),
        sigma_small=bool(diffusion.get("sigma_small", False)),
        respacing=respacing,
    )


class DenoiserModule(L.LightningModule):
    """ε-prediction training of an ADM UNet: ε-MSE (+ ADM's hybrid VB term with learned σ)."""

    def __init__(
        self, flags: dict[str, Any], diffusion: dict[str, Any], optim: dict[str, Any]
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.flags = dict(flags)
        self.net = create_unet(**self.flags)
        self.ema = copy.deepcopy(self.net).requires_grad_(False).eval()
        self.diffusion = build_diffusion(self.flags, diffusion)
        self.class_cond = bool(self.flags.get("class_cond", False))
        self.optim = dict(optim)

    def _losses(self, batch: tuple[Tensor, Tensor], generator: torch.Generator | None = None):
        x0, y = batch
        n = x0.shape[0]
        t = torch.randint(
            0, self.diffusion.num_timesteps, (n,), device=x0.device, generator=generator
        )
        if generator is None:
            noise = torch.randn_like(x0)
        else:
            noise = torch.randn(x0.shape, device=x0.device, generator=generator, dtype=x0.dtype)
        x_t = self.diffusion.q_sample(x0, t, noise)
        out = self.net(x_t, t, y if self.class_cond else None)
        return {k: v.mean() for k, v in self.diffusion.loss_terms(out, x0, x_t, t, noise).items()}

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        terms = self._losses(batch)
        self.log_dict({f"train/{k}": v for k, v in terms.items()}, prog_bar=False)
        self.log("loss", terms["loss"], prog_bar=True, logger=False)
        return terms["loss"]

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        # Fixed timesteps and noise per batch, so validation curves compare across epochs.
        generator = torch.Generator(device=batch[0].device).manual_seed(batch_idx)
        terms = self._losses(batch, generator)
        self.log_dict({f"val/{k}": v for k, v in terms.items()}, prog_bar=True, sync_dist=True)

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        # The EMA update belongs to the step itself: callbacks' on_train_batch_end (which writes
        # last.ckpt) runs before the module's, so updating there left checkpoints one update
        # behind the exported weights.
        super().optimizer_step(*args, **kwargs)
        # global_step still counts the steps before this one here (0 for the first update).
        decay = ema_decay_at(self.global_step, float(self.optim["ema_decay"]))
        update_ema(self.ema, self.net, decay)

    def configure_optimizers(self):
        opt = torch.optim.AdamW(
            self.net.parameters(),
            lr=float(self.optim["lr"]),
            weight_decay=float(self.optim["weight_decay"]),
        )
        warmup = int(self.optim["warmup_steps"])
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_factor(s, warmup))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    @torch.no_grad()
    def sample(
        self,
        labels: Tensor,
        *,
        respacing: str = "100",
        generator: torch.Generator | None = None,
        progress: bool = False,
    ) -> Tensor:
        """Unguided samples from the EMA weights, one per label, in [-1, 1]."""
        return sample_unguided(
            self.ema,
            self.flags,
            self.hparams["diffusion"],
            labels,
            respacing=respacing,
            generator=generator,
            progress=progress,
        )


@torch.no_grad()
def sample_unguided(
    net: nn.Module,
    flags: Mapping[str, Any],
    diffusion: Mapping[str, Any],
    labels: Tensor,
    *,
    respacing: str = "100",
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> Tensor:
    was_training = net.training
    net.eval()
    chain = build_diffusion(flags, diffusion, respacing)
    device = next(net.parameters()).device
    labels = labels.to(device)
    channels, size = int(flags.get("in_channels", 3)), int(flags["image_size"])
    shape = (labels.shape[0], channels, size, size)
    x_T = torch.randn(shape, generator=generator, device=device)
    cond = labels if flags.get("class_cond", False) else None
    images = sample_loop(
        chain,
        lambda x, t: net(x, t, cond),
        x_T,
        sampler=build_sampler(
            str(diffusion.get("sampler", "ddpm")), **dict(diffusion.get("sampler_params") or {})
        ),
        clip_denoised=bool(diffusion.get("clip_denoised", True)),
        noise_fn=lambda i, x: torch.randn(x.shape, generator=generator, device=device),
        progress=progress,
    )
    net.train(was_training)
    return images


# --------------------------------------------------------------------------- files


def export_denoiser(module: DenoiserModule, path: str | os.PathLike) -> Path:
    """Write the EMA weights with everything needed to rebuild them (atomic)."""
    payload = {
        "format": EXPORT_FORMAT,
        "flags": dict(module.flags),
        "diffusion": {k: module.hparams["diffusion"][k] for k in DIFFUSION_KEYS},
        "trained_steps": int(module.global_step),
        "state_dict": {k: v.detach().cpu() for k, v in module.ema.state_dict().items()},
    }
    return atomic_torch_save(payload, path)


def load_denoiser(
    path: str | os.PathLike,
    *,
    flags: Mapping[str, Any] | None = None,
    what: str = "denoiser",
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a denoiser: from a calguide export (flags inside) or an ADM state dict + ``flags``.

    Returns the network (eval mode) and the export's metadata (empty for bare state dicts).
    """
    raw = read_weights_file(path, what=what)
    if isinstance(raw, dict) and raw.get("format") == EXPORT_FORMAT:
        meta = {k: v for k, v in raw.items() if k != "state_dict"}
        net = create_unet(**raw["flags"])
        load_weights(net, raw["state_dict"], source=str(path))
        return net.eval(), meta
    if flags is None:
        raise CheckpointError(
            f"{what}: {path} is a bare state dict; its ADM flags must come from the config "
            "(denoiser.flags)"
        )
    state_dict = extract_state_dict(raw, what=what, source=str(path))
    net = create_unet(**flags)
    load_weights(net, state_dict, source=str(path))
    if flags.get("use_fp16", False):
        net.convert_to_fp16()
    return net.eval(), {"flags": dict(flags)}
