"""The denoiser training job's callbacks: export the EMA weights, draw an unguided grid."""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only

from calguide.io import log_image
from calguide.modules.denoiser import DenoiserModule, export_denoiser
from calguide.samples.grid import save_image_grid


class ExportDenoiser(L.Callback):
    """At the end of fit, write the EMA weights with their flags (see ``export_denoiser``)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module: DenoiserModule) -> None:
        export_denoiser(pl_module, self.path)
        print(f"calguide: denoiser exported to {self.path} ({pl_module.global_step} steps)")


class DenoiserSampleGrid(L.Callback):
    """At the end of fit, draw an unguided grid with the EMA weights: one row per class."""

    def __init__(
        self, path: str | os.PathLike, per_class: int, respacing: str, seed: int = 0
    ) -> None:
        self.path = Path(path)
        self.per_class = per_class
        self.respacing = respacing
        self.seed = seed

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module: DenoiserModule) -> None:
        if self.per_class <= 0:
            return
        num_classes = int(pl_module.flags.get("num_classes") or 1)
        labels = torch.arange(num_classes).repeat_interleave(self.per_class)
        generator = torch.Generator(device=pl_module.device).manual_seed(self.seed)
        images = pl_module.sample(
            labels, respacing=self.respacing, generator=generator, progress=True
        )
        save_image_grid(images.cpu(), self.path, ncols=self.per_class, upscale=4)
        log_image(trainer, "samples/unguided", self.path, f"{trainer.global_step} steps")
        print(f"calguide: sample grid written to {self.path}")
