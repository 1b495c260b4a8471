"""Copies of the bundled digits models with every weight times (1 + ε·N(0,1)): another machine's
last bits, as a test of whether a result depends on them.

    python experiments/perturb_weights.py --artifacts /tmp/perturbed      # ε = 1e-6, seed 0
    make run ARTIFACTS=/tmp/perturbed                                     # uses the copies

Every floating-point tensor of every bundled file (both denoisers, the guidance, noise-aware and
evaluation classifiers; buffers such as BatchNorm statistics included) is multiplied by
(1 + ε·z), z ~ N(0, 1) drawn from a seeded generator, and written where ``make train-bundle``
would put a trained model (``<artifacts>/digits/...``), which every digits config takes in
preference to the bundled file. ε = 1e-6 is about eight float32 roundings (2⁻²³ ≈ 1.2e-7): more
than a different summation order changes, so a verdict that survives it does not hang on a
machine's arithmetic.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

from calguide.bundled import bundled_dir
from calguide.io import atomic_torch_save

SOURCES = {  # bundled file -> where a trained copy lives under the artifacts folder
    "digits/unet_tiny.pt": "digits/unet_tiny/denoiser.pt",
    "digits/unet_tiny_uncond.pt": "digits/unet_tiny_uncond/denoiser.pt",
    "digits/digits_resnet-clean-ce-s0.pt": "digits/classifiers/digits_resnet-clean-ce-s0.pt",
    "digits/digits_noisy-noisy-ce-s0.pt": "digits/classifiers/digits_noisy-noisy-ce-s0.pt",
    "digits/digits_eval-clean-ce-s1.pt": "digits/classifiers/digits_eval-clean-ce-s1.pt",
}


def perturb(value: Any, eps: float, generator: torch.Generator) -> tuple[Any, int]:
    """``value`` with every floating tensor inside it perturbed; (copy, tensors perturbed)."""
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        z = torch.randn(value.shape, generator=generator, dtype=torch.float64)
        return (value.double() * (1.0 + eps * z)).to(value.dtype), 1
    if isinstance(value, dict):
        out, count = {}, 0
        for key, item in value.items():
            out[key], n = perturb(item, eps, generator)
            count += n
        return out, count
    if isinstance(value, (list, tuple)):
        items = [perturb(item, eps, generator) for item in value]
        return type(value)(i for i, _ in items), sum(n for _, n in items)
    return value, 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, required=True, help="where the copies go")
    parser.add_argument("--eps", type=float, default=1e-6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--keep",
        action="append",
        default=[],
        help="leave the bundled files whose name contains this as they are (not copied)",
    )
    args = parser.parse_args(argv)
    generator = torch.Generator().manual_seed(args.seed)
    for name, target in SOURCES.items():
        if any(part in name for part in args.keep):
            print(f"{name}: kept as bundled")
            continue
        payload = torch.load(bundled_dir() / name, map_location="cpu", weights_only=True)
        changed, count = perturb(payload, args.eps, generator)
        out = args.artifacts / target
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_torch_save(changed, out)
        print(f"{name}: {count} tensors × (1 + {args.eps:g}·N(0,1)) -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
