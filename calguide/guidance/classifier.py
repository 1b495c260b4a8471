"""The guidance classifier: any classifier net plus input mode, preprocessing and temperature.

Two input modes (DESIGN §5):

* ``noisy``: z = f(x_t, t), an ADM-style noise-aware classifier fed the raw x_t and the
  base-chain timestep; no preprocessing.
* ``x0``: z = f(preprocess(x̂₀)), an off-the-shelf classifier on the denoised estimate (EluCD).
  ``through_denoiser`` says whether the guidance hook back-propagates the gradient through the
  denoiser to x_t (otherwise the x̂₀ gradient is applied to x_t as is).

The wrapped net is frozen and kept in eval mode even when a parent module calls ``.train()``:
batch-norm running statistics must not move during sampling, and a train-mode batch norm would
also couple the samples of a batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from calguide.nets.classifiers import IMAGENET_MEAN, IMAGENET_STD
from calguide.nets.classifiers import prepare_input as preprocess_x0

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "INPUT_MODES",
    "NORMALIZATIONS",
    "GuidanceClassifier",
    "preprocess_x0",
]

INPUT_MODES = ("noisy", "x0")
NORMALIZATIONS = ("identity", "unit", "imagenet", "custom")

InputMode = Literal["noisy", "x0"]


def _channel_vector(name: str, values: Sequence[float]) -> Tensor:
    vec = torch.as_tensor([float(v) for v in values], dtype=torch.float32)
    if vec.ndim != 1 or vec.numel() == 0 or not bool(torch.isfinite(vec).all()):
        raise ValueError(f"guidance.classifier.{name} must be a list of finite numbers")
    return vec.view(1, -1, 1, 1)


class GuidanceClassifier(nn.Module):
    """Frozen classifier returning tempered logits z/τ_c for guidance.

    ``normalization`` (``x0`` mode only): ``identity`` feeds x̂₀ in [−1, 1] unchanged (classifiers
    trained on the diffusion's data scale, as the project's own are); ``unit`` maps to [0, 1];
    ``imagenet`` maps to [0, 1] then uses ImageNet mean/std (an option for torchvision ResNets,
    whose EluCD convention is ``identity``); ``custom``
    maps to [0, 1] then uses the given ``mean``/``std``. ``input_size`` resizes x̂₀ (int or
    (H, W)). A Softplus(β) network (EluCD's smoother gradients) is made when the classifier is
    built or loaded (``classifier.softplus_beta``), not here.
    """

    def __init__(
        self,
        net: nn.Module,
        *,
        input_mode: InputMode = "x0",
        normalization: str = "identity",
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        input_size: int | Sequence[int] | None = None,
        temperature: float = 1.0,
        through_denoiser: bool = False,
    ) -> None:
        super().__init__()
        if input_mode not in INPUT_MODES:
            raise ValueError(
                f"guidance.classifier.input_mode must be one of {list(INPUT_MODES)}, "
                f"got {input_mode!r}"
            )
        if normalization not in NORMALIZATIONS:
            raise ValueError(
                f"guidance.classifier.normalization must be one of {list(NORMALIZATIONS)}, "
                f"got {normalization!r}"
            )
        if not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(
                f"guidance.classifier.temperature must be a finite number > 0, got {temperature!r}"
            )
        if input_mode == "noisy":
            if normalization != "identity" or input_size is not None:
                raise ValueError(
                    "guidance.classifier.input_mode=noisy feeds x_t unchanged; normalization "
                    "must be 'identity' and input_size null"
                )
            if through_denoiser:
                raise ValueError(
                    "guidance.classifier.through_denoiser=true needs input_mode=x0 "
                    "(a noisy classifier already sees x_t)"
                )
        if (mean is None) != (std is None) or (normalization == "custom") != (mean is not None):
            raise ValueError(
                "guidance.classifier.mean and std are required with normalization=custom "
                "and not allowed otherwise"
            )
        _check_wrapped_convention(net, input_mode, normalization, input_size)
        self.net = net
        self.input_mode: InputMode = input_mode
        self.normalization = normalization
        self.temperature = float(temperature)
        self.through_denoiser = bool(through_denoiser)
        self.input_size = _size_pair(input_size)
        if normalization == "imagenet":
            mean, std = IMAGENET_MEAN, IMAGENET_STD
        if mean is not None and std is not None:
            mean_t, std_t = _channel_vector("mean", mean), _channel_vector("std", std)
            if mean_t.shape != std_t.shape or not bool((std_t > 0).all()):
                raise ValueError("guidance.classifier.std must be positive and match mean")
            self.register_buffer("mean", mean_t, persistent=False)
            self.register_buffer("std", std_t, persistent=False)
        else:
            self.register_buffer("mean", None, persistent=False)
            self.register_buffer("std", None, persistent=False)
        self.net.requires_grad_(False)
        self._call = [self.net]  # compile_net puts the compiled net here (outside the tree)
        self.train(False)

    def train(self, mode: bool = True) -> GuidanceClassifier:
        """The wrapped net always stays in eval mode (see the module docstring)."""
        super().train(mode)
        self.net.eval()
        return self

    def compile_net(self) -> None:
        """``torch.compile`` the wrapped net: guidance then runs its compiled forward and the
        backward AOTAutograd compiles with it (the same weights; first call pays)."""
        self._call = [torch.compile(self.net)]

    @property
    def compiled(self) -> bool:
        return self._call[0] is not self.net

    def preprocess(self, x0: Tensor) -> Tensor:
        """x̂₀ in [−1, 1] -> the net's input (``x0`` mode)."""
        return preprocess_x0(
            x0,
            to_unit=self.normalization != "identity",
            mean=self.mean,
            std=self.std,
            size=self.input_size,
        )

    def forward(self, x: Tensor, t: Tensor | None = None) -> Tensor:
        """Tempered logits: ``x`` is x_t (``noisy``, needs ``t``) or x̂₀ (``x0``)."""
        if self.input_mode == "noisy":
            if t is None:
                raise ValueError("a noisy-mode guidance classifier needs the timesteps t")
            logits = self._call[0](x, t)
        else:
            logits = self._call[0](self.preprocess(x))
        return logits / self.temperature

    def extra_repr(self) -> str:
        return (
            f"input_mode={self.input_mode}, normalization={self.normalization}, "
            f"input_size={self.input_size}, temperature={self.temperature}, "
            f"through_denoiser={self.through_denoiser}"
        )


def _check_wrapped_convention(
    net: nn.Module, input_mode: str, normalization: str, input_size: object
) -> None:
    """Nets behind :class:`calguide.nets.classifiers.Classifier` (duck-typed: ``noise_aware``
    and ``prepare``) already adapt [−1, 1] inputs; refuse a second adaptation and a mode the
    net cannot serve, so a config mistake fails here and not as silently wrong guidance."""
    noise_aware = getattr(net, "noise_aware", None)
    if noise_aware is None:
        return
    if input_mode == "noisy" and not noise_aware:
        raise ValueError(
            "guidance.classifier.input_mode=noisy needs a noise-aware classifier "
            "(use input_mode=x0 for off-the-shelf networks)"
        )
    if input_mode == "x0" and noise_aware:
        raise ValueError(
            "guidance.classifier.input_mode=x0 needs an off-the-shelf classifier; a noise-aware "
            "one takes x_t and t (use input_mode=noisy)"
        )
    if hasattr(net, "prepare") and (normalization != "identity" or input_size is not None):
        raise ValueError(
            "this classifier normalises and resizes its inputs itself; set "
            "guidance.classifier.normalization=identity and input_size=null"
        )


def _size_pair(size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    pair = (int(size), int(size)) if isinstance(size, int) else tuple(int(s) for s in size)
    if len(pair) != 2 or min(pair) < 1:
        raise ValueError(f"guidance.classifier.input_size must be an int or (H, W), got {size!r}")
    return pair  # type: ignore[return-value]
