"""``calguide-sample``'s spec: the shared sections, guidance and the sampling run's own knobs."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig

from calguide.config.base import RunSpec, at_least, choice, resolved, run_fields, section
from calguide.config.shared import (
    ClassifierConfig,
    DataConfig,
    DenoiserConfig,
    DiffusionConfig,
    MetricsConfig,
)
from calguide.errors import ConfigError
from calguide.samples.labels import LABEL_PROTOCOLS
from calguide.samples.noise import NOISE_MODES
from calguide.samples.noise import PRECISIONS as SAMPLING_PRECISIONS


@dataclass
class GuidanceConfig:
    """A strategy (``name`` + its ``params``), the scale s and its ``schedule``, the classifier's
    extra temperature τ_c and whether x̂₀-mode gradients go back through the denoiser."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)
    scale: float = 1.0
    schedule: str = "constant"
    schedule_params: dict[str, Any] = field(default_factory=dict)
    temperature: float = 1.0
    through_denoiser: bool = False

    def __post_init__(self) -> None:
        from calguide.guidance import SCHEDULES, build_schedule, build_strategy, strategy_names

        choice("guidance.name", self.name, list(strategy_names()))
        at_least("guidance.scale", self.scale, 0.0)
        choice("guidance.schedule", self.schedule, list(SCHEDULES))
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ConfigError(f"guidance.temperature={self.temperature!r}: must be > 0")
        try:  # the registries check their own knobs; the assembly builds the objects
            build_strategy(self.name, **self.params)
            build_schedule(self.schedule, self.scale, **self.schedule_params)
        except (ValueError, TypeError) as err:
            raise ConfigError(f"guidance: {err}") from None

    @property
    def active(self) -> bool:
        """Whether the strategy guides (``none`` does not, and reads no classifier)."""
        from calguide.guidance import is_active

        return is_active(self.name)


@dataclass
class SamplingConfig:
    num_samples: int = 100
    batch_size: int = 50
    labels: str = "balanced"
    fixed_class: int = 0
    precision: str = "32"
    snapshot_timesteps: list[int] = field(default_factory=list)
    snapshot_count: int = 0
    progress: bool = True
    figures: bool = True
    out_dir: str | None = None
    lock_wait_s: float = 3600.0
    noise: str = "per_sample"
    channels_last: bool = False
    compile: bool = False
    fused_attention: bool = False

    def __post_init__(self) -> None:
        at_least("sampling.num_samples", self.num_samples, 1)
        choice("sampling.noise", self.noise, NOISE_MODES)
        at_least("sampling.batch_size", self.batch_size, 1)
        choice("sampling.labels", self.labels, LABEL_PROTOCOLS)
        at_least("sampling.fixed_class", self.fixed_class, 0)
        choice("sampling.precision", self.precision, tuple(SAMPLING_PRECISIONS))
        at_least("sampling.snapshot_count", self.snapshot_count, 0)
        at_least("sampling.lock_wait_s", self.lock_wait_s, 0.0)


@dataclass(frozen=True, kw_only=True)
class SampleSpec(RunSpec):
    """A checked ``calguide-sample`` config: what the sampling job and the assembly read.

    ``experiment`` is the table and row a run belongs to (``conf/experiment``, ``conf/row``),
    with whatever else the experiment file records (sweeps, claims, verdict settings).
    """

    data: DataConfig
    denoiser: DenoiserConfig
    diffusion: DiffusionConfig
    classifier: ClassifierConfig
    guidance: GuidanceConfig
    sampling: SamplingConfig
    metrics: MetricsConfig
    experiment: dict[str, Any] = field(default_factory=dict)

    @property
    def guided(self) -> bool:
        """Whether guidance is active (so the classifier is read and used)."""
        return self.guidance.active

    @classmethod
    def from_config(cls, cfg: DictConfig) -> SampleSpec:
        return cls(
            **run_fields(cfg),
            data=section(cfg, "data", DataConfig),
            denoiser=section(cfg, "denoiser", DenoiserConfig),
            diffusion=section(cfg, "diffusion", DiffusionConfig),
            classifier=section(cfg, "classifier", ClassifierConfig),
            guidance=section(cfg, "guidance", GuidanceConfig),
            sampling=section(cfg, "sampling", SamplingConfig),
            metrics=section(cfg, "metrics", MetricsConfig),
            experiment=resolved(cfg, "experiment") or {},
        )
