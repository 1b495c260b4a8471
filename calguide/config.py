"""Structured-config schemas and the checks that turn bad values into one-line errors.

Each schema is a dataclass whose fields mirror a config group under ``conf/``. Types are checked
by OmegaConf's merge, ranges and choices by ``__post_init__``; either way the message names the
full key and what was allowed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from calguide.calibration.inputs import INPUT_MODES
from calguide.diffusion.samplers import build_sampler, sampler_names
from calguide.diffusion.schedules import SCHEDULES, beta_schedule, space_timesteps
from calguide.errors import ConfigError
from calguide.metrics.features import EXTRACTOR_KINDS
from calguide.metrics.reference import REFERENCE_SPLITS
from calguide.metrics.registry import BUILTIN_METRICS, metric_names
from calguide.nets.classifiers import ARCHITECTURES, NORMALIZATIONS
from calguide.sampling.labels import LABEL_PROTOCOLS
from calguide.sampling.noise import NOISE_MODES
from calguide.sampling.noise import PRECISIONS as SAMPLING_PRECISIONS


def _register_resolvers() -> None:
    """``${calguide_bundled:}`` (the bundled models' folder) and
    ``${calguide_model:<trained path>,<bundled name>}`` (see :func:`calguide.bundled.model_file`)
    for the YAML files."""
    from calguide.bundled import bundled_dir, model_file

    if not OmegaConf.has_resolver("calguide_bundled"):
        OmegaConf.register_new_resolver("calguide_bundled", lambda: str(bundled_dir()))
    if not OmegaConf.has_resolver("calguide_model"):
        OmegaConf.register_new_resolver("calguide_model", model_file)


_register_resolvers()


def conf_dir() -> Path:
    """The config tree: ``conf/`` of a checkout, or ``calguide/conf`` inside an installed wheel.

    A checkout that is only on ``PYTHONPATH`` (not installed, as on a lent GPU machine) has no
    ``calguide.conf`` package; its ``conf/`` beside the package is the same tree.
    """
    try:
        return Path(str(resources.files("calguide.conf")))
    except ModuleNotFoundError:
        return Path(__file__).resolve().parents[1] / "conf"


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

        _choice("data.loader", self.loader, dataset_names())
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
    sampler_params: dict[str, Any] = field(default_factory=dict)
    clip_denoised: bool = True
    sigma_small: bool = False

    def __post_init__(self) -> None:
        _at_least("diffusion.steps", self.steps, 1)
        _choice("diffusion.schedule", self.schedule, SCHEDULES)
        _choice("diffusion.sampler", self.sampler, sampler_names())
        _in_range("diffusion.eta", self.eta, 0.0, 1.0)
        try:
            cumprod = torch.cumprod(1.0 - beta_schedule(self.schedule, self.steps), dim=0)
            space_timesteps(self.steps, self.respacing, cumprod)
            self.sampler_impl = build_sampler(self.sampler, **self.sampler_knobs())
        except (ValueError, TypeError) as err:
            raise ConfigError(str(err)) from None

    def sampler_knobs(self) -> dict[str, Any]:
        """``sampler_params``, plus ``eta`` for DDIM (its knob since before the registry)."""
        knobs = dict(self.sampler_params)
        if self.sampler == "ddim":
            knobs.setdefault("eta", self.eta)
        return knobs


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
        _choice("classifier.arch", self.arch, tuple(ARCHITECTURES))
        _choice("classifier.normalize", self.normalize, NORMALIZATIONS)
        if self.input_size is not None:
            _at_least("classifier.input_size", self.input_size, 8)
        if self.softplus_beta is not None and self.softplus_beta <= 0:
            raise ConfigError(f"classifier.softplus_beta={self.softplus_beta!r}: must be > 0")


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

        _choice("calibration.method", self.method, CALIBRATION_METHODS)
        _choice("calibration.loss", self.loss, CALIBRATION_LOSSES)
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
        _in_range("calibration.sigma_min", self.sigma_min, 1e-4, 0.5)
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
        _choice("inputs.mode", self.mode, INPUT_MODES)
        _at_least("inputs.t_min", self.t_min, 0)
        _at_least("inputs.t_max", self.t_max, self.t_min)


@dataclass
class EvaluationConfig:
    buckets: int = 10
    n_bins: int = 15
    seed: int = 0
    diagrams: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        _in_range("evaluation.buckets", self.buckets, 1, 100)
        _in_range("evaluation.n_bins", self.n_bins, 2, 100)
        for name in self.diagrams:
            _choice("evaluation.diagrams[]", name, ("clean", "low", "mid", "high"))


@dataclass
class ClassifierOptimConfig:
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup_steps: int = 20

    def __post_init__(self) -> None:
        _in_range("optim.lr", self.lr, 1e-12, 10.0)
        _at_least("optim.weight_decay", self.weight_decay, 0.0)
        _at_least("optim.warmup_steps", self.warmup_steps, 0)


@dataclass
class GuidanceConfig:
    name: str
    params: dict[str, Any] = field(default_factory=dict)
    scale: float = 1.0
    schedule: str = "constant"
    schedule_params: dict[str, Any] = field(default_factory=dict)
    temperature: float = 1.0
    through_denoiser: bool = False

    def __post_init__(self) -> None:
        from calguide.guidance import SCHEDULES, strategy_names

        _choice("guidance.name", self.name, list(strategy_names()))
        _at_least("guidance.scale", self.scale, 0.0)
        _choice("guidance.schedule", self.schedule, list(SCHEDULES))
        if not self.temperature > 0:
            raise ConfigError(f"guidance.temperature={self.temperature!r}: must be > 0")
        try:
            from calguide.guidance import build_schedule, build_strategy

            # Built once here; the assembly uses these objects (see calguide.assembly).
            self.strategy_impl = build_strategy(self.name, **self.params)
            self.schedule_impl = build_schedule(self.schedule, self.scale, **self.schedule_params)
        except (ValueError, TypeError) as err:
            raise ConfigError(f"guidance: {err}") from None


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

    def __post_init__(self) -> None:
        _at_least("sampling.num_samples", self.num_samples, 1)
        _choice("sampling.noise", self.noise, NOISE_MODES)
        _at_least("sampling.batch_size", self.batch_size, 1)
        _choice("sampling.labels", self.labels, LABEL_PROTOCOLS)
        _at_least("sampling.fixed_class", self.fixed_class, 0)
        _choice("sampling.precision", self.precision, tuple(SAMPLING_PRECISIONS))
        _at_least("sampling.snapshot_count", self.snapshot_count, 0)
        _at_least("sampling.lock_wait_s", self.lock_wait_s, 0.0)


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
        _choice("metrics.kind", self.kind, EXTRACTOR_KINDS)
        if self.kind == "none":
            return
        if not self.compute:
            raise ConfigError("metrics.compute: at least one metric is required")
        for name in self.compute:
            _choice("metrics.compute[]", name, metric_names())
        if len(set(self.compute)) != len(self.compute):
            raise ConfigError(f"metrics.compute={list(self.compute)}: a metric is listed twice")
        _in_range("metrics.k", self.k, 1, 100)
        _at_least("metrics.batch_size", self.batch_size, 1)
        if self.max_pr_samples is not None:
            _at_least("metrics.max_pr_samples", self.max_pr_samples, self.k + 1)
        if self.reference not in REFERENCE_SPLITS and not self.reference.endswith(".npz"):
            raise ConfigError(
                f"metrics.reference={self.reference!r}: must be heldout, train or a .npz path"
            )
        if self.kind == "domain" and not self.evaluator:
            raise ConfigError("metrics.evaluator: metrics=domain needs an evaluation classifier")


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
            _at_least(f"lab.mlp.{key}", getattr(self, key), 1)
        if self.batch_size > self.train_size:
            raise ConfigError("lab.mlp.batch_size must be <= lab.mlp.train_size")
        _in_range("lab.mlp.lr", self.lr, 0.0, 1.0, high_open=True)


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
        _at_least("lab.num_samples", self.num_samples, 4)
        _at_least("lab.threads", self.threads, 1)
        _at_least("lab.calibration_points", self.calibration_points, 10)
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
            _choice(f"lab.classifiers.{name}.kind", kind, LAB_CLASSIFIER_KINDS)
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
        self.run_guidance = [lab_run_guidance(i, run) for i, run in enumerate(self.runs)]


def guidance_option(name: str) -> dict[str, Any]:
    """``conf/guidance/<name>.yaml`` as Hydra composes it (its defaults list included), through
    the config search path of the running application (or calguide's own ``conf/``)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException

    def composed() -> dict[str, Any]:
        cfg = compose(overrides=[f"+guidance={name}"])
        return OmegaConf.to_container(cfg.guidance, resolve=True)  # type: ignore[return-value]

    try:
        if not name:
            raise HydraException("no option")
        if GlobalHydra.instance().is_initialized():
            return composed()
        with initialize_config_dir(str(conf_dir()), version_base="1.3"):
            return composed()
    except HydraException:
        options = sorted(p.stem for p in (conf_dir() / "guidance").glob("*.yaml"))
        raise ConfigError(f"guidance={name!r}: one of {', '.join(options)}") from None


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
    "classifier": ClassifierConfig,
    "calibration": CalibrationConfig,
    "inputs": InputsConfig,
    "evaluation": EvaluationConfig,
    "guidance": GuidanceConfig,
    "sampling": SamplingConfig,
    "metrics": MetricsConfig,
    "lab": LabConfig,
}


# Sections whose meaning depends on the entry point (``task_name``).
TASK_SCHEMAS: dict[str, dict[str, type]] = {"calibrate": {"optim": ClassifierOptimConfig}}


RENAMED_KEYS: dict[str, str] = {
    "calibration.smece_weight": (
        "calibration.weight (λ), with calibration.loss one of ce, smooth_ece, kernel_smece"
    ),
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


def job_config(cfg: DictConfig) -> dict[str, Any]:
    """The run's own config, resolved, without Hydra's node: what runs record and log."""
    return OmegaConf.to_container(  # type: ignore[return-value]
        OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True
    )


def _one_line(err: OmegaConfBaseException, key: str) -> str:
    full_key = getattr(err, "full_key", None) or key
    message = str(err).splitlines()[0] if str(err) else type(err).__name__
    if full_key and not full_key.startswith(key):
        full_key = f"{key}.{full_key}"
    return f"{full_key}: {message}{renamed_hint(full_key)}"


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


class Checked:
    """The typed, checked sections of one job's config (``None`` for an absent section)."""

    def __init__(self, sections: dict[str, Any]) -> None:
        self._sections = sections

    def __getattr__(self, key: str) -> Any:
        if key.startswith("_"):
            raise AttributeError(key)
        return self._sections.get(key)

    def __contains__(self, key: str) -> bool:
        return key in self._sections


_CHECKED: dict[str, Checked] = {}


def _fingerprint(cfg: DictConfig) -> str:
    """What the schemas read: the sections they check, resolved, plus the task."""
    import json

    keys = [k for k in (*SCHEMAS, "trainer") if k in cfg]
    blob = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in keys}
    blob["task_name"] = cfg.get("task_name")
    return json.dumps(blob, sort_keys=True, default=str)


def validate(cfg: DictConfig) -> Checked:
    """Check every known section present in ``cfg``; return them typed.

    Runs once per distinct config: the pre-flight check of a console script and the job it then
    starts share the result (see :func:`checked`).
    """
    key = _fingerprint(cfg)
    if key in _CHECKED:
        return _CHECKED[key]
    overrides = TASK_SCHEMAS.get(str(cfg.get("task_name", "")), {})
    sections = {
        name: validated(cfg, name, schema)
        for name, schema in {**SCHEMAS, **overrides}.items()
        if name in cfg
    }
    check_trainer(cfg)
    _CHECKED.clear()  # one config per process at a time; multirun jobs replace each other's
    _CHECKED[key] = Checked(sections)
    return _CHECKED[key]


checked = validate
"""The typed sections of ``cfg``: what a job reads (validated once, then remembered)."""


def is_guided(cfg: DictConfig) -> bool:
    """Whether ``cfg``'s guidance strategy is active (so its classifier is read and used)."""
    spec = checked(cfg).guidance
    return spec is not None and spec.strategy_impl.is_active
