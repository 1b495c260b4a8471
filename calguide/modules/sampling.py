"""SamplingModule: a denoiser, a diffusion chain, a sampler and optional guidance, as predict_step.

The module knows nothing of strategies (the guidance does), of integrators (the sampler does)
nor of files (the writer does): one batch of (global index, label) in, uint8 images (or raw
float samples for non-image data such as the mixture lab) and per-timestep diagnostics out.
It owns every call of the denoiser, the x̂₀ that ``through_denoiser`` guidance differentiates
included, so autocast, channels_last and compile apply to all of them; the batch's labels
reach the guidance as an argument of :meth:`ClassifierGuidance.bind`.

Fast paths are switches (``sampling.*`` in the config), each off by default: autocast of the
denoiser and classifier (bf16/fp16, CUDA only), channels_last memory format, and
``torch.compile`` of the denoiser.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from calguide.diffusion import (
    GaussianDiffusion,
    Sampler,
    StepOutput,
    build_sampler,
    describe_chain,
    sample_loop,
)
from calguide.guidance.hook import ClassifierGuidance
from calguide.nets.unet import use_fused_attention
from calguide.samples.grid import to_uint8
from calguide.samples.noise import NOISE_MODES, PRECISIONS, BatchNoise, PerSampleNoise


class SamplingModule(L.LightningModule):
    def __init__(
        self,
        denoiser: nn.Module,
        diffusion: GaussianDiffusion,
        *,
        sample_shape: tuple[int, ...],
        class_cond: bool,
        guidance: ClassifierGuidance | None = None,
        sampler: Sampler | str = "ddpm",
        clip_denoised: bool = True,
        seed: int = 0,
        precision: str = "32",
        snapshot_timesteps: tuple[int, ...] = (),
        snapshot_count: int = 0,
        progress: bool = True,
        as_images: bool = True,
        noise: str = "per_sample",
        channels_last: bool = False,
        compile: bool = False,
        fused_attention: bool = False,
    ) -> None:
        super().__init__()
        if precision not in PRECISIONS:
            raise ValueError(f"sampling.precision={precision!r}: must be one of {list(PRECISIONS)}")
        if noise not in NOISE_MODES:
            raise ValueError(f"sampling.noise={noise!r}: must be one of {list(NOISE_MODES)}")
        if as_images and len(sample_shape) != 3:
            raise ValueError(f"image samples need a (C, H, W) shape, got {tuple(sample_shape)}")
        if channels_last and len(sample_shape) != 3:
            raise ValueError("sampling.channels_last=true needs image samples (C, H, W)")
        if isinstance(sampler, str):
            sampler = build_sampler(sampler)
        self.denoiser = denoiser.eval().requires_grad_(False)
        self.diffusion = diffusion
        self.guidance = guidance
        self.sample_shape = tuple(int(s) for s in sample_shape)
        self.as_images = as_images
        self.noise = noise
        self.channels_last = channels_last
        if channels_last:
            self.denoiser.to(memory_format=torch.channels_last)
            if self.guidance is not None:
                self.guidance.to(memory_format=torch.channels_last)
        self.fused_attention = False
        if fused_attention:  # ADM's attention blocks through scaled_dot_product_attention
            found = use_fused_attention(self.denoiser)
            if isinstance(self.guidance, nn.Module):
                found += use_fused_attention(self.guidance)
            self.fused_attention = found > 0
        # Compiled lazily on the first call; kept out of the module tree (same weights).
        self._forward = [torch.compile(self.denoiser) if compile else self.denoiser]
        if compile and self.guidance is not None:  # the classifier's forward + backward too
            self.guidance.classifier.compile_net()
        self.class_cond = class_cond
        self.sampler = sampler
        self.clip_denoised = clip_denoised
        self.seed = int(seed)
        self.precision = precision
        self.snapshot_timesteps = {int(t) for t in snapshot_timesteps}
        self.snapshot_count = int(snapshot_count)
        self.progress = progress
        # Denoiser rows evaluated and samples drawn by this process: what ran, counted.
        self.evaluated_rows = 0
        self.drawn_samples = 0

    @property
    def evaluations_per_sample(self) -> float | None:
        """Network evaluations per sample counted in this process (``None`` before any)."""
        return self.evaluated_rows / self.drawn_samples if self.drawn_samples else None

    def describe(self) -> dict[str, Any]:
        """What this module runs, read off the built objects: the chain and its sampler, the
        network evaluations per sample (one more per step when guidance differentiates through
        the denoiser), x̂₀ clipping, precision and fast paths, the guidance."""
        described = describe_chain(self.diffusion, self.sampler)
        if self.guidance is not None and self.guidance.needs_denoiser:
            described["network_evaluations"] *= 2
        return {
            **described,
            "clip_denoised": bool(self.clip_denoised),
            "noise": self.noise,
            "compute": {
                "precision": self.precision,
                "channels_last": bool(self.channels_last),
                "compile": self._forward[0] is not self.denoiser,
                "fused_attention": self.fused_attention,
            },
            "guidance": self.guidance.describe() if self.guidance is not None else None,
        }

    def autocast(self):
        dtype = PRECISIONS[self.precision]
        if dtype is None or self.device.type != "cuda":
            return nullcontext()
        return torch.autocast("cuda", dtype=dtype)

    def model_fn(self, labels: Tensor):
        cond = labels if self.class_cond else None

        forward = self._forward[0]
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format

        def call(x: Tensor, t: Tensor) -> Tensor:
            self.evaluated_rows += int(x.shape[0])
            with self.autocast():
                return forward(x.contiguous(memory_format=memory_format), t, cond).float()

        return call

    def denoise_fn(self, labels: Tensor):
        """``(x_t, t_model) -> x̂₀`` through this module's denoiser call, with gradients (for
        ``through_denoiser`` guidance; not clipped: clipping zeroes saturated pixels' gradient)."""
        model = self.model_fn(labels)

        def x0(x_t: Tensor, t_model: Tensor) -> Tensor:
            return self.diffusion.x0_at_model_timesteps(model(x_t, t_model), x_t, t_model)

        return x0

    def bound_guidance(self, labels: Tensor):
        """This batch's guidance (``None`` when unguided)."""
        if self.guidance is None:
            return None
        return self.guidance.bind(
            labels,
            denoise_fn=self.denoise_fn(labels) if self.guidance.needs_denoiser else None,
            amp_dtype=PRECISIONS[self.precision],
        )

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int = 0) -> dict[str, Any]:
        indices, labels = batch["indices"], batch["labels"].to(self.device)
        noise_cls = PerSampleNoise if self.noise == "per_sample" else BatchNoise
        noise = noise_cls(self.seed, indices.tolist(), self.sample_shape, self.device)
        x_T = noise.draw()
        guidance = self.bound_guidance(labels)
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
            guidance=guidance,
            noise_fn=noise,
            clip_denoised=self.clip_denoised,
            progress=self.progress,
            callback=observe if self.snapshot_timesteps and self.snapshot_count else None,
        )
        self.drawn_samples += int(x_T.shape[0])
        diagnostics = guidance.diagnostics.per_timestep() if guidance is not None else {}
        return {
            "indices": indices.cpu(),
            "labels": labels.cpu(),
            ("images" if self.as_images else "samples"): (
                to_uint8(images) if self.as_images else images.float()
            ).cpu(),
            "diagnostics": diagnostics,
            "snapshots": snapshots,
            "snapshot_indices": indices[keep].cpu(),
        }
