"""The networks and the chain: data module, denoiser (its file's flags and diffusion settings),
the respaced chain, classifiers (weights, input convention, Softplus)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from calguide.config.shared import ClassifierConfig, DataConfig, DenoiserConfig, DiffusionConfig
from calguide.data import ImageDataModule
from calguide.diffusion import GaussianDiffusion
from calguide.modules.denoiser import load_denoiser
from calguide.nets.classifiers import Classifier, build_classifier, load_classifier


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


def denoiser_path(denoiser: DenoiserConfig, data: DataConfig, artifacts: str) -> Path:
    """``denoiser.checkpoint``, or where ``calguide-train`` exports this data's denoiser."""
    return Path(denoiser.checkpoint or f"{artifacts}/{data.name}/{denoiser.name}/denoiser.pt")


def load_denoiser_file(
    path: str | os.PathLike, flags: Mapping[str, Any] | None, what: str
) -> Denoiser:
    net, meta = load_denoiser(path, flags=dict(flags) if flags is not None else None, what=what)
    return Denoiser(net, dict(meta["flags"]), dict(meta.get("diffusion", {})))


def denoiser(spec: DenoiserConfig, path: str | os.PathLike) -> Denoiser:
    return load_denoiser_file(path, spec.flags, f"denoiser '{spec.name}'")


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
