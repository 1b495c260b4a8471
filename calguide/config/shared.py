"""Schemas of the config groups several commands share: data, denoiser, diffusion, classifier,
metrics. Choice lists come from the code that owns them (registries, layer-1 modules)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from calguide.config.base import at_least, choice, in_range
from calguide.diffusion.samplers import build_sampler, sampler_names
from calguide.diffusion.schedules import SCHEDULES, beta_schedule, space_timesteps
from calguide.errors import ConfigError
from calguide.metrics.features import EXTRACTOR_KINDS
from calguide.metrics.reference import REFERENCE_SPLITS
from calguide.metrics.registry import BUILTIN_METRICS, metric_names
from calguide.nets.classifiers import ARCHITECTURES, NORMALIZATIONS


@dataclass
class DataConfig:
    name: str
    loader: str
    image_size: int
    channels: int
    num_classes: int
    batch_size: int = 64
    num_workers: int = 0
    heldout_fraction: float = 0.2
    split_seed: int = 0
    root: str | None = None
    path: str | None = None
    download: bool = False

    def __post_init__(self) -> None:
        from calguide.data import dataset_names

        choice("data.loader", self.loader, dataset_names())
        at_least("data.image_size", self.image_size, 8)
        choice("data.channels", self.channels, (1, 3))
        at_least("data.num_classes", self.num_classes, 1)
        at_least("data.batch_size", self.batch_size, 1)
        at_least("data.num_workers", self.num_workers, 0)
        in_range("data.heldout_fraction", self.heldout_fraction, 0.0, 1.0, high_open=True)


@dataclass
class DiffusionConfig:
    """The chain (``steps``, ``schedule``, ``respacing``) and how it is walked (``sampler`` with
    its own knobs ``sampler_params``; ``clip_denoised``: x̂₀ clipped to [-1, 1] each step)."""

    steps: int = 1000
    schedule: str = "linear"
    respacing: str = ""
    sampler: str = "ddpm"
    sampler_params: dict[str, Any] = field(default_factory=dict)
    clip_denoised: bool = True
    sigma_small: bool = False

    def __post_init__(self) -> None:
        at_least("diffusion.steps", self.steps, 1)
        choice("diffusion.schedule", self.schedule, SCHEDULES)
        choice("diffusion.sampler", self.sampler, sampler_names())
        try:
            space_timesteps(self.steps, self.respacing, self.base_alphas_cumprod())
            build_sampler(self.sampler, **self.sampler_params)  # its knobs, checked by the entry
        except (ValueError, TypeError) as err:
            raise ConfigError(str(err)) from None
        if self.sampler_params.get("dynamic_threshold") is not None and not self.clip_denoised:
            raise ConfigError(
                "diffusion.sampler_params.dynamic_threshold: dynamic thresholding is a clip of "
                "x̂₀; it needs diffusion.clip_denoised=true"
            )

    def base_alphas_cumprod(self) -> torch.Tensor:
        return torch.cumprod(1.0 - beta_schedule(self.schedule, self.steps), dim=0)


@dataclass
class DenoiserConfig:
    name: str
    flags: dict[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None

    def __post_init__(self) -> None:
        for required in ("image_size", "num_channels", "num_res_blocks"):
            if required not in self.flags:
                raise ConfigError(f"denoiser.flags.{required} is missing (an ADM model flag)")


@dataclass
class ClassifierConfig:
    name: str
    arch: str
    params: dict[str, Any] = field(default_factory=dict)
    normalize: str = "none"
    input_size: int | None = None
    softplus_beta: float | None = None
    checkpoint: str | None = None
    # Which fine-tuning run a calibrated classifier comes from (its checkpoint names it): the
    # independent trainings a claim about the fine-tuning method is judged over.
    finetune_seed: int | None = None

    def __post_init__(self) -> None:
        choice("classifier.arch", self.arch, tuple(ARCHITECTURES))
        choice("classifier.normalize", self.normalize, NORMALIZATIONS)
        if self.input_size is not None:
            at_least("classifier.input_size", self.input_size, 8)
        if self.softplus_beta is not None and self.softplus_beta <= 0:
            raise ConfigError(f"classifier.softplus_beta={self.softplus_beta!r}: must be > 0")


@dataclass
class OptimConfig:
    """AdamW after a linear warm-up: what training and calibration share (``optim``)."""

    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 200

    def __post_init__(self) -> None:
        in_range("optim.lr", self.lr, 1e-12, 10.0)
        at_least("optim.weight_decay", self.weight_decay, 0.0)
        at_least("optim.warmup_steps", self.warmup_steps, 0)


@dataclass
class MetricsConfig:
    kind: str = "none"
    evaluator: str | None = None
    reference: str = "heldout"
    compute: list[str] = field(default_factory=lambda: list(BUILTIN_METRICS))
    cache_dir: str | None = None
    k: int = 3
    max_pr_samples: int | None = 50_000
    batch_size: int = 256
    inception_weights: str | None = None
    download: bool = False
    keep_features: bool = True

    def __post_init__(self) -> None:
        choice("metrics.kind", self.kind, EXTRACTOR_KINDS)
        if self.kind == "none":
            return
        if not self.compute:
            raise ConfigError("metrics.compute: at least one metric is required")
        for name in self.compute:
            choice("metrics.compute[]", name, metric_names())
        if len(set(self.compute)) != len(self.compute):
            raise ConfigError(f"metrics.compute={list(self.compute)}: a metric is listed twice")
        in_range("metrics.k", self.k, 1, 100)
        at_least("metrics.batch_size", self.batch_size, 1)
        if self.max_pr_samples is not None:
            at_least("metrics.max_pr_samples", self.max_pr_samples, self.k + 1)
        if self.reference not in REFERENCE_SPLITS and not self.reference.endswith(".npz"):
            raise ConfigError(
                f"metrics.reference={self.reference!r}: must be heldout, train or a .npz path"
            )
        if self.kind == "domain" and not self.evaluator:
            raise ConfigError("metrics.evaluator: metrics=domain needs an evaluation classifier")
