"""``calguide-lab``'s spec: the mixture, the guidance classifiers, and the runs, each a guidance
section taken from its ``conf/guidance/`` option with the run's own keys on top."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from calguide.config.base import RunSpec, at_least, choice, in_range, run_fields, section
from calguide.config.compose import guidance_option
from calguide.config.sample import GuidanceConfig
from calguide.config.shared import DiffusionConfig
from calguide.errors import ConfigError

LAB_CLASSIFIER_KINDS = ("exact", "mlp")


@dataclass
class LabMLPConfig:
    width: int = 64
    depth: int = 3
    train_size: int = 2000
    steps: int = 800
    batch_size: int = 256
    lr: float = 3e-3
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        for key in ("width", "depth", "train_size", "steps", "batch_size"):
            at_least(f"lab.mlp.{key}", getattr(self, key), 1)
        if self.batch_size > self.train_size:
            raise ConfigError("lab.mlp.batch_size must be <= lab.mlp.train_size")
        in_range("lab.mlp.lr", self.lr, 0.0, 1.0, high_open=True)


@dataclass
class LabConfig:
    mixture: dict[str, Any] = field(default_factory=dict)
    classifiers: dict[str, Any] = field(default_factory=dict)
    runs: list[Any] = field(default_factory=list)
    mlp: LabMLPConfig = field(default_factory=LabMLPConfig)
    num_samples: int = 3000
    class_cond: bool = False
    calibration_points: int = 20000
    threads: int = 1

    def __post_init__(self) -> None:
        at_least("lab.num_samples", self.num_samples, 4)
        at_least("lab.threads", self.threads, 1)
        at_least("lab.calibration_points", self.calibration_points, 10)
        try:
            from calguide.data.gmm import mixture_from_config

            mixture = mixture_from_config(self.mixture.get("components") or [])
        except (ValueError, TypeError, RuntimeError) as err:
            raise ConfigError(
                f"lab.{err}" if str(err).startswith("mixture") else f"lab.mixture: {err}"
            ) from None
        if self.num_samples < 2 * mixture.num_classes:
            raise ConfigError(f"lab.num_samples must be >= 2 per class ({2 * mixture.num_classes})")
        for name, spec in self.classifiers.items():
            kind = (spec or {}).get("kind")
            choice(f"lab.classifiers.{name}.kind", kind, LAB_CLASSIFIER_KINDS)
            temperature = float(spec.get("temperature", 1.0))
            if not (math.isfinite(temperature) and temperature > 0):
                raise ConfigError(f"lab.classifiers.{name}.temperature: must be > 0")
            unknown = sorted(set(spec) - {"kind", "temperature", "calibration_weight"})
            if unknown:
                raise ConfigError(
                    f"lab.classifiers.{name}: unknown key(s) {unknown}; allowed: kind, "
                    "temperature, calibration_weight"
                )
        if not self.runs:
            raise ConfigError("lab.runs: at least one run is required")


def guidance_config(name: str, **overrides: Any) -> GuidanceConfig:
    """The checked guidance section of ``guidance=<name>`` with ``overrides`` on top."""
    merged = OmegaConf.merge(OmegaConf.structured(GuidanceConfig), guidance_option(name), overrides)
    return OmegaConf.to_object(merged)  # type: ignore[return-value]


def lab_run_guidance(index: int, run: Any) -> GuidanceConfig:
    """One ``lab.runs`` entry as a checked guidance section: the strategy's own config group
    option with the run's keys (scale, params, schedule, ...) on top."""
    run = dict(run or {})
    name = run.pop("guidance", None)
    try:
        guidance_option(str(name or ""))
    except ConfigError as err:
        raise ConfigError(f"lab.runs[{index}].{err}") from None
    try:
        return guidance_config(str(name), **run)
    except ConfigError as err:
        raise ConfigError(f"lab.runs[{index}]: {err}") from None
    except OmegaConfBaseException as err:
        raise ConfigError(f"lab.runs[{index}]: {str(err).splitlines()[0]}") from None


@dataclass(frozen=True, kw_only=True)
class LabSpec(RunSpec):
    """A checked ``calguide-lab`` config; ``runs``: one guidance section per ``lab.runs`` entry."""

    diffusion: DiffusionConfig
    lab: LabConfig
    runs: tuple[GuidanceConfig, ...]

    @classmethod
    def from_config(cls, cfg: DictConfig) -> LabSpec:
        lab = section(cfg, "lab", LabConfig)
        diffusion = section(cfg, "diffusion", DiffusionConfig)
        if diffusion.clip_denoised:
            raise ConfigError(
                "diffusion.clip_denoised=true: the lab's mixture is not confined to [-1, 1] "
                "(its means reach 3), so clipping x̂₀ would distort every sample; add "
                "diffusion.clip_denoised=false"
            )
        runs = tuple(lab_run_guidance(i, run) for i, run in enumerate(lab.runs))
        return cls(**run_fields(cfg), diffusion=diffusion, lab=lab, runs=runs)
