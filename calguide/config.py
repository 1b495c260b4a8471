"""Structured-config schemas and the checks that turn bad values into one-line errors.

Each schema is a dataclass whose fields mirror a config group under ``conf/``. Types are checked
by OmegaConf's merge, ranges and choices by ``__post_init__``; either way the message names the
full key and what was allowed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from calguide.diffusion.sampling import SAMPLERS
from calguide.diffusion.schedules import SCHEDULES, space_timesteps


class ConfigError(ValueError):
    """A config value is wrong; the message is one line that names the key."""


def conf_dir() -> Path:
    """The config tree: ``conf/`` of a checkout, or ``calguide/conf`` inside an installed wheel."""
    return Path(str(resources.files("calguide.conf")))


def _choice(key: str, value: Any, options: tuple | list) -> None:
    if value not in options:
        raise ConfigError(f"{key}={value!r}: must be one of {list(options)}")


def _at_least(key: str, value: float, low: float) -> None:
    if value < low:
        raise ConfigError(f"{key}={value!r}: must be >= {low}")


def _in_range(key: str, value: float, low: float, high: float, *, high_open: bool = False) -> None:
    bad = value < low or (value >= high if high_open else value > high)
    if bad:
        bracket = ")" if high_open else "]"
        raise ConfigError(f"{key}={value!r}: must be in [{low}, {high}{bracket}")


LOADERS = ("digits", "cifar10", "image_folder", "npz")


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
        _choice("data.loader", self.loader, LOADERS)
        _at_least("data.image_size", self.image_size, 8)
        _choice("data.channels", self.channels, (1, 3))
        _at_least("data.num_classes", self.num_classes, 1)
        _at_least("data.batch_size", self.batch_size, 1)
        _at_least("data.num_workers", self.num_workers, 0)
        _in_range("data.heldout_fraction", self.heldout_fraction, 0.0, 1.0, high_open=True)


@dataclass
class DiffusionConfig:
    steps: int = 1000
    schedule: str = "linear"
    respacing: str = ""
    sampler: str = "ddpm"
    eta: float = 0.0
    clip_denoised: bool = True
    sigma_small: bool = False

    def __post_init__(self) -> None:
        _at_least("diffusion.steps", self.steps, 1)
        _choice("diffusion.schedule", self.schedule, SCHEDULES)
        _choice("diffusion.sampler", self.sampler, SAMPLERS)
        _in_range("diffusion.eta", self.eta, 0.0, 1.0)
        try:
            space_timesteps(self.steps, self.respacing)
        except ValueError as err:
            raise ConfigError(str(err)) from None


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
class OptimConfig:
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 200
    ema_decay: float = 0.999
    grad_clip: float = 1.0

    def __post_init__(self) -> None:
        _in_range("optim.lr", self.lr, 1e-12, 10.0)
        _at_least("optim.weight_decay", self.weight_decay, 0.0)
        _at_least("optim.warmup_steps", self.warmup_steps, 0)
        _in_range("optim.ema_decay", self.ema_decay, 0.0, 1.0, high_open=True)
        _at_least("optim.grad_clip", self.grad_clip, 0.0)


@dataclass
class SampleGridConfig:
    per_class: int = 10
    respacing: str = "100"
    seed: int = 0

    def __post_init__(self) -> None:
        _in_range("sample_grid.per_class", self.per_class, 0, 64)


ACCELERATORS = ("cpu", "gpu", "cuda", "mps", "tpu", "auto")
PRECISIONS = (
    "32-true",
    "32",
    32,
    "16-mixed",
    "bf16-mixed",
    "bf16-true",
    "16-true",
    "64-true",
    "64",
    64,
)


def check_trainer(cfg: DictConfig) -> None:
    """The Trainer group passes through to Lightning; catch the common mistakes here."""
    trainer = cfg.get("trainer")
    if trainer is None:
        return
    _choice("trainer.accelerator", trainer.get("accelerator", "auto"), ACCELERATORS)
    _choice("trainer.precision", trainer.get("precision", "32-true"), PRECISIONS)
    devices = trainer.get("devices", 1)
    if isinstance(devices, int) and devices < 1 and devices != -1:
        raise ConfigError(f"trainer.devices={devices!r}: must be >= 1 or -1 (all)")
    max_steps = trainer.get("max_steps", -1)
    if max_steps == 0 or max_steps < -1:
        raise ConfigError(f"trainer.max_steps={max_steps!r}: must be >= 1 (or -1 for epochs)")


SCHEMAS: dict[str, type] = {
    "data": DataConfig,
    "diffusion": DiffusionConfig,
    "denoiser": DenoiserConfig,
    "optim": OptimConfig,
    "sample_grid": SampleGridConfig,
}


def _one_line(err: OmegaConfBaseException, key: str) -> str:
    full_key = getattr(err, "full_key", None) or key
    message = str(err).splitlines()[0] if str(err) else type(err).__name__
    if full_key and not full_key.startswith(key):
        full_key = f"{key}.{full_key}"
    return f"{full_key}: {message}"


def validated(cfg: DictConfig, key: str, schema: type | None = None) -> Any:
    """The section ``key`` as a checked schema instance (raises :class:`ConfigError`)."""
    schema = schema or SCHEMAS[key]
    if key not in cfg:
        raise ConfigError(f"config has no '{key}' section")
    try:
        section = OmegaConf.to_container(cfg[key], resolve=True)
        merged = OmegaConf.merge(OmegaConf.structured(schema), section)
        return OmegaConf.to_object(merged)
    except ConfigError:
        raise
    except OmegaConfBaseException as err:
        raise ConfigError(_one_line(err, key)) from None


def validate(cfg: DictConfig) -> None:
    """Check every known section present in ``cfg``."""
    for key, schema in SCHEMAS.items():
        if key in cfg:
            validated(cfg, key, schema)
    check_trainer(cfg)
