"""The machine and the Lightning Trainer: what the config asks of this machine, the loggers (W&B
online with a key, offline without), and the Trainer every job runs."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from calguide.config.base import RunSpec
from calguide.errors import ConfigError


def run_tags(spec: RunSpec) -> list[str]:
    """W&B tags that make runs filterable the same way everywhere: ``key:value`` for the task,
    data set, denoiser, classifier, strategy, divergence (f-divergence strategies) and table."""
    from calguide.guidance import divergence_names

    tags = [f"task:{spec.task or 'run'}"]
    data, denoiser = getattr(spec, "data", None), getattr(spec, "denoiser", None)
    guidance, classifier = getattr(spec, "guidance", None), getattr(spec, "classifier", None)
    if data is not None:
        tags.append(f"dataset:{data.name}")
    if denoiser is not None:
        tags.append(f"denoiser:{denoiser.name}")
    if guidance is not None:
        tags.append(f"strategy:{guidance.name}")
        if guidance.name in divergence_names():
            tags.append(f"divergence:{guidance.name}")
    if classifier is not None and (guidance is None or guidance.active):
        tags.append(f"classifier:{classifier.name}")
    calibration = getattr(spec, "calibration", None)
    if calibration is not None:
        tags.append(f"calibration:{calibration.name}")
    table = table_of(spec)
    if table:
        tags.append(f"table:{table}")
    return tags


def table_of(spec: RunSpec) -> str | None:
    """The table a run belongs to (``experiment.table``), if any."""
    table = (getattr(spec, "experiment", None) or {}).get("table")
    return str(table) if table else None


def run_group(spec: RunSpec) -> str:
    """The W&B group: the table a run belongs to, else the entry point."""
    return table_of(spec) or spec.task or "calguide"


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


def loggers(spec: RunSpec, record: Mapping[str, Any] | None = None) -> list:
    """The configured loggers (``logger`` group: a mapping of name → Lightning logger spec).

    W&B runs get the conventions of the dashboard docs: group = table (or task), tags from
    :func:`run_tags` added to the configured ones, the full resolved config with the run's
    record of what ran under ``run``; online with an API key and offline (one line saying so)
    without, never a traceback.
    """
    from hydra.utils import instantiate

    config = {**spec.config, "run": dict(record)} if record else spec.config
    built = []
    for entry in spec.logger.values():
        if str(entry.get("_target_", "")).endswith("WandbLogger"):
            mode, message = wandb_mode(
                bool(entry.get("offline")), str(entry.get("save_dir") or ".")
            )
            if message:
                print(message)
            extra: dict[str, Any] = {"group": entry.get("group") or run_group(spec)}
            extra["tags"] = list(dict.fromkeys([*(entry.get("tags") or []), *run_tags(spec)]))
            extra["offline"] = mode in ("offline", "dryrun")
            if mode == "disabled":
                extra["mode"] = "disabled"
            # ``config`` is also instantiate()'s own first parameter: pass it to the partial.
            factory = instantiate(entry, _partial_=True, **extra)
            built.append(factory(config=config))
        else:
            built.append(instantiate(entry))
    return built


GPU_ACCELERATORS = ("gpu", "cuda")


def gpu_available() -> bool:
    return torch.cuda.is_available()


def check_machine(trainer: Mapping[str, Any]) -> None:
    """What the ``trainer`` section asks of this machine that it does not have: one
    ConfigError naming the request and what there is, before anything is loaded."""
    if not trainer:
        return
    accelerator = str(trainer.get("accelerator", "auto")).lower()
    devices = trainer.get("devices", 1)
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


def runs_on_gpu(trainer: Mapping[str, Any]) -> bool:
    """Whether a Trainer of this ``trainer`` section puts the networks on a CUDA GPU."""
    accelerator = str((trainer or {}).get("accelerator", "auto")).lower()
    return gpu_available() and accelerator in (*GPU_ACCELERATORS, "auto")


def device_name(trainer: Mapping[str, Any]) -> str:
    """What the run computes on, in words: ``cuda (NVIDIA H200) ×1`` or ``cpu``."""
    if not runs_on_gpu(trainer):
        return "cpu"
    devices = (trainer or {}).get("devices", 1)
    count = torch.cuda.device_count() if devices in (-1, "auto") else devices
    return f"cuda ({torch.cuda.get_device_name(0)}) ×{count}"


def trainer(spec: RunSpec, record: Mapping[str, Any] | None = None, **kwargs: Any):
    """The Lightning Trainer of ``spec.trainer`` with the configured loggers."""
    from hydra.utils import instantiate

    check_machine(spec.trainer)
    return instantiate(spec.trainer, logger=loggers(spec, record) or False, **kwargs)
