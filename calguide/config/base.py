"""What every command's spec shares: value checks that fail in one line, the run's own settings
(seed, paths, Trainer, loggers, the resolved config), and reading one section into its schema.

A schema is a dataclass whose fields mirror a config group under ``conf/``. Types are checked by
OmegaConf's merge, ranges and choices by ``__post_init__``; either way the message names the full
key and what was allowed. Schemas hold data only: the assembly builds objects from them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from calguide.errors import ConfigError


def choice(key: str, value: Any, options: tuple | list) -> None:
    if value not in options:
        raise ConfigError(f"{key}={value!r}: must be one of {list(options)}")


def at_least(key: str, value: float, low: float) -> None:
    if value < low:
        raise ConfigError(f"{key}={value!r}: must be >= {low}")


def in_range(key: str, value: float, low: float, high: float, *, high_open: bool = False) -> None:
    bad = value < low or (value >= high if high_open else value > high)
    if bad:
        bracket = ")" if high_open else "]"
        raise ConfigError(f"{key}={value!r}: must be in [{low}, {high}{bracket}")


RENAMED_KEYS: dict[str, str] = {
    "calibration.smece_weight": (
        "calibration.weight (λ), with calibration.loss one of ce, smooth_ece, kernel_smece"
    ),
    "diffusion.eta": "diffusion.sampler_params.eta (DDIM's η; diffusion=ddim sets it)",
    "diffusion.sampler_params.thresholding": (
        "diffusion.clip_denoised (the fixed clip) and diffusion.sampler_params.dynamic_threshold "
        "(a quantile: Imagen's dynamic thresholding in its place)"
    ),
    "diffusion.sampler_params.quantile": "diffusion.sampler_params.dynamic_threshold",
}
"""Config keys of earlier calguide versions -> what replaced them (strategy knobs under
``guidance.params`` come from :data:`calguide.guidance.strategies.RENAMED_PARAMS`)."""


def renamed_hint(full_key: str) -> str:
    """``"; <key> was renamed: use <new>"`` for a key an earlier calguide had, else ``""``."""
    from calguide.guidance.strategies import RENAMED_PARAMS

    new = RENAMED_KEYS.get(full_key)
    if new is None and full_key.startswith("guidance.params."):
        old = full_key.removeprefix("guidance.params.")
        new = f"guidance.params.{RENAMED_PARAMS[old]}" if old in RENAMED_PARAMS else None
    return f"; {full_key} was renamed: use {new}" if new else ""


def _one_line(err: OmegaConfBaseException, key: str) -> str:
    full_key = getattr(err, "full_key", None) or key
    message = str(err).splitlines()[0] if str(err) else type(err).__name__
    if full_key and not full_key.startswith(key):
        full_key = f"{key}.{full_key}"
    return f"{full_key}: {message}{renamed_hint(full_key)}"


def section(cfg: DictConfig, key: str, schema: type) -> Any:
    """The section ``key`` of ``cfg`` as a checked ``schema`` instance (or :class:`ConfigError`)."""
    if key not in cfg:
        raise ConfigError(f"config has no '{key}' section")
    try:
        resolved = OmegaConf.to_container(cfg[key], resolve=True)
        merged = OmegaConf.merge(OmegaConf.structured(schema), resolved)
        return OmegaConf.to_object(merged)
    except ConfigError:
        raise
    except OmegaConfBaseException as err:
        raise ConfigError(_one_line(err, key)) from None


def resolved(cfg: DictConfig, key: str) -> Any:
    """A plain (resolved) copy of ``cfg[key]``; ConfigError naming the key when it cannot be."""
    try:
        return OmegaConf.to_container(cfg[key], resolve=True) if key in cfg else None
    except OmegaConfBaseException as err:
        raise ConfigError(_one_line(err, key)) from None


def job_config(cfg: DictConfig) -> dict[str, Any]:
    """The run's own config, resolved, without Hydra's node: what runs record and log."""
    try:
        return OmegaConf.to_container(  # type: ignore[return-value]
            OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True
        )
    except OmegaConfBaseException as err:
        raise ConfigError(_one_line(err, "")) from None


@dataclass
class PathsConfig:
    """Where a run reads and writes (``conf/paths/``); ``output_dir`` is Hydra's run folder."""

    artifacts: str = "artifacts"
    log_dir: str = "logs"
    output_dir: str = "."
    data_dir: str | None = None
    bundled: str | None = None
    adm_dir: str | None = None
    torchvision_dir: str | None = None


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


def check_trainer(trainer: dict[str, Any]) -> None:
    """The Trainer group passes through to Lightning; catch the common mistakes here."""
    choice("trainer.accelerator", trainer.get("accelerator", "auto"), ACCELERATORS)
    choice("trainer.precision", trainer.get("precision", "32-true"), PRECISIONS)
    devices = trainer.get("devices", 1)
    if isinstance(devices, int) and devices < 1 and devices != -1:
        raise ConfigError(f"trainer.devices={devices!r}: must be >= 1 or -1 (all)")
    max_steps = trainer.get("max_steps", -1)
    if max_steps == 0 or max_steps < -1:
        raise ConfigError(f"trainer.max_steps={max_steps!r}: must be >= 1 (or -1 for epochs)")


@dataclass(frozen=True, kw_only=True)
class RunSpec:
    """What every command's checked spec carries besides its own sections.

    ``trainer`` and ``logger`` are passed to Lightning as they are (``_target_`` specs);
    ``config`` is the whole resolved job config: what a run records beside what it ran.
    """

    task: str
    seed: int = 0
    paths: PathsConfig = field(default_factory=PathsConfig)
    trainer: dict[str, Any] = field(default_factory=dict)
    logger: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)


def run_fields(cfg: DictConfig) -> dict[str, Any]:
    """The :class:`RunSpec` fields of ``cfg``, checked."""
    trainer = resolved(cfg, "trainer") or {}
    check_trainer(trainer)
    seed = cfg.get("seed", 0)
    if not isinstance(seed, int):
        raise ConfigError(f"seed={seed!r}: must be an integer")
    return {
        "task": str(cfg.get("task_name", "")),
        "seed": int(seed),
        "paths": section(cfg, "paths", PathsConfig) if "paths" in cfg else PathsConfig(),
        "trainer": trainer,
        "logger": resolved(cfg, "logger") or {},
        "config": job_config(cfg),
    }
