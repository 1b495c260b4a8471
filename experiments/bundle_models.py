"""Copy the digits models trained by ``make train-bundle`` into ``calguide/bundled/digits/``
and write their manifest: command, calguide version, seed, sha256, held-out metrics.

    make bundle                     # trains what is missing, then runs this
    python experiments/bundle_models.py --artifacts artifacts

Held-out metrics: a classifier's are the ones its export recorded (accuracy, NLL, ECE, smECE on
the held-out split, per noise bucket for the noise-aware one); a denoiser's is its ε-MSE on the
held-out split at 10 fixed timesteps with seeded noise, computed here.
"""

from __future__ import annotations

import argparse
import json
import shutil
from importlib.metadata import version
from pathlib import Path

import torch

from calguide.bundled import MANIFEST, bundled_dir
from calguide.io import atomic_write_text, content_sha256

COMMON = "paths.artifacts=<artifacts>"
MODELS = {
    "digits/unet_tiny.pt": {
        "source": "digits/unet_tiny/denoiser.pt",
        "command": f"calguide-train {COMMON}",
        "seed": 0,
        "what": "class-conditional tiny ADM UNet (ε, learned Σ), 16×16 digits",
    },
    "digits/unet_tiny_uncond.pt": {
        "source": "digits/unet_tiny_uncond/denoiser.pt",
        "command": f"calguide-train {COMMON} denoiser=unet_tiny_uncond",
        "seed": 0,
        "what": "unconditional tiny ADM UNet: guidance alone supplies the class",
    },
    "digits/digits_resnet-clean-ce-s0.pt": {
        "source": "digits/classifiers/digits_resnet-clean-ce-s0.pt",
        "command": (
            f"calguide-calibrate {COMMON} calibration=ce inputs.mode=clean init=null "
            "trainer.max_steps=600 optim.lr=2e-3 evaluation.diagrams=[clean]"
        ),
        "seed": 0,
        "what": (
            "off-the-shelf clean ResNet classifier (the one guidance and calibration start from)"
        ),
    },
    "digits/digits_noisy-noisy-ce-s0.pt": {
        "source": "digits/classifiers/digits_noisy-noisy-ce-s0.pt",
        "command": (
            f"calguide-calibrate {COMMON} classifier=digits_noisy inputs.mode=noisy "
            "calibration=ce init=null trainer.max_steps=600 optim.lr=2e-3"
        ),
        "seed": 0,
        "what": "noise-aware ADM-style classifier on x_t (ADM-G's setting)",
    },
    "digits/digits_eval-clean-ce-s1.pt": {
        "source": "digits/classifiers/digits_eval-clean-ce-s1.pt",
        "command": (
            f"calguide-calibrate {COMMON} classifier=digits_eval calibration=ce "
            "inputs.mode=clean init=null seed=1 trainer.max_steps=600 optim.lr=2e-3 "
            "evaluation.diagrams=[clean]"
        ),
        "seed": 1,
        "what": "evaluation network (features for FID / precision / recall, class accuracy)",
    },
}


def denoiser_heldout_mse(path: Path) -> dict[str, float]:
    """ε-MSE on the held-out digits at 10 fixed timesteps (seeded noise), per t and mean."""
    from calguide import assembly
    from calguide.config.shared import DiffusionConfig
    from calguide.data import digits_split

    loaded = assembly.load_denoiser_file(path, None, f"denoiser {path}")
    net, flags = loaded.net, loaded.flags
    heldout = digits_split(int(flags["image_size"]), 0.2, 0)["heldout"]
    images, labels = heldout.tensors
    # The base chain as a run builds it: the file's recorded diffusion settings over the defaults.
    chain = assembly.chain(DiffusionConfig(), flags, loaded.diffusion, respaced=False)
    generator = torch.Generator().manual_seed(0)
    per_t = {}
    with torch.no_grad():
        for t in range(50, 1000, 100):
            noise = torch.randn(images.shape, generator=generator)
            steps = torch.full((images.shape[0],), t)
            x_t = chain.q_sample(images, steps, noise)
            cond = labels if flags.get("class_cond") else None
            eps, _ = chain.split_output(net(x_t, steps, cond).float(), x_t)
            per_t[str(t)] = round(float(((eps - noise) ** 2).mean()), 5)
    return {"eps_mse_mean": round(sum(per_t.values()) / len(per_t), 5), "eps_mse_by_t": per_t}


def classifier_metrics(path: Path) -> dict:
    raw = torch.load(path, map_location="cpu", weights_only=True)
    return (raw.get("meta") or {}).get("metrics") or {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    args = parser.parse_args()
    entries = {}
    for name, spec in MODELS.items():
        source = args.artifacts / spec["source"]
        if not source.is_file():
            raise SystemExit(f"bundle: {source} is missing; train it with: {spec['command']}")
        target = bundled_dir() / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        metrics = denoiser_heldout_mse(source) if "unet" in name else classifier_metrics(source)
        entries[name] = {
            "what": spec["what"],
            "command": spec["command"],
            "calguide_version": version("calguide"),
            "seed": spec["seed"],
            "sha256": content_sha256(target),
            "bytes": target.stat().st_size,
            "heldout_metrics": metrics,
        }
        size = target.stat().st_size / 1e6
        print(f"bundle: {name} ({size:.1f} MB) {entries[name]['sha256'][:12]}")
    text = json.dumps({"format": 1, "models": entries}, indent=2, sort_keys=True) + "\n"
    atomic_write_text(text, bundled_dir() / MANIFEST)
    print(f"bundle: manifest -> {bundled_dir() / MANIFEST}")


if __name__ == "__main__":
    main()
