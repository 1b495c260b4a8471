"""``calguide-train``'s spec: the denoiser, its chain, the optimiser and the closing sample grid."""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import DictConfig

from calguide.config.base import RunSpec, at_least, in_range, run_fields, section
from calguide.config.shared import DataConfig, DenoiserConfig, DiffusionConfig, OptimConfig
from calguide.errors import ConfigError


@dataclass
class DenoiserOptimConfig(OptimConfig):
    """The shared optimiser plus the denoiser's EMA and gradient clipping."""

    ema_decay: float = 0.999
    grad_clip: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        in_range("optim.ema_decay", self.ema_decay, 0.0, 1.0, high_open=True)
        at_least("optim.grad_clip", self.grad_clip, 0.0)


@dataclass
class SampleGridConfig:
    per_class: int = 10
    respacing: str = "100"
    seed: int = 0

    def __post_init__(self) -> None:
        in_range("sample_grid.per_class", self.per_class, 0, 64)


@dataclass(frozen=True, kw_only=True)
class TrainSpec(RunSpec):
    """A checked ``calguide-train`` config; ``out_dir`` holds checkpoints, export and grid."""

    data: DataConfig
    denoiser: DenoiserConfig
    diffusion: DiffusionConfig
    optim: DenoiserOptimConfig
    sample_grid: SampleGridConfig
    out_dir: str
    resume: bool = True

    @classmethod
    def from_config(cls, cfg: DictConfig) -> TrainSpec:
        if not cfg.get("out_dir"):
            raise ConfigError("out_dir: the training run's folder is required")
        return cls(
            **run_fields(cfg),
            data=section(cfg, "data", DataConfig),
            denoiser=section(cfg, "denoiser", DenoiserConfig),
            diffusion=section(cfg, "diffusion", DiffusionConfig),
            optim=section(cfg, "optim", DenoiserOptimConfig),
            sample_grid=section(cfg, "sample_grid", SampleGridConfig),
            out_dir=str(cfg.out_dir),
            resume=bool(cfg.get("resume", True)),
        )
