"""Feature extractors for FID / precision / recall, with one interface.

A :class:`FeatureExtractor` has a ``name`` (identifies the feature space, e.g. in cache keys),
a feature ``dim``, and maps a uint8 image batch ``[N, H, W, C]`` (the sampling module's output
layout; ``[N, H, W]`` is taken as grey) to float32 features ``[N, dim]`` on the extractor's
device. Extractors run without gradients, in eval mode, in batches of ``batch_size``, and can be
moved with ``.to(device)``.

- :class:`InceptionExtractor`: torch-fidelity's TF-compatible Inception-v3, 2048-d pool
  features — the standard ImageNet FID space. Its weights are a file that torch-fidelity
  downloads into the torch hub cache; offline, a missing file raises
  :class:`InceptionWeightsNotFoundError` saying which file to put where.
- :class:`ClassifierFeatureExtractor`: penultimate features of any classifier exposing
  ``features(x)`` (the ResNets and ``small_resnet`` in :mod:`calguide.nets`), plus its
  ``logits`` for class accuracy — the domain extractor for the embedded data.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn

__all__ = [
    "INCEPTION_WEIGHTS_FILE",
    "ClassifierFeatureExtractor",
    "FeatureExtractor",
    "InceptionExtractor",
    "InceptionWeightsNotFoundError",
    "as_uint8_nhwc",
    "inception_weights_path",
    "uint8_to_signed",
]

# torch-fidelity's InceptionV3 weights (converted from the TF 2015-12-05 graph): the file name
# below is what torch.hub caches under <hub dir>/checkpoints when torch-fidelity downloads it.
EXTRACTOR_KINDS = ("none", "domain", "inception")
"""``metrics.kind``: no metrics, a domain classifier's features, or Inception-v3 (ADM's suite)."""
INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"


@runtime_checkable
class FeatureExtractor(Protocol):
    """uint8 images ``[N, H, W, C]`` → float32 features ``[N, dim]``."""

    name: str
    dim: int

    def __call__(self, images_uint8: Tensor) -> Tensor: ...


class InceptionWeightsNotFoundError(FileNotFoundError):
    """The Inception-v3 weights file is neither present nor downloadable."""


def as_uint8_nhwc(images: Tensor) -> Tensor:
    """Validate a uint8 image batch and return it as ``[N, H, W, C]`` (grey ``[N,H,W]`` → C=1)."""
    if not isinstance(images, Tensor):
        images = torch.as_tensor(images)
    if images.dtype != torch.uint8:
        raise TypeError(f"expected uint8 images [N, H, W, C], got dtype {images.dtype}")
    if images.ndim == 3:
        images = images.unsqueeze(-1)
    if images.ndim != 4:
        raise ValueError(f"expected images [N, H, W, C], got shape {tuple(images.shape)}")
    return images


def uint8_to_signed(images_nhwc: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """uint8 ``[N, H, W, C]`` → ``[N, C, H, W]`` in [−1, 1] (0 → −1, 255 → 1, as the data)."""
    return images_nhwc.permute(0, 3, 1, 2).to(dtype).div(127.5).sub(1.0).contiguous()


def _match_channels(x_nhwc: Tensor, channels: int | None) -> Tensor:
    c = x_nhwc.shape[-1]
    if channels is None or c == channels:
        return x_nhwc
    if c == 1:
        return x_nhwc.expand(*x_nhwc.shape[:-1], channels)
    raise ValueError(f"images have {c} channels but the extractor takes {channels}")


def inception_weights_path() -> Path:
    """Where torch-fidelity's download lands: ``<torch.hub.get_dir()>/checkpoints/<file>``.

    ``torch.hub.get_dir()`` is ``$TORCH_HOME/hub`` (``TORCH_HOME`` defaults to
    ``$XDG_CACHE_HOME/torch``, i.e. ``~/.cache/torch``).
    """
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILE


def _inception_url() -> str:
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    return URL_INCEPTION_V3


def _missing_weights_message(path: Path, reason: str) -> str:
    return (
        f"Inception-v3 weights for FID not available: {reason}.\n"
        f"  file expected: {INCEPTION_WEIGHTS_FILE}\n"
        f"  place it at:   {path}\n"
        f"  (the torch hub checkpoints folder, $TORCH_HOME/hub/checkpoints; "
        f"TORCH_HOME={os.environ.get('TORCH_HOME', '<unset: ~/.cache/torch>')})\n"
        f"  download it, on a machine with internet, from: {_inception_url()}\n"
        f"  or pass weights_path=<file> to InceptionExtractor."
    )


_DOWNLOAD_TIMEOUT_S = 60.0


def _download_weights(path: Path) -> None:
    """Fetch torch-fidelity's weights into ``path`` (atomic: torch.hub writes a .partial).

    torch.hub sets no timeout; a firewall that drops packets would hang the job, so a socket
    timeout applies while downloading (restored afterwards).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(_DOWNLOAD_TIMEOUT_S)
    try:
        torch.hub.download_url_to_file(_inception_url(), str(path), progress=False)
    finally:
        socket.setdefaulttimeout(old)


def _resolve_inception_weights(weights_path: str | os.PathLike | None, download: bool) -> Path:
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise InceptionWeightsNotFoundError(
                _missing_weights_message(path, f"weights_path {str(path)!r} does not exist")
            )
        return path
    path = inception_weights_path()
    if path.is_file():
        return path
    if not download:
        raise InceptionWeightsNotFoundError(
            _missing_weights_message(path, "file not cached and download=False")
        )
    try:
        _download_weights(path)
    except Exception as exc:  # no network, proxy, HTTP error, disk error: one clear message
        raise InceptionWeightsNotFoundError(
            _missing_weights_message(path, f"not cached and the download failed ({exc!r})")
        ) from exc
    if not path.is_file():
        raise InceptionWeightsNotFoundError(
            _missing_weights_message(path, "download finished but the file is missing")
        )
    return path


class InceptionExtractor:
    """Inception-v3 pool features (2048-d) through torch-fidelity's ``FeatureExtractorInceptionV3``.

    Images of any size are resized inside the network to 299×299 with TF1-compatible bilinear
    interpolation (as torch-fidelity and the TF FID code do); grey images are repeated to three
    channels. ``weights_path`` overrides the torch hub cache location; with ``download=False``
    nothing is fetched. The file is checked to be a plain state dict (``weights_only=True``)
    before torch-fidelity loads it.
    """

    name = "inception-v3-compat-2048"
    dim = 2048

    def __init__(
        self,
        weights_path: str | os.PathLike | None = None,
        *,
        download: bool = True,
        batch_size: int = 100,
        device: torch.device | str | None = None,
    ) -> None:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        path = _resolve_inception_weights(weights_path, download)
        try:
            torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise InceptionWeightsNotFoundError(
                _missing_weights_message(
                    path, f"the file exists but is not a readable state dict ({exc!r}); delete it"
                )
            ) from exc
        self.weights_path = path
        self.batch_size = batch_size
        self.model = FeatureExtractorInceptionV3(
            "inception-v3-compat", ["2048"], feature_extractor_weights_path=str(path)
        )
        self.model.eval().requires_grad_(False)
        if device is not None:
            self.model.to(device)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: torch.device | str) -> InceptionExtractor:
        self.model.to(device)
        return self

    def __call__(self, images_uint8: Tensor) -> Tensor:
        x = _match_channels(as_uint8_nhwc(images_uint8), 3)
        dev = self.device
        out = []
        with torch.no_grad():
            for start in range(0, x.shape[0], self.batch_size):
                chunk = x[start : start + self.batch_size].to(dev).permute(0, 3, 1, 2)
                out.append(self.model(chunk.contiguous())[0].to(torch.float32))
        if not out:
            return torch.empty(0, self.dim, dtype=torch.float32, device=dev)
        return torch.cat(out)


class ClassifierFeatureExtractor:
    """Penultimate features (``net.features``) and logits of an image classifier.

    uint8 ``[N, H, W, C]`` images are mapped to ``[N, C, H, W]`` floats in [−1, 1] (the data
    convention the project's classifiers are trained on), grey images are repeated when the
    network's ``conv1`` takes three channels, then ``preprocess`` (optional: e.g. resizing or
    ImageNet normalisation, applied to the [−1, 1] tensor) and ``net.features``. Logits are
    ``net.fc(features)`` when the network has an ``fc`` layer (the case for calguide's ResNets,
    so one forward pass gives both), otherwise ``net(x)``.
    """

    def __init__(
        self,
        net: nn.Module,
        name: str,
        preprocess: Callable[[Tensor], Tensor] | None = None,
        *,
        batch_size: int = 256,
        device: torch.device | str | None = None,
        dim: int | None = None,
    ) -> None:
        if not callable(getattr(net, "features", None)):
            raise TypeError(f"{type(net).__name__} has no features(x) method")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.net = net
        self.name = name
        self.preprocess = preprocess
        self.batch_size = batch_size
        self._dim = dim if dim is not None else getattr(net, "num_features", None)
        conv1 = getattr(net, "conv1", None)
        self.in_channels: int | None = getattr(conv1, "in_channels", None)
        self.net.eval().requires_grad_(False)
        if device is not None:
            self.net.to(device)

    @property
    def dim(self) -> int:
        if self._dim is None:
            raise AttributeError("feature dim unknown until the first call (pass dim=...)")
        return int(self._dim)

    @property
    def device(self) -> torch.device:
        p = next(self.net.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    def to(self, device: torch.device | str) -> ClassifierFeatureExtractor:
        self.net.to(device)
        return self

    def _inputs(self, images: Tensor) -> Tensor:
        p = next(self.net.parameters(), None)
        dtype = p.dtype if p is not None and p.is_floating_point() else torch.float32
        x = uint8_to_signed(images.to(self.device), dtype)
        return self.preprocess(x) if self.preprocess is not None else x

    def _run(self, images_uint8: Tensor, want_features: bool, want_logits: bool):
        x_all = _match_channels(as_uint8_nhwc(images_uint8), self.in_channels)
        feats, logits = [], []
        self.net.eval()
        with torch.no_grad():
            for start in range(0, x_all.shape[0], self.batch_size):
                x = self._inputs(x_all[start : start + self.batch_size])
                f = self.net.features(x)
                if want_features:
                    feats.append(f.to(torch.float32))
                if want_logits:
                    fc = getattr(self.net, "fc", None)
                    z = fc(f) if isinstance(fc, nn.Module) else self.net(x)
                    logits.append(z.to(torch.float32))
        if feats and self._dim is None:
            self._dim = feats[0].shape[1]

        def cat(parts: list[Tensor]) -> Tensor | None:
            return torch.cat(parts) if parts else None

        return cat(feats), cat(logits)

    def __call__(self, images_uint8: Tensor) -> Tensor:
        """Features ``[N, dim]`` float32 on the extractor's device."""
        f, _ = self._run(images_uint8, True, False)
        if f is None:
            return torch.empty(0, self._dim or 0, device=self.device)
        return f

    def logits(self, images_uint8: Tensor) -> Tensor:
        """Logits ``[N, K]`` float32 on the extractor's device."""
        _, z = self._run(images_uint8, False, True)
        if z is None:
            return torch.empty(0, 0, device=self.device)
        return z

    def features_and_logits(self, images_uint8: Tensor) -> tuple[Tensor, Tensor]:
        """Both in one pass (the callback uses this when one network serves both roles)."""
        f, z = self._run(images_uint8, True, True)
        if f is None or z is None:
            empty = torch.empty(0, 0, device=self.device)
            return empty, empty
        return f, z
