"""``calguide-sample``'s objects (and the lab's): the sampler, the guidance (strategy, schedule,
classifier with its temperature), and the sampling module around the denoiser and its chain."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from calguide.assembly.machine import runs_on_gpu
from calguide.assembly.models import (
    Denoiser,
    chain,
    classifier,
    denoiser,
    denoiser_path,
    float32_off_gpu,
)
from calguide.config.sample import GuidanceConfig, SampleSpec, SamplingConfig
from calguide.config.shared import DiffusionConfig
from calguide.diffusion import Sampler, build_sampler
from calguide.guidance import (
    ClassifierGuidance,
    GuidanceClassifier,
    build_schedule,
    build_strategy,
    make_guidance,
)
from calguide.modules.sampling import SamplingModule


def sampler(diffusion: DiffusionConfig) -> Sampler:
    """The registry entry ``diffusion.sampler`` with its knobs ``diffusion.sampler_params``."""
    return build_sampler(diffusion.sampler, **diffusion.sampler_params)


def guidance_of(
    spec: GuidanceConfig,
    net: nn.Module,
    *,
    input_mode: str,
    temperature: float,
    num_timesteps: int,
) -> ClassifierGuidance | None:
    """The guidance of ``spec`` around the classifier ``net`` (``None`` when unguided): its
    strategy and schedule, and the classifier's own τ_c times ``guidance.temperature``."""
    strategy = build_strategy(spec.name, **spec.params)
    if not strategy.is_active:
        return None
    wrapped = GuidanceClassifier(
        net,
        input_mode=input_mode,  # type: ignore[arg-type]
        temperature=float(temperature) * float(spec.temperature),
        through_denoiser=bool(spec.through_denoiser),
    )
    schedule = build_schedule(spec.schedule, spec.scale, **spec.schedule_params)
    return make_guidance(wrapped, strategy, schedule, num_timesteps)


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
    precision: str | None = None,
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
        precision=precision or sampling.precision,
        snapshot_timesteps=tuple(sampling.snapshot_timesteps),
        snapshot_count=sampling.snapshot_count,
        progress=sampling.progress,
        noise=sampling.noise,
        channels_last=sampling.channels_last,
        compile=sampling.compile,
        fused_attention=sampling.fused_attention,
    )


def sampling_setup(spec: SampleSpec) -> SamplingSetup:
    """Denoiser, chain, guidance and sampler of a ``calguide-sample`` spec, as one module.

    Off a CUDA GPU the run is float32 whatever ``sampling.precision`` asks (autocast is a CUDA
    feature): the module is built with what will run, and one line says so.
    """
    net = denoiser(spec.denoiser, denoiser_path(spec.denoiser, spec.data, spec.paths.artifacts))
    precision = spec.sampling.precision
    if not runs_on_gpu(spec.trainer):
        net = float32_off_gpu(net)
        if precision != "32":
            print(
                f"calguide: sampling.precision={precision} is a CUDA autocast; this run is not "
                "on a CUDA GPU, so it samples in float32"
            )
            precision = "32"
    hook, clf_meta = None, {}
    if spec.guided:
        what = f"guidance classifier '{spec.classifier.name}'"
        clf, clf_meta = classifier(spec.classifier, spec.classifier.checkpoint, what)
        hook = guidance_of(
            spec.guidance,
            clf,
            input_mode="noisy" if clf.noise_aware else "x0",
            temperature=float(clf_meta.get("temperature", 1.0)),
            num_timesteps=chain(
                spec.diffusion, net.flags, net.diffusion, respaced=False
            ).num_timesteps,
        )
    module = sampling_module(
        net, spec.diffusion, spec.sampling, guidance=hook, seed=spec.seed, precision=precision
    )
    num_classes = int(net.flags.get("num_classes") or spec.data.num_classes)
    return SamplingSetup(module, num_classes, clf_meta)
