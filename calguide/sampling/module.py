"""SamplingModule: a denoiser, a diffusion chain and an optional guidance hook, as predict_step.

The module knows nothing of strategies (the hook does) nor of files (the writer does): one
batch of (global index, label) in, uint8 images and per-timestep diagnostics out.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from calguide.diffusion import GaussianDiffusion, StepOutput, sample_loop
from calguide.guidance.hook import ClassifierGuidance
from calguide.sampling.grid import to_uint8
from calguide.sampling.noise import PerSampleNoise

PRECISIONS = {"32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class SamplingModule(L.LightningModule):
    def __init__(
        self,
        denoiser: nn.Module,
        diffusion: GaussianDiffusion,
        *,
        image_shape: tuple[int, int, int],
        class_cond: bool,
        guidance: ClassifierGuidance | None = None,
        sampler: str = "ddpm",
        eta: float = 0.0,
        clip_denoised: bool = True,
        seed: int = 0,
        precision: str = "32",
        snapshot_timesteps: tuple[int, ...] = (),
        snapshot_count: int = 0,
        progress: bool = True,
    ) -> None:
        super().__init__()
        if precision not in PRECISIONS:
            raise ValueError(f"sampling.precision={precision!r}: must be one of {list(PRECISIONS)}")
        self.denoiser = denoiser.eval().requires_grad_(False)
        self.guidance_classifier = guidance.classifier if guidance is not None else None
        self.diffusion = diffusion
        self.guidance = guidance
        self.image_shape = tuple(int(s) for s in image_shape)
        self.class_cond = class_cond
        self.sampler = sampler
        self.eta = eta
        self.clip_denoised = clip_denoised
        self.seed = int(seed)
        self.precision = precision
        self.snapshot_timesteps = {int(t) for t in snapshot_timesteps}
        self.snapshot_count = int(snapshot_count)
        self.progress = progress

    def autocast(self):
        dtype = PRECISIONS[self.precision]
        if dtype is None or self.device.type != "cuda":
            return nullcontext()
        return torch.autocast("cuda", dtype=dtype)

    def model_fn(self, labels: Tensor):
        cond = labels if self.class_cond else None

        def call(x: Tensor, t: Tensor) -> Tensor:
            with self.autocast():
                return self.denoiser(x, t, cond).float()

        return call

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int = 0) -> dict[str, Any]:
        indices, labels = batch["indices"], batch["labels"].to(self.device)
        noise = PerSampleNoise(self.seed, indices.tolist(), self.image_shape, self.device)
        x_T = noise.draw()
        if self.guidance is not None:
            self.guidance.bind(labels)
            self.guidance.diagnostics.clear()
        snapshots: dict[int, dict[str, Tensor]] = {}
        keep = indices < self.snapshot_count

        def observe(i: int, x_t: Tensor, step: StepOutput) -> None:
            t_model = int(self.diffusion.timestep_map[i])
            if keep.any() and t_model in self.snapshot_timesteps:
                grad = step.guidance if step.guidance is not None else torch.zeros_like(x_t)
                snapshots[t_model] = {
                    "pred_x0": step.pred_x0[keep.to(x_t.device)].detach().cpu(),
                    "grad": grad[keep.to(x_t.device)].detach().cpu(),
                }

        images = sample_loop(
            self.diffusion,
            self.model_fn(labels),
            x_T,
            sampler=self.sampler,
            eta=self.eta,
            guidance=self.guidance,
            noise_fn=noise,
            clip_denoised=self.clip_denoised,
            progress=self.progress,
            callback=observe if self.snapshot_timesteps and self.snapshot_count else None,
        )
        diagnostics = self.guidance.diagnostics.per_timestep() if self.guidance else {}
        return {
            "indices": indices.cpu(),
            "labels": labels.cpu(),
            "images": to_uint8(images).cpu(),
            "diagnostics": diagnostics,
            "snapshots": snapshots,
            "snapshot_indices": indices[keep].cpu(),
        }
