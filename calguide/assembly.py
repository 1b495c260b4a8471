"""Config → runtime objects, in one place.

Every job (sample, calibrate, train, eval, lab), ``experiments/bench.py`` and the tests build
their objects here, each from its checked schema section (:func:`calguide.config.checked`) and
exactly once: the data module, the denoiser and the diffusion chain it implies (config plus
the denoiser file's own metadata), classifiers (weights, input convention and Softplus swap),
the guidance (strategy + schedule + classifier), the sampler, the sampling module, the metrics
callback and the loggers. Nothing below this layer reads a config; nothing here runs a job.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from calguide.config import (
    ClassifierConfig,
    DataConfig,
    DenoiserConfig,
    DiffusionConfig,
    GuidanceConfig,
    MetricsConfig,
    SamplingConfig,
    checked,
    is_guided,
    job_config,
)
from calguide.data import ImageDataModule
from calguide.diffusion import GaussianDiffusion, Sampler
from calguide.errors import ConfigError
from calguide.guidance import ClassifierGuidance, GuidanceClassifier, make_guidance
from calguide.io import content_sha256
from calguide.metrics.features import ClassifierFeatureExtractor, InceptionExtractor
from calguide.metrics.reference import (
    REFERENCE_SPLITS,
    cached_reference,
    iter_adm_reference_batch,
    reference_features,
)
from calguide.modules.classifier import ClassifierModule
from calguide.modules.denoiser import load_denoiser
from calguide.modules.metrics import GenerativeMetrics
from calguide.modules.sampling import SamplingModule
from calguide.nets.classifiers import Classifier, build_classifier, load_classifier

# --------------------------------------------------------------------------------- data


def datamodule(data: DataConfig, seed: int) -> ImageDataModule:
    return ImageDataModule(
        name=data.loader,
        image_size=data.image_size,
        channels=data.channels,
        batch_size=data.batch_size,
        num_workers=data.num_workers,
        root=data.root,
        path=data.path,
        heldout_fraction=data.heldout_fraction,
        split_seed=data.split_seed,
        download=data.download,
        seed=seed,
    )


# ----------------------------------------------------------------------------- denoiser


@dataclass
class Denoiser:
    """A loaded denoiser: the network, its ADM flags, and the diffusion settings its file
    records (calguide exports carry them; they override the config's)."""

    net: nn.Module
    flags: dict[str, Any]
    diffusion: dict[str, Any] = field(default_factory=dict)

    @property
    def class_cond(self) -> bool:
        return bool(self.flags.get("class_cond", False))

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        size = int(self.flags["image_size"])
        return (int(self.flags.get("in_channels", 3)), size, size)


def denoiser_path(cfg: DictConfig) -> Path:
    """``denoiser.checkpoint``, or where ``calguide-train`` exports this data's denoiser."""
    return Path(
        cfg.denoiser.checkpoint
        or f"{cfg.paths.artifacts}/{cfg.data.name}/{cfg.denoiser.name}/denoiser.pt"
    )


def load_denoiser_file(
    path: str | os.PathLike, flags: Mapping[str, Any] | None, what: str
) -> Denoiser:
    net, meta = load_denoiser(path, flags=dict(flags) if flags is not None else None, what=what)
    return Denoiser(net, dict(meta["flags"]), dict(meta.get("diffusion", {})))


def denoiser(spec: DenoiserConfig, path: str | os.PathLike) -> Denoiser:
    return load_denoiser_file(path, spec.flags, f"denoiser '{spec.name}'")


def inputs_denoiser(cfg: DictConfig) -> Denoiser | None:
    """The denoiser that makes a calibration run's x̂₀ inputs (``inputs.mode=x0``), else None;
    in float32 when the run is not on a CUDA GPU (as for sampling)."""
    if cfg.inputs.mode != "x0":
        return None
    if cfg.inputs.denoiser is None:
        raise FileNotFoundError("inputs.mode=x0 needs inputs.denoiser (a trained denoiser file)")
    path = Path(cfg.inputs.denoiser)
    if not path.is_file():
        raise FileNotFoundError(
            f"inputs.denoiser: no denoiser at {path}; train one with `calguide-train` "
            "(or `make train-denoiser`) or point inputs.denoiser at a checkpoint"
        )
    flags = cfg.inputs.denoiser_flags
    flags = OmegaConf.to_container(flags, resolve=True) if flags is not None else None
    net = load_denoiser_file(path, flags, "inputs.denoiser")
    return net if runs_on_gpu(cfg) else float32_off_gpu(net)


def float32_off_gpu(net: Denoiser) -> Denoiser:
    """ADM's ``use_fp16`` blocks (the official ImageNet flags) in float32 when the run is not on
    a CUDA GPU: half-precision convolutions crawl on a CPU (17 CPU-minutes without finishing 4
    steps of ADM-128, against 201 s for the whole run in float32)."""
    if not net.flags.get("use_fp16"):
        return net
    convert = getattr(net.net, "convert_to_fp32", None)
    if callable(convert):
        convert()
    print(
        "calguide: denoiser.flags.use_fp16 (ADM's half-precision blocks) is for CUDA GPUs; "
        "this run is not on one, so the denoiser runs in float32"
    )
    return Denoiser(net.net, {**net.flags, "use_fp16": False}, net.diffusion)


def chain(
    diffusion: DiffusionConfig,
    flags: Mapping[str, Any],
    recorded: Mapping[str, Any] | None = None,
    *,
    respaced: bool = True,
) -> GaussianDiffusion:
    """The (respaced) chain of ``diffusion``, with what the denoiser file records on top."""
    settings = {
        "steps": diffusion.steps,
        "schedule": diffusion.schedule,
        "sigma_small": diffusion.sigma_small,
    }
    settings.update({k: v for k, v in (recorded or {}).items() if k in settings})
    return GaussianDiffusion.from_config(
        steps=int(settings["steps"]),
        schedule=str(settings["schedule"]),
        learn_sigma=bool(flags.get("learn_sigma", False)),
        sigma_small=bool(settings["sigma_small"]),
        respacing=str(diffusion.respacing) if respaced else "",
    )


def sampler(diffusion: DiffusionConfig) -> Sampler:
    """The configured sampler (built, with its knobs, when the section was checked)."""
    return diffusion.sampler_impl


# --------------------------------------------------------------------------- classifiers


def classifier(
    spec: ClassifierConfig, source: str | os.PathLike | None, what: str
) -> tuple[Classifier, dict[str, Any]]:
    """Random weights (``source`` None), a calguide export, or published weights for
    ``spec.arch``; every ReLU becomes Softplus(β) when ``classifier.softplus_beta`` is set."""
    params = dict(spec.params)
    if source is None:
        built = build_classifier(
            spec.arch,
            params,
            normalize=spec.normalize,
            input_size=spec.input_size,
            softplus_beta=spec.softplus_beta,
        )
        return built, {"temperature": 1.0}
    return load_classifier(
        source,
        arch=spec.arch,
        params=params,
        normalize=spec.normalize,
        input_size=spec.input_size,
        softplus_beta=spec.softplus_beta,
        what=what,
    )


def guidance(
    spec: GuidanceConfig, classifier_spec: ClassifierConfig | None, num_timesteps: int
) -> tuple[ClassifierGuidance | None, dict[str, Any]]:
    """(the guidance, its classifier file's metadata); ``(None, {})`` when unguided."""
    strategy = spec.strategy_impl
    if not strategy.is_active:
        return None, {}
    if classifier_spec is None:
        raise ValueError(f"guidance {strategy.name!r} needs a classifier section")
    net, meta = classifier(
        classifier_spec,
        classifier_spec.checkpoint,
        f"guidance classifier '{classifier_spec.name}'",
    )
    wrapped = GuidanceClassifier(
        net,
        input_mode="noisy" if net.noise_aware else "x0",
        temperature=float(meta.get("temperature", 1.0)),
        through_denoiser=bool(spec.through_denoiser),
    )
    return guidance_with(spec, wrapped, num_timesteps), meta


def guidance_with(
    spec: GuidanceConfig, wrapped: GuidanceClassifier, num_timesteps: int
) -> ClassifierGuidance | None:
    """The guidance of ``spec`` around an already wrapped classifier (the lab's in-memory
    ones); ``guidance.temperature`` multiplies the classifier's own τ_c."""
    wrapped.temperature = float(wrapped.temperature) * float(spec.temperature)
    return make_guidance(wrapped, spec.strategy_impl, spec.schedule_impl, num_timesteps)


def calibration_module(
    cfg: DictConfig,
    classifier: Classifier,
    diffusion: GaussianDiffusion,
    denoiser: Denoiser | None,
    temperature: float,
) -> ClassifierModule:
    """The calibration fine-tune of ``classifier`` (``calguide-calibrate``): its inputs
    (``inputs.*``, x̂₀ through ``denoiser`` when given), loss (``calibration.*``), optimiser
    and held-out evaluation."""
    calibration = checked(cfg).calibration
    return ClassifierModule(
        classifier,
        diffusion,
        mode=cfg.inputs.mode,
        t_min=cfg.inputs.t_min,
        t_max=min(cfg.inputs.t_max, diffusion.num_timesteps - 1),
        loss=calibration.loss,
        weight=calibration.weight,
        form=calibration.form,
        beta=calibration.beta,
        bins=calibration.bins,
        sigma=calibration.sigma,
        sigma_min=calibration.sigma_min,
        lr=cfg.optim.lr,
        weight_decay=cfg.optim.weight_decay,
        warmup_steps=cfg.optim.warmup_steps,
        buckets=cfg.evaluation.buckets,
        n_bins=cfg.evaluation.n_bins,
        denoiser=denoiser.net if denoiser else None,
        denoiser_class_cond=denoiser.class_cond if denoiser else False,
        eval_seed=cfg.evaluation.seed,
        temperature=temperature,
    )


# ------------------------------------------------------------------------------ sampling


@dataclass
class SamplingSetup:
    """What ``calguide-sample`` runs: the module and the facts the job needs around it."""

    module: SamplingModule
    num_classes: int
    classifier_meta: dict[str, Any]

    @property
    def batch_dependent(self) -> bool:
        """Whether a sample depends on its batch (tilted): the batch size joins its identity."""
        return bool(getattr(self.module.guidance, "batch_dependent", False))


def sampling_module(
    net: Denoiser,
    diffusion: DiffusionConfig,
    sampling: SamplingConfig,
    *,
    guidance: ClassifierGuidance | None,
    seed: int,
) -> SamplingModule:
    return SamplingModule(
        net.net,
        chain(diffusion, net.flags, net.diffusion),
        sample_shape=net.sample_shape,
        class_cond=net.class_cond,
        guidance=guidance,
        sampler=sampler(diffusion),
        clip_denoised=diffusion.clip_denoised,
        seed=seed,
        precision=sampling.precision,
        snapshot_timesteps=tuple(sampling.snapshot_timesteps),
        snapshot_count=sampling.snapshot_count,
        progress=sampling.progress,
        noise=sampling.noise,
        channels_last=sampling.channels_last,
        compile=sampling.compile,
    )


def sampling_setup(cfg: DictConfig) -> SamplingSetup:
    """Denoiser, chain, guidance and sampler of a ``calguide-sample`` config, as one module."""
    run = checked(cfg)
    net = denoiser(run.denoiser, denoiser_path(cfg))
    if not runs_on_gpu(cfg):
        net = float32_off_gpu(net)
        if run.sampling.precision != "32":
            print(
                f"calguide: sampling.precision={run.sampling.precision} is a CUDA autocast; this "
                "run is not on a CUDA GPU, so it samples in float32"
            )
    num_timesteps = chain(run.diffusion, net.flags, net.diffusion, respaced=False).num_timesteps
    hook, clf_meta = guidance(run.guidance, run.classifier, num_timesteps)
    module = sampling_module(net, run.diffusion, run.sampling, guidance=hook, seed=int(cfg.seed))
    num_classes = int(net.flags.get("num_classes") or run.data.num_classes)
    return SamplingSetup(module, num_classes, clf_meta)


# ------------------------------------------------------------------------------- metrics


def file_identity(path: str | os.PathLike) -> str:
    """Size + sha256 of the file's bytes (hashed once per size and mtime): what the reference
    statistics' cache key names a file by, so a replaced file is never mistaken for the old."""
    return f"{Path(path).stat().st_size}:{content_sha256(path)[:16]}"


def evaluation_extractor(spec: MetricsConfig) -> ClassifierFeatureExtractor:
    """The evaluation classifier's penultimate features (and its logits for class accuracy)."""
    if not spec.evaluator:
        raise FileNotFoundError("metrics.evaluator: an evaluation classifier file is required")
    net, _ = load_classifier(
        spec.evaluator, what="metrics evaluation classifier (metrics.evaluator)"
    )
    return ClassifierFeatureExtractor(
        net.net,
        name=f"domain:{Path(spec.evaluator).stem}:{file_identity(spec.evaluator)}",
        preprocess=net.prepare,
        batch_size=int(spec.batch_size),
    )


def extractor(spec: MetricsConfig) -> tuple[Any, ClassifierFeatureExtractor | None]:
    """(feature extractor, class-accuracy classifier or None) for ``metrics.kind``."""
    evaluator = evaluation_extractor(spec) if spec.evaluator else None
    if spec.kind == "domain":
        if evaluator is None:
            raise FileNotFoundError("metrics=domain needs metrics.evaluator (a classifier file)")
        return evaluator, evaluator
    inception = InceptionExtractor(
        weights_path=spec.inception_weights,
        download=bool(spec.download),
        batch_size=int(spec.batch_size),
    )
    return inception, evaluator


def reference_images(data: DataConfig, spec: MetricsConfig) -> Iterator[torch.Tensor]:
    """Reference images in batches: a data split, or an ADM ``.npz`` (``arr_0``)."""
    source = str(spec.reference)
    if source.endswith(".npz"):
        yield from iter_adm_reference_batch(source, batch_size=int(spec.batch_size))
        return
    if source not in REFERENCE_SPLITS:
        raise ValueError(
            f"metrics.reference={source!r}: must be one of {list(REFERENCE_SPLITS)} or a .npz path"
        )
    dm = datamodule(data, seed=0)
    dm.setup("fit")
    dataset = dm.heldout if source == "heldout" else dm.train
    loader = torch.utils.data.DataLoader(dataset, batch_size=int(spec.batch_size))
    for images, _ in loader:
        yield images


def reference_key(data: DataConfig, spec: MetricsConfig, features: Any) -> dict[str, Any]:
    """Everything the reference statistics depend on: their cache key."""
    source = str(spec.reference)
    key: dict[str, Any] = {"extractor": features.name, "reference": source}
    if source.endswith(".npz"):
        key["file"] = file_identity(source)
    else:
        key.update(
            data=str(data.name),
            image_size=int(data.image_size),
            split_seed=int(data.split_seed),
            heldout_fraction=float(data.heldout_fraction),
        )
    key["max_pr_samples"] = spec.max_pr_samples
    key["features_dtype"] = "float16"  # reference_features' storage of the kept rows
    return key


def reference(data: DataConfig, spec: MetricsConfig, features: Any) -> dict[str, Any]:
    return cached_reference(
        spec.cache_dir,
        reference_key(data, spec, features),
        lambda: reference_features(
            features,
            reference_images(data, spec),
            batch_size=int(spec.batch_size),
            max_features=spec.max_pr_samples,
        ),
    )


def metrics_callback(
    cfg: DictConfig, output_dir: str | os.PathLike | None
) -> GenerativeMetrics | None:
    """The configured ``GenerativeMetrics`` callback, or None for ``metrics=none``."""
    run = checked(cfg)
    spec: MetricsConfig | None = run.metrics
    if spec is None or spec.kind == "none":
        return None
    features, accuracy = extractor(spec)
    data: DataConfig = run.data
    return GenerativeMetrics(
        features,
        lambda: reference(data, spec, features),
        classifier=accuracy,
        metrics=list(spec.compute),
        output_dir=output_dir,
        k=int(spec.k),
        max_pr_samples=spec.max_pr_samples,
        keep_features=bool(spec.keep_features),
    )


# ------------------------------------------------------------------------------- loggers


def run_tags(cfg: DictConfig) -> list[str]:
    """W&B tags that make runs filterable the same way everywhere: ``key:value`` for the task,
    data set, denoiser, classifier, strategy, divergence (f-divergence strategies) and table."""
    from calguide.guidance import divergence_names

    tags = [f"task:{cfg.get('task_name', 'run')}"]
    if cfg.get("data") is not None:
        tags.append(f"dataset:{cfg.data.name}")
    if cfg.get("denoiser") is not None:
        tags.append(f"denoiser:{cfg.denoiser.name}")
    spec = cfg.get("guidance")
    if spec is not None:
        tags.append(f"strategy:{spec.name}")
        if spec.name in divergence_names():
            tags.append(f"divergence:{spec.name}")
    if cfg.get("classifier") is not None and (spec is None or is_guided(cfg)):
        tags.append(f"classifier:{cfg.classifier.name}")
    if cfg.get("calibration") is not None:
        tags.append(f"calibration:{cfg.calibration.name}")
    table = (cfg.get("experiment") or {}).get("table")
    if table:
        tags.append(f"table:{table}")
    return tags


def run_group(cfg: DictConfig) -> str:
    """The W&B group: the table a run belongs to, else the entry point."""
    return (cfg.get("experiment") or {}).get("table") or str(cfg.get("task_name", "calguide"))


WANDB_MODES = ("online", "offline", "dryrun", "disabled")


def wandb_key_configured() -> bool:
    """Whether W&B would find an API key: ``WANDB_API_KEY``, or the netrc entry ``wandb
    login`` writes for the W&B host (``WANDB_BASE_URL``, default api.wandb.ai)."""
    import netrc
    from urllib.parse import urlparse

    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    path = os.environ.get("NETRC") or os.path.join(os.path.expanduser("~"), ".netrc")
    try:
        entry = netrc.netrc(path).authenticators(host or "api.wandb.ai")
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(entry and entry[2])


def wandb_mode(offline_asked: bool, save_dir: str | os.PathLike) -> tuple[str, str | None]:
    """(mode, a line for the user or None): ``WANDB_MODE`` when set; offline when the config
    asks; online with an API key; otherwise offline, saying so and how to upload later."""
    env = os.environ.get("WANDB_MODE", "").strip().lower()
    if env:
        if env not in WANDB_MODES:
            raise ConfigError(f"WANDB_MODE={env!r}: must be one of {list(WANDB_MODES)}")
        if env == "online" and not wandb_key_configured():
            raise ConfigError(
                "logger=wandb with WANDB_MODE=online, but no W&B API key is configured: run "
                "`wandb login` or set WANDB_API_KEY (or unset WANDB_MODE to log offline)"
            )
        return env, None
    if offline_asked:
        return "offline", None
    if wandb_key_configured():
        return "online", None
    where = Path(save_dir) / "wandb"
    return "offline", (
        f"calguide: W&B: no API key configured (WANDB_API_KEY or `wandb login`): logging offline "
        f"to {where}; upload later with `wandb sync {where}/offline-run-*`"
    )


def loggers(cfg: DictConfig) -> list:
    """The configured loggers (``logger`` group: a mapping of name → Lightning logger spec).

    W&B runs get the conventions of the README's dashboard section: group = table (or task),
    tags from :func:`run_tags` added to the configured ones, the full resolved config; they run
    online with an API key and offline (with one line saying so) without, never a traceback.
    """
    from hydra.utils import instantiate

    built = []
    for spec in (cfg.get("logger") or {}).values():
        if str(spec.get("_target_", "")).endswith("WandbLogger"):
            mode, message = wandb_mode(bool(spec.get("offline")), str(spec.get("save_dir") or "."))
            if message:
                print(message)
            extra: dict[str, Any] = {"group": spec.get("group") or run_group(cfg)}
            extra["tags"] = list(dict.fromkeys([*(spec.get("tags") or []), *run_tags(cfg)]))
            extra["offline"] = mode in ("offline", "dryrun")
            if mode == "disabled":
                extra["mode"] = "disabled"
            # ``config`` is also instantiate()'s own first parameter: pass it to the partial.
            factory = instantiate(spec, _partial_=True, **extra)
            built.append(factory(config=job_config(cfg)))
        else:
            built.append(instantiate(spec))
    return built


GPU_ACCELERATORS = ("gpu", "cuda")


def gpu_available() -> bool:
    return torch.cuda.is_available()


def check_machine(cfg: DictConfig) -> None:
    """What the config asks of this machine that it does not have: one ConfigError naming the
    request and what there is, before anything is loaded."""
    spec = cfg.get("trainer")
    if spec is None:
        return
    accelerator = str(spec.get("accelerator", "auto")).lower()
    devices = spec.get("devices", 1)
    if accelerator in GPU_ACCELERATORS:
        count = torch.cuda.device_count() if gpu_available() else 0
        if count == 0:
            raise ConfigError(
                f"trainer.accelerator={accelerator}: this machine has no CUDA GPU "
                "(torch.cuda.is_available() is False); use trainer=cpu"
            )
        if isinstance(devices, int) and devices > count:
            raise ConfigError(
                f"trainer.devices={devices}: this machine has {count} CUDA GPU(s); use "
                f"trainer.devices={count} or fewer"
            )


def runs_on_gpu(cfg: DictConfig) -> bool:
    """Whether the job's Trainer will put the networks on a CUDA GPU."""
    spec = cfg.get("trainer") or {}
    accelerator = str(spec.get("accelerator", "auto")).lower()
    return gpu_available() and accelerator in (*GPU_ACCELERATORS, "auto")


def trainer(cfg: DictConfig, **kwargs: Any):
    """The Lightning Trainer of ``cfg.trainer`` with the configured loggers."""
    from hydra.utils import instantiate

    check_machine(cfg)
    return instantiate(cfg.trainer, logger=loggers(cfg) or False, **kwargs)


__all__ = [
    "Denoiser",
    "SamplingSetup",
    "chain",
    "classifier",
    "datamodule",
    "denoiser",
    "denoiser_path",
    "extractor",
    "file_identity",
    "guidance",
    "guidance_with",
    "load_denoiser_file",
    "loggers",
    "metrics_callback",
    "reference",
    "run_group",
    "run_tags",
    "sampler",
    "sampling_module",
    "sampling_setup",
    "trainer",
]
