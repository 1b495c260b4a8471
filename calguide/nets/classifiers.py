"""One calling convention for every classifier: ``Classifier(x, t)`` on ADM-range images.

Networks differ in what they expect (torchvision ResNets: [-1, 1] x̂₀ at its own resolution in
EluCD's convention, or ImageNet-normalised [0, 1] images at 224×224 with ``normalize=imagenet``;
ADM's EncoderUNet: [-1, 1] images plus the timestep). ``Classifier`` owns that adaptation once,
so the calibration module, the guidance wrapper and the metrics all feed it the same [-1, 1]
tensors. Its ``net`` keeps the published state-dict layout.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from calguide.io import atomic_torch_save
from calguide.nets.checkpoint import extract_state_dict, load_weights, read_weights_file
from calguide.nets.factory import create_adm_classifier
from calguide.nets.mlp import NoisyMLP
from calguide.nets.resnet import (
    resnet18,
    resnet34,
    resnet50,
    resnet101,
    resnet152,
    small_resnet,
    swap_relu_for_softplus,
)

EXPORT_FORMAT = "calguide-classifier/1"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

ARCHITECTURES = {
    "small_resnet": small_resnet,
    "resnet18": resnet18,
    "resnet34": resnet34,
    "resnet50": resnet50,
    "resnet101": resnet101,
    "resnet152": resnet152,
    "adm_classifier": create_adm_classifier,
    "noisy_mlp": NoisyMLP,
}
NOISE_AWARE = {"adm_classifier", "noisy_mlp"}


def prepare_input(
    x: Tensor,
    *,
    to_unit: bool,
    mean: Tensor | None = None,
    std: Tensor | None = None,
    size: tuple[int, int] | None = None,
) -> Tensor:
    """Map an image in [−1, 1] to a classifier's input: optional [0, 1] map, resize, (x−μ)/σ.

    The resize is plain bilinear (no antialiasing): a cheap linear map whose transpose carries
    the guidance gradient back; antialiasing only changes downscaling.
    """
    if to_unit:
        x = (x + 1.0) * 0.5
    if size is not None and tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=False)
    if mean is not None and std is not None:
        x = (x - mean.to(x)) / std.to(x)
    return x


NORMALIZATIONS = ("none", "imagenet")


class Classifier(nn.Module):
    """A classifier network behind a fixed input convention (see module docstring).

    ``normalize="imagenet"`` maps [-1, 1] → [0, 1] → (x − mean)/std; ``input_size`` resizes
    (bilinear, differentiable) first. ``noise_aware`` networks also receive the timestep.
    """

    def __init__(
        self,
        net: nn.Module,
        *,
        arch: str,
        params: Mapping[str, Any],
        normalize: str = "none",
        input_size: int | None = None,
    ) -> None:
        super().__init__()
        if normalize not in NORMALIZATIONS:
            raise ValueError(
                f"classifier.normalize={normalize!r}: must be one of {list(NORMALIZATIONS)}"
            )
        self.net = net
        self.arch = arch
        self.params = dict(params)
        self.normalize = normalize
        self.input_size = input_size
        self.noise_aware = arch in NOISE_AWARE
        mean, std = (IMAGENET_MEAN, IMAGENET_STD) if normalize == "imagenet" else ((0.0,), (1.0,))
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def prepare(self, x: Tensor) -> Tensor:
        imagenet = self.normalize == "imagenet"
        return prepare_input(
            x,
            to_unit=imagenet,
            mean=self.mean if imagenet else None,
            std=self.std if imagenet else None,
            size=(self.input_size, self.input_size) if self.input_size is not None else None,
        )

    def forward(self, x: Tensor, t: Tensor | None = None) -> Tensor:
        x = self.prepare(x)
        if self.noise_aware:
            if t is None:
                raise ValueError(f"classifier {self.arch!r} is noise-aware and needs timesteps")
            return self.net(x, t)
        return self.net(x)

    def features(self, x: Tensor, t: Tensor | None = None) -> Tensor:
        """Penultimate features (for the domain feature extractor of the metrics)."""
        if self.noise_aware:
            raise ValueError(f"classifier {self.arch!r} has no clean-image feature head")
        return self.net.features(self.prepare(x))


def build_classifier(
    arch: str,
    params: Mapping[str, Any] | None = None,
    *,
    normalize: str = "none",
    input_size: int | None = None,
    softplus_beta: float | None = None,
) -> Classifier:
    """A randomly initialised classifier of a named architecture (``ARCHITECTURES``)."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"classifier.arch={arch!r}: must be one of {sorted(ARCHITECTURES)}")
    params = dict(params or {})
    try:
        net = ARCHITECTURES[arch](**params)
    except TypeError as err:
        raise ValueError(f"classifier.params for {arch!r}: {err}") from None
    if softplus_beta:
        swap_relu_for_softplus(net, softplus_beta)
    return Classifier(net, arch=arch, params=params, normalize=normalize, input_size=input_size)


def export_classifier(
    classifier: Classifier, path: str | os.PathLike, *, temperature: float = 1.0, **meta: Any
) -> None:
    """Write weights + everything needed to rebuild them (atomic); ``temperature`` travels too."""
    atomic_torch_save(
        {
            "format": EXPORT_FORMAT,
            "arch": classifier.arch,
            "params": classifier.params,
            "normalize": classifier.normalize,
            "input_size": classifier.input_size,
            "temperature": float(temperature),
            "meta": meta,
            "state_dict": {k: v.detach().cpu() for k, v in classifier.net.state_dict().items()},
        },
        path,
    )


def load_classifier(
    path: str | os.PathLike,
    *,
    arch: str | None = None,
    params: Mapping[str, Any] | None = None,
    normalize: str = "none",
    input_size: int | None = None,
    softplus_beta: float | None = None,
    what: str = "classifier",
) -> tuple[Classifier, dict[str, Any]]:
    """Rebuild from a calguide export, or from published weights (torchvision / ADM) + arch.

    Returns the classifier (eval mode) and its metadata (``temperature`` included, 1.0 for
    published weights). ``softplus_beta`` swaps every ReLU for Softplus(β) after loading (the
    weights are the same; only the activation is smoothed).
    """
    raw = read_weights_file(path, what=what)
    if isinstance(raw, dict) and raw.get("format") == EXPORT_FORMAT:
        classifier = build_classifier(
            raw["arch"], raw["params"], normalize=raw["normalize"], input_size=raw["input_size"]
        )
        load_weights(classifier.net, raw["state_dict"], source=str(path))
        meta = {k: v for k, v in raw.items() if k != "state_dict"}
        if softplus_beta:
            swap_relu_for_softplus(classifier.net, softplus_beta)
        return classifier.eval(), meta
    if arch is None:
        raise ValueError(
            f"{what}: {path} holds published weights; classifier.arch must say what network "
            "they belong to"
        )
    classifier = build_classifier(arch, params, normalize=normalize, input_size=input_size)
    state_dict = extract_state_dict(raw, what=what, source=str(path))
    load_weights(classifier.net, state_dict, source=str(path))
    if classifier.noise_aware and dict(params or {}).get("use_fp16"):
        classifier.net.convert_to_fp16()
    if softplus_beta:
        swap_relu_for_softplus(classifier.net, softplus_beta)
    return classifier.eval(), {"arch": arch, "params": dict(params or {}), "temperature": 1.0}
