"""Guided-sampling cost: what one reverse step costs per strategy, against the floor.

    python experiments/bench.py --pair digits --batch 50
    python experiments/bench.py --pair adm128 --batch 2 --repeats 5      # random ADM-128 + R101

Times (median of repeated runs after warm-up, one process): the denoiser forward alone, the
classifier forward+backward alone, one unguided DDPM step and one guided step per strategy.
Reports images/s, guided/unguided and strategy/vanilla ratios, and the floor ratio
(denoiser fwd + classifier fwd+bwd) / denoiser fwd. Writes JSON and markdown with the machine.
Weights are random: the cost of a step does not depend on their values.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from calguide.config import conf_dir
from calguide.diffusion import GaussianDiffusion, ddpm_step
from calguide.guidance import GuidanceClassifier, build_schedule, build_strategy, make_guidance
from calguide.nets import create_unet
from calguide.nets.classifiers import build_classifier

STRATEGIES = (
    "vanilla",
    "forward_kl",
    "reverse_kl",
    "js",
    "hellinger",
    "tv",
    "chi2",
    "entropy",
    "tilted",
    "elucd",
)

# (denoiser config, classifier config): flags and params come from conf/, as in real runs.
PAIRS = {"digits": ("unet_tiny", "digits_resnet"), "adm128": ("adm128", "resnet101")}


def pair_spec(pair: str) -> tuple[dict, DictConfig]:
    denoiser, classifier = PAIRS[pair]
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        cfg = compose("sample", overrides=[f"denoiser={denoiser}", f"classifier={classifier}"])
    return OmegaConf.to_container(cfg.denoiser.flags, resolve=True), cfg.classifier


def median_time(fn: Callable[[], object], repeats: int, warmup: int, device: torch.device) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def machine(device: torch.device) -> str:
    cpu = platform.processor() or platform.machine()
    text = f"{platform.system()} {cpu}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
    text += f"{torch.get_num_threads()} threads"
    if device.type == "cuda":
        text += f", {torch.cuda.get_device_name(device)}"
    return text


def bench(pair: str, batch: int, repeats: int, warmup: int, device: torch.device) -> dict:
    flags, clf = pair_spec(pair)
    torch.manual_seed(0)
    unet = create_unet(**flags).to(device).eval().requires_grad_(False)
    classifier = (
        build_classifier(
            clf.arch,
            OmegaConf.to_container(clf.params, resolve=True),
            normalize=clf.normalize,
            input_size=clf.input_size,
        )
        .to(device)
        .eval()
    )
    size, channels = flags["image_size"], flags.get("in_channels", 3)
    chain = GaussianDiffusion.from_config(learn_sigma=True, respacing="250")
    x = torch.randn(batch, channels, size, size, device=device)
    labels = torch.randint(0, flags["num_classes"], (batch,), device=device)
    i = chain.num_timesteps // 2
    t = torch.full((batch,), i, device=device, dtype=torch.long)
    t_model = chain.model_timesteps(t)
    noise = torch.randn_like(x)

    def denoiser_fwd():
        with torch.no_grad():
            return unet(x, t_model, labels)

    def classifier_fwd_bwd():
        inp = x.detach().requires_grad_(True)
        logits = classifier(inp)
        (g,) = torch.autograd.grad(logits.log_softmax(1)[:, 0].sum(), inp)
        return g

    def step_with(guidance):
        def run():
            out = denoiser_fwd()
            return ddpm_step(chain, out, x, t, noise, guidance=guidance).sample

        return run

    results = {
        "pair": pair,
        "batch": batch,
        "device": str(device),
        "machine": machine(device),
        "denoiser_fwd_s": median_time(denoiser_fwd, repeats, warmup, device),
        "classifier_fwd_bwd_s": median_time(classifier_fwd_bwd, repeats, warmup, device),
        "unguided_step_s": median_time(step_with(None), repeats, warmup, device),
        "strategies": {},
    }
    wrapped = GuidanceClassifier(classifier, input_mode="x0")
    for name in STRATEGIES:
        hook = make_guidance(
            wrapped,
            build_strategy(name),
            build_schedule("constant", 1.0),
            1000,
            record_diagnostics=True,
        ).bind(labels)
        results["strategies"][name] = median_time(step_with(hook), repeats, warmup, device)
        hook.diagnostics.clear()
    floor = (results["denoiser_fwd_s"] + results["classifier_fwd_bwd_s"]) / results[
        "denoiser_fwd_s"
    ]
    results["floor_ratio"] = floor
    results["guided_over_unguided"] = {
        k: v / results["unguided_step_s"] for k, v in results["strategies"].items()
    }
    results["strategy_over_vanilla"] = {
        k: v / results["strategies"]["vanilla"] for k, v in results["strategies"].items()
    }
    return results


def markdown(results: dict) -> str:
    r = results
    lines = [
        f"**{r['pair']}**, batch {r['batch']}, {r['device']} — {r['machine']}",
        "",
        f"- denoiser forward: {r['denoiser_fwd_s'] * 1e3:.1f} ms; classifier fwd+bwd: "
        f"{r['classifier_fwd_bwd_s'] * 1e3:.1f} ms; unguided step: "
        f"{r['unguided_step_s'] * 1e3:.1f} ms "
        f"({r['batch'] / r['unguided_step_s']:.1f} images·steps/s)",
        f"- floor ratio (denoiser + classifier fwd/bwd) / denoiser: {r['floor_ratio']:.3f}",
        "",
        "| strategy | step (ms) | images·steps/s | guided / unguided | / vanilla |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, seconds in r["strategies"].items():
        lines.append(
            f"| {name} | {seconds * 1e3:.1f} | {r['batch'] / seconds:.1f} | "
            f"{r['guided_over_unguided'][name]:.3f} | {r['strategy_over_vanilla'][name]:.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pair", choices=sorted(PAIRS), default="digits")
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=Path("bench"))
    args = parser.parse_args()
    results = bench(args.pair, args.batch, args.repeats, args.warmup, torch.device(args.device))
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"bench_{args.pair}_b{args.batch}_{args.device}"
    stem.with_suffix(".json").write_text(json.dumps(results, indent=2))
    text = markdown(results)
    stem.with_suffix(".md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
