"""``calguide-calibrate``'s spec: the classifier, its inputs, the calibration loss, the
optimiser, the held-out evaluation, and where the calibrated classifier goes."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig

from calguide.calibration.inputs import INPUT_MODES
from calguide.config.base import RunSpec, at_least, choice, in_range, run_fields, section
from calguide.config.shared import ClassifierConfig, DataConfig, DiffusionConfig, OptimConfig
from calguide.errors import ConfigError


@dataclass
class CalibrationConfig:
    """How ``calguide-calibrate`` changes a classifier (``conf/calibration/``).

    ``method=gradient`` trains with CE + ``weight``·L_cal, where ``loss`` picks L_cal: ``ce``
    (none), ``smooth_ece`` (the paper's Huber-style smooth ECE; knobs ``form``, ``beta``,
    ``bins``) or ``kernel_smece`` (Błasiok–Nakkiran's smECE as a loss; knobs ``sigma``,
    ``sigma_min``). ``method=temperature`` fits a post-hoc τ and changes no weight.
    """

    name: str
    method: str = "gradient"
    loss: str = "ce"
    weight: float = 0.0
    form: str = "binned"
    beta: float = 1e-4
    bins: int = 15
    sigma: float | None = None
    sigma_min: float = 0.01

    def __post_init__(self) -> None:
        from calguide.calibration.losses import (
            CALIBRATION_LOSSES,
            CALIBRATION_METHODS,
            check_smooth_ece_knobs,
        )

        choice("calibration.method", self.method, CALIBRATION_METHODS)
        choice("calibration.loss", self.loss, CALIBRATION_LOSSES)
        if not (math.isfinite(self.weight) and self.weight >= 0):
            raise ConfigError(f"calibration.weight={self.weight!r}: must be a finite number >= 0")
        if self.loss == "ce" and self.weight > 0:
            raise ConfigError(
                f"calibration.weight={self.weight!r}: calibration.loss=ce has no calibration "
                "term (use smooth_ece or kernel_smece, or weight 0)"
            )
        try:
            check_smooth_ece_knobs(self.form, self.beta, self.bins)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        in_range("calibration.sigma_min", self.sigma_min, 1e-4, 0.5)
        if self.sigma is not None and not 0 < self.sigma <= 1:
            raise ConfigError(f"calibration.sigma={self.sigma!r}: must be in (0, 1] or null (σ*)")


@dataclass
class InputsConfig:
    mode: str = "x0"
    t_min: int = 0
    t_max: int = 999
    denoiser: str | None = None
    denoiser_flags: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        choice("inputs.mode", self.mode, INPUT_MODES)
        at_least("inputs.t_min", self.t_min, 0)
        at_least("inputs.t_max", self.t_max, self.t_min)


@dataclass
class EvaluationConfig:
    buckets: int = 10
    n_bins: int = 15
    seed: int = 0
    diagrams: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        in_range("evaluation.buckets", self.buckets, 1, 100)
        in_range("evaluation.n_bins", self.n_bins, 2, 100)
        for name in self.diagrams:
            choice("evaluation.diagrams[]", name, ("clean", "low", "mid", "high"))


@dataclass
class ClassifierOptimConfig(OptimConfig):
    """The shared optimiser with a fine-tune's defaults (a smaller rate, a short warm-up)."""

    lr: float = 2e-4
    warmup_steps: int = 20


@dataclass(frozen=True, kw_only=True)
class CalibrateSpec(RunSpec):
    """A checked ``calguide-calibrate`` config. ``init``: the starting weights (None: random);
    ``output``: the calibrated export; ``resume``: continue from ``<output>.ckpt.d``."""

    data: DataConfig
    classifier: ClassifierConfig
    calibration: CalibrationConfig
    diffusion: DiffusionConfig
    inputs: InputsConfig
    optim: ClassifierOptimConfig
    evaluation: EvaluationConfig
    output: str
    init: str | None = None
    resume: bool = False

    @classmethod
    def from_config(cls, cfg: DictConfig) -> CalibrateSpec:
        output = cfg.get("output")
        if not output:
            raise ConfigError("output: the calibrated classifier's path is required")
        init = cfg.get("init")
        return cls(
            **run_fields(cfg),
            data=section(cfg, "data", DataConfig),
            classifier=section(cfg, "classifier", ClassifierConfig),
            calibration=section(cfg, "calibration", CalibrationConfig),
            diffusion=section(cfg, "diffusion", DiffusionConfig),
            inputs=section(cfg, "inputs", InputsConfig),
            optim=section(cfg, "optim", ClassifierOptimConfig),
            evaluation=section(cfg, "evaluation", EvaluationConfig),
            output=str(output),
            init=None if init is None else str(init),
            resume=bool(cfg.get("resume", False)),
        )
