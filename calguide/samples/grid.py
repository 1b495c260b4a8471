"""Image grids: the picture people look at first after any sampling run."""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from torch import Tensor

from calguide.io import atomic_path


def to_uint8(images: Tensor) -> Tensor:
    """[-1, 1] float images (N×C×H×W) → uint8 N×H×W×C, truncated as ADM and EluCD do.

    ``((x + 1)·127.5).clamp(0, 255).to(uint8)`` truncates towards zero: that is how the
    published ImageNet samples (and so their FID / precision / recall) were quantised, so
    rounding would shift every pixel by up to one level against the numbers we compare with.
    """
    return (
        ((images.detach().float() + 1.0) * 127.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    )


def tile(images: Tensor, ncols: int, pad: int = 1) -> Tensor:
    """uint8 N×H×W×C images → one H'×W'×C mosaic, row-major, ``ncols`` per row."""
    if images.dim() != 4 or images.dtype != torch.uint8:
        raise ValueError("tile expects uint8 images of shape N×H×W×C")
    n, h, w, c = images.shape
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    canvas = torch.full(
        (nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), 255, dtype=torch.uint8
    )
    for i in range(n):
        r, col = divmod(i, ncols)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        canvas[top : top + h, left : left + w] = images[i]
    return canvas


def save_image_grid(
    images: Tensor, path: str | os.PathLike, ncols: int, *, upscale: int = 1
) -> Path:
    """Save [-1, 1] float or uint8 NHWC images as a PNG mosaic (atomically)."""
    from PIL import Image

    pixels = images if images.dtype == torch.uint8 else to_uint8(images)
    mosaic = tile(pixels, ncols).numpy()
    mode = "L" if mosaic.shape[-1] == 1 else "RGB"
    picture = Image.fromarray(mosaic[..., 0] if mode == "L" else mosaic, mode=mode)
    if upscale > 1:
        picture = picture.resize(
            (picture.width * upscale, picture.height * upscale), Image.Resampling.NEAREST
        )
    with atomic_path(path) as tmp:
        picture.save(tmp, format="PNG")
    return Path(path)
