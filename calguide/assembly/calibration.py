"""``calguide-calibrate``'s objects: the classifier to calibrate, the frozen denoiser that makes
its x̂₀ inputs, the base chain and the calibration module."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from calguide.assembly.machine import runs_on_gpu
from calguide.assembly.models import (
    Denoiser,
    chain,
    classifier,
    float32_off_gpu,
    load_denoiser_file,
)
from calguide.config.calibrate import CalibrateSpec
from calguide.diffusion import GaussianDiffusion
from calguide.modules.classifier import ClassifierModule
from calguide.nets.classifiers import Classifier


def inputs_denoiser(spec: CalibrateSpec) -> Denoiser | None:
    """The denoiser that makes a calibration run's x̂₀ inputs (``inputs.mode=x0``), else None;
    in float32 when the run is not on a CUDA GPU (as for sampling)."""
    inputs = spec.inputs
    if inputs.mode != "x0":
        return None
    if inputs.denoiser is None:
        raise FileNotFoundError("inputs.mode=x0 needs inputs.denoiser (a trained denoiser file)")
    path = Path(inputs.denoiser)
    if not path.is_file():
        raise FileNotFoundError(
            f"inputs.denoiser: no denoiser at {path}; train one with `calguide-train` "
            "(or `make train-denoiser`) or point inputs.denoiser at a checkpoint"
        )
    net = load_denoiser_file(path, inputs.denoiser_flags, "inputs.denoiser")
    return net if runs_on_gpu(spec.trainer) else float32_off_gpu(net)


@dataclass
class CalibrationSetup:
    """What ``calguide-calibrate`` runs: the module, and what it started from."""

    module: ClassifierModule
    classifier: Classifier
    denoiser: Denoiser | None
    init_meta: dict[str, Any]


def calibration_module(
    spec: CalibrateSpec,
    net: Classifier,
    diffusion: GaussianDiffusion,
    denoiser: Denoiser | None,
    temperature: float,
) -> ClassifierModule:
    """The calibration fine-tune of ``net``: its inputs (``inputs.*``, x̂₀ through
    ``denoiser`` when given), loss (``calibration.*``), optimiser and held-out evaluation."""
    calibration, inputs = spec.calibration, spec.inputs
    return ClassifierModule(
        net,
        diffusion,
        mode=inputs.mode,
        t_min=inputs.t_min,
        t_max=min(inputs.t_max, diffusion.num_timesteps - 1),
        loss=calibration.loss,
        weight=calibration.weight,
        form=calibration.form,
        beta=calibration.beta,
        bins=calibration.bins,
        sigma=calibration.sigma,
        sigma_min=calibration.sigma_min,
        lr=spec.optim.lr,
        weight_decay=spec.optim.weight_decay,
        warmup_steps=spec.optim.warmup_steps,
        buckets=spec.evaluation.buckets,
        n_bins=spec.evaluation.n_bins,
        denoiser=denoiser.net if denoiser else None,
        denoiser_class_cond=denoiser.class_cond if denoiser else False,
        eval_seed=spec.evaluation.seed,
        temperature=temperature,
    )


def calibration_setup(spec: CalibrateSpec) -> CalibrationSetup:
    """The classifier (``init`` weights or random), its x̂₀ denoiser and the module."""
    net, init_meta = classifier(
        spec.classifier, spec.init, f"classifier '{spec.classifier.name}' (init)"
    )
    denoiser = inputs_denoiser(spec)
    base = chain(
        spec.diffusion,
        denoiser.flags if denoiser else {},
        denoiser.diffusion if denoiser else None,
        respaced=False,
    )
    temperature = float(init_meta.get("temperature", 1.0))
    module = calibration_module(spec, net, base, denoiser, temperature)
    return CalibrationSetup(module, net, denoiser, init_meta)
