"""Objects every entry point builds the same way from its config sections."""

from __future__ import annotations

from hydra.utils import instantiate
from omegaconf import DictConfig

from calguide.config import job_config
from calguide.data import ImageDataModule


def datamodule_from(cfg: DictConfig, seed: int) -> ImageDataModule:
    data = cfg.data
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


def run_tags(cfg: DictConfig) -> list[str]:
    """W&B tags that make runs filterable the same way everywhere: ``key:value`` for the task,
    data set, denoiser, classifier, strategy, divergence (f-divergence strategies) and table."""
    from calguide.guidance import divergence_names

    tags = [f"task:{cfg.get('task_name', 'run')}"]
    if cfg.get("data") is not None:
        tags.append(f"dataset:{cfg.data.name}")
    if cfg.get("denoiser") is not None:
        tags.append(f"denoiser:{cfg.denoiser.name}")
    guidance = cfg.get("guidance")
    if guidance is not None:
        tags.append(f"strategy:{guidance.name}")
        if guidance.name in divergence_names():
            tags.append(f"divergence:{guidance.name}")
    if cfg.get("classifier") is not None and (guidance is None or guidance.name != "none"):
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


def loggers_from(cfg: DictConfig) -> list:
    """The configured loggers (``logger`` group: a mapping of name → Lightning logger spec).

    W&B runs get the conventions of the README's dashboard section: group = table (or task),
    tags from :func:`run_tags` added to the configured ones, the full resolved config.
    """
    loggers = []
    for spec in (cfg.get("logger") or {}).values():
        if str(spec.get("_target_", "")).endswith("WandbLogger"):
            extra = {"group": spec.get("group") or run_group(cfg)}
            extra["tags"] = list(dict.fromkeys([*(spec.get("tags") or []), *run_tags(cfg)]))
            # ``config`` is also instantiate()'s own first parameter: pass it to the partial.
            factory = instantiate(spec, _partial_=True, **extra)
            loggers.append(factory(config=job_config(cfg)))
        else:
            loggers.append(instantiate(spec))
    return loggers
