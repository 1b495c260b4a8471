"""Sanity check of the domain metrics on digits: real vs real, samples vs real, noise vs real.

    python experiments/fid_sanity.py --artifacts artifacts --samples <samples.npz>

Prints FID / precision / recall / class accuracy against the held-out split for (a) the
training split, (b) a sample file (e.g. unguided), (c) Gaussian-noise images — the expected
order is (a) ≪ (b) ≪ (c).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from calguide.assembly import metrics_callback
from calguide.config import compose_spec
from calguide.data import digits_split
from calguide.metrics.reference import to_uint8_nhwc
from calguide.modules.evaluate import evaluate_samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--samples", type=Path, required=True)
    args = parser.parse_args()
    overrides = [f"paths.artifacts={args.artifacts.resolve()}", "samples=unused.npz"]
    spec = compose_spec("eval", overrides)
    callback = metrics_callback(spec.metrics, spec.data, None)
    data = spec.data
    train = digits_split(data.image_size, data.heldout_fraction, data.split_seed)["train"]
    train_images = to_uint8_nhwc(train.tensors[0]).numpy()  # data: the exact (rounding) inverse
    train_labels = train.tensors[1].numpy()
    with np.load(args.samples) as npz:
        sample_images, sample_labels = npz["arr_0"], npz["arr_1"]
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(len(sample_images), *sample_images.shape[1:], generator=generator) * 0.5
    noise_images = ((noise.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    sets = {
        "training split (real)": (train_images, train_labels),
        f"samples ({args.samples.parent.name})": (sample_images, sample_labels),
        "Gaussian noise images": (noise_images, sample_labels),
    }
    print("| images vs held-out digits | n | FID | precision | recall | class acc |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, (images, labels) in sets.items():
        r = evaluate_samples(callback, images, labels)
        print(
            f"| {name} | {len(images)} | {r['fid']:.2f} | {r['precision']:.3f} | "
            f"{r['recall']:.3f} | {r['class_acc']:.3f} |"
        )


if __name__ == "__main__":
    main()
