"""``calguide-train``'s spec: the denoiser, its chain, the optimiser and the closing sample grid."""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import DictConfig

from calguide.config.base import RunSpec, at_least, in_range, run_fields, section
from calguide.config.shared import DataConfig, DenoiserConfig, DiffusionConfig
from calguide.errors import ConfigError


@dataclass
class OptimConfig:
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 200
    ema_decay: float = 0.999
    grad_clip: float = 1.0

    def __post_init__(self) -> None:
        in_range("optim.lr", self.lr, 1e-12, 10.0)
        at_least("optim.weight_decay", self.weight_decay, 0.0)
        at_least("optim.warmup_steps", self.warmup_steps, 0)
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
    optim: OptimConfig
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
            optim=section(cfg, "optim", OptimConfig),
            sample_grid=section(cfg, "sample_grid", SampleGridConfig),
            out_dir=str(cfg.out_dir),
            resume=bool(cfg.get("resume", True)),
        )
