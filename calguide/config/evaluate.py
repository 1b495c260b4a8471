"""``calguide-eval``'s spec: a sample file, the data it is compared with and the metrics."""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import DictConfig
from omegaconf.errors import MissingMandatoryValue

from calguide.config.base import RunSpec, run_fields, section
from calguide.config.shared import DataConfig, MetricsConfig
from calguide.errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class EvalSpec(RunSpec):
    """A checked ``calguide-eval`` config; ``output_dir`` None: beside the samples file."""

    data: DataConfig
    metrics: MetricsConfig
    samples: str
    output_dir: str | None = None

    @classmethod
    def from_config(cls, cfg: DictConfig) -> EvalSpec:
        try:
            samples = cfg.samples
        except MissingMandatoryValue:
            raise ConfigError("samples: required (samples=/path/samples.npz)") from None
        output_dir = cfg.get("output_dir")
        return cls(
            **run_fields(cfg),
            data=section(cfg, "data", DataConfig),
            metrics=section(cfg, "metrics", MetricsConfig),
            samples=str(samples),
            output_dir=None if output_dir is None else str(output_dir),
        )
