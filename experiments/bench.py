"""Guided-sampling cost: what one reverse step costs per strategy, against the floor.

    python experiments/bench.py --pair digits --batch 50
    python experiments/bench.py --pair adm128 --batch 2 --repeats 3 --strategies vanilla,js
    python experiments/bench.py --pair adm128 --batch 64 --fast-paths     # on a GPU

Times (median of repeated runs after warm-up, one process): the denoiser forward alone, the
classifier forward+backward alone, one unguided DDPM step and one guided step per strategy,
each through SamplingModule's own call path. Reports images/s, guided/unguided and
strategy/vanilla ratios, and the floor ratio (denoiser fwd + classifier fwd+bwd) / denoiser fwd.
``--fast-paths`` also times a vanilla guided step under each sampling switch (channels_last,
torch.compile, and bf16/fp16 autocast on CUDA) and their best combination against fp32 eager,
with the largest deviation of the step's output from fp32. The metrics line compares the
feature extraction of one batch with sampling it. Writes JSON and markdown with the machine.
Weights are random: the cost of a step does not depend on their values.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from calguide import assembly
from calguide.config import (
    ClassifierConfig,
    DiffusionConfig,
    conf_dir,
    guidance_config,
    validated,
)
from calguide.diffusion import ddpm_step
from calguide.guidance import GuidanceClassifier
from calguide.modules.sampling import SamplingModule
from calguide.nets import create_unet

STRATEGIES = (
    "vanilla",
    "rkl",
    "fkl",
    "js",
    "hellinger",
    "tv",
    "chi2",
    "entropy",
    "tilted",
)

# (denoiser config, classifier config): flags and params come from conf/, as in real runs.
PAIRS = {"digits": ("unet_tiny", "digits_resnet"), "adm128": ("adm128", "resnet101")}


def pair_spec(pair: str) -> tuple[dict, ClassifierConfig, DiffusionConfig]:
    """A pair's denoiser flags, classifier and diffusion sections, as a run composes them."""
    denoiser, classifier = PAIRS[pair]
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        cfg = compose(
            "sample",
            overrides=[
                f"denoiser={denoiser}",
                f"classifier={classifier}",
                "classifier.checkpoint=null",
                "denoiser.checkpoint=null",
            ],
        )
    return (
        dict(validated(cfg, "denoiser").flags),
        validated(cfg, "classifier"),
        validated(cfg, "diffusion"),
    )


def chain_of(diffusion: DiffusionConfig, flags: dict, respacing: str, sampler: str = "ddpm"):
    """The pair's chain at ``respacing`` (and the sampler entry), built as a run builds it."""
    spec = dataclasses.replace(diffusion, respacing=respacing, sampler=sampler, sampler_params={})
    return assembly.chain(spec, flags), assembly.sampler(spec)


def timed_call(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds for one call, with the GPU's queue drained before and after."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def median_time(fn: Callable[[], object], repeats: int, warmup: int, device: torch.device) -> float:
    for _ in range(warmup):
        fn()
    return statistics.median(timed_call(fn, device) for _ in range(repeats))


def interleaved_medians(
    fns: dict[str, Callable[[], object]], repeats: int, warmup: int, device: torch.device
) -> dict[str, float]:
    """Median time of each function, timed round-robin so that machine drift (other load,
    clock changes) hits every entry alike instead of whichever ran first."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(timed_call(fn, device))
    return {name: statistics.median(values) for name, values in times.items()}


def machine(device: torch.device) -> str:
    cpu = platform.processor() or platform.machine()
    text = f"{platform.system()} {cpu}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
    text += f"{torch.get_num_threads()} threads"
    if device.type == "cuda":
        text += f", {torch.cuda.get_device_name(device)}"
    return text


FAST_PATHS_CPU = {
    "fp32 eager": {},
    "channels_last": {"channels_last": True},
    "compile": {"compile": True},
    "channels_last + compile": {"channels_last": True, "compile": True},
}
FAST_PATHS_CUDA = {
    **FAST_PATHS_CPU,
    "bf16": {"precision": "bf16"},
    "fp16": {"precision": "fp16"},
    "bf16 + channels_last": {"precision": "bf16", "channels_last": True},
    "bf16 + channels_last + compile": {"precision": "bf16", "channels_last": True, "compile": True},
}


class Pair:
    """Random-weight denoiser + guidance classifier of a pair, and one batch mid-chain."""

    def __init__(self, pair: str, batch: int, device: torch.device) -> None:
        flags, clf, diffusion = pair_spec(pair)
        if device.type != "cuda":
            flags["use_fp16"] = False  # ADM's fp16 blocks are for GPUs; half convs crawl on CPU
        torch.manual_seed(0)
        self.flags = flags
        self.unet = create_unet(**flags).to(device).eval().requires_grad_(False)
        # Random weights with the config's convention (EluCD's Softplus(β) for the ResNets).
        self.classifier = assembly.classifier(clf, None, "bench classifier")[0].to(device).eval()
        size, channels = flags["image_size"], flags.get("in_channels", 3)
        self.shape = (channels, size, size)
        self.diffusion = diffusion
        self.chain, _ = chain_of(diffusion, flags, "250")
        self.x = torch.randn(batch, *self.shape, device=device)
        self.labels = torch.randint(0, flags["num_classes"], (batch,), device=device)
        i = self.chain.num_timesteps // 2
        self.t = torch.full((batch,), i, device=device, dtype=torch.long)
        self.t_model = self.chain.model_timesteps(self.t)
        self.noise = torch.randn_like(self.x)
        self.device = device

    def guidance(
        self, strategy: str | None, classifier: torch.nn.Module, schedule: str = "constant"
    ):
        if strategy is None:
            return None
        params = {"gamma": 0.3} if schedule == "elucd" else {}
        spec = guidance_config(strategy, scale=1.0, schedule=schedule, schedule_params=params)
        return assembly.guidance_with(spec, GuidanceClassifier(classifier, input_mode="x0"), 1000)

    def step(
        self, strategy: str | None, *, fresh_nets: bool = False, **switches
    ) -> Callable[[], torch.Tensor]:
        """One DDPM step through SamplingModule's call path with the given sampling switches
        (``fresh_nets``: on copies of the nets, which switches may convert in place)."""
        unet, classifier = self.unet, self.classifier
        if fresh_nets:
            unet, classifier = copy.deepcopy(unet), copy.deepcopy(classifier)
        module = SamplingModule(
            unet,
            self.chain,
            sample_shape=self.shape,
            class_cond=bool(self.flags.get("class_cond")),
            guidance=self.guidance(strategy, classifier),
            progress=False,
            **switches,
        ).to(self.device)
        call = module.model_fn(self.labels)
        guidance = module.bound_guidance(self.labels)
        x = self.x.contiguous(
            memory_format=torch.channels_last
            if switches.get("channels_last")
            else torch.contiguous_format
        )

        def run() -> torch.Tensor:
            out = call(x, self.t_model)
            result = ddpm_step(self.chain, out, x, self.t, self.noise, guidance=guidance).sample
            if guidance is not None:
                guidance.diagnostics.clear()
            return result

        return run


def bench(
    pair: str,
    batch: int,
    repeats: int,
    warmup: int,
    device: torch.device,
    strategies: tuple[str, ...] = STRATEGIES,
    fast_paths: bool = False,
) -> dict:
    p = Pair(pair, batch, device)

    def denoiser_fwd():
        with torch.no_grad():
            return p.unet(p.x, p.t_model, p.labels)

    def classifier_fwd_bwd():
        inp = p.x.detach().requires_grad_(True)
        logits = p.classifier(inp)
        (g,) = torch.autograd.grad(logits.log_softmax(1)[:, 0].sum(), inp)
        return g

    timed = interleaved_medians(
        {
            "denoiser_fwd_s": denoiser_fwd,
            "classifier_fwd_bwd_s": classifier_fwd_bwd,
            "unguided_step_s": p.step(None),
            **{f"strategy:{name}": p.step(name) for name in strategies},
        },
        repeats,
        warmup,
        device,
    )
    results = {
        "pair": pair,
        "batch": batch,
        "device": str(device),
        "machine": machine(device),
        **{k: v for k, v in timed.items() if not k.startswith("strategy:")},
        "strategies": {name: timed[f"strategy:{name}"] for name in strategies},
    }
    floor = (results["denoiser_fwd_s"] + results["classifier_fwd_bwd_s"]) / results[
        "denoiser_fwd_s"
    ]
    results["floor_ratio"] = floor
    results["guided_over_unguided"] = {
        k: v / results["unguided_step_s"] for k, v in results["strategies"].items()
    }
    if "vanilla" in results["strategies"]:
        results["strategy_over_vanilla"] = {
            k: v / results["strategies"]["vanilla"] for k, v in results["strategies"].items()
        }
    results["metrics"] = metrics_overhead(p, repeats, warmup)
    results["samplers"] = bench_samplers(p, repeats, warmup)
    if fast_paths:
        results["fast_paths"] = bench_fast_paths(p, repeats, warmup)
    return results


def bench_fast_paths(p: Pair, repeats: int, warmup: int) -> dict:
    """Vanilla guided step under each switch combination, against fp32 eager."""
    variants = FAST_PATHS_CUDA if p.device.type == "cuda" else FAST_PATHS_CPU
    reference = p.step("vanilla")()
    out: dict[str, dict] = {}
    runs: dict[str, Callable[[], torch.Tensor]] = {}
    for label, switches in variants.items():
        # Own copies of the nets: channels_last converts them in place.
        runs[label] = p.step("vanilla", fresh_nets=True, **switches)
        outputs: list[torch.Tensor] = []
        # The first call pays compilation when compile=True.
        first_s = timed_call(lambda run=runs[label], keep=outputs: keep.append(run()), p.device)
        first = outputs[0]
        out[label] = {
            "first_call_s": first_s,
            "max_abs_diff_vs_fp32": float((first.float() - reference.float()).abs().max()),
        }
    # Blocks (A B C D A B C D), not round-robin: compiled and eager code use different thread
    # pools, whose idle spinning would slow whichever runs right after the other.
    times: dict[str, list[float]] = {label: [] for label in runs}
    for _ in range(2):
        for label, run in runs.items():
            times[label].append(median_time(run, max(1, repeats // 2), warmup, p.device))
    for label, values in times.items():
        out[label]["step_s"] = statistics.median(values)
        out[label]["images_steps_per_s"] = p.x.shape[0] / out[label]["step_s"]
    base = out["fp32 eager"]["step_s"]
    for entry in out.values():
        entry["speedup"] = base / entry["step_s"]
    return out


SAMPLER_GRID = {"dpmpp_2m": (10, 15, 20, 25), "ddpm": (100, 250)}


def bench_samplers(p: Pair, repeats: int, warmup: int) -> dict:
    """Seconds per guided sample (EluCD's score and additive schedule, vanilla) for each
    sampler and step count: NFE × one step through the sampler entry / batch. A
    DPM-Solver++ step is timed in its second-order form (with a previous data prediction)."""
    runs: dict[str, Callable[[], torch.Tensor]] = {}
    for name, counts in SAMPLER_GRID.items():
        for nfe in counts:
            chain, sampler = chain_of(p.diffusion, p.flags, str(nfe), name)
            module = SamplingModule(
                p.unet, chain, sample_shape=p.shape, class_cond=bool(p.flags.get("class_cond")),
                guidance=p.guidance("vanilla", p.classifier, schedule="elucd"), progress=False,
            ).to(p.device)  # fmt: skip
            call, guidance = module.model_fn(p.labels), module.bound_guidance(p.labels)
            t = torch.full_like(p.t, nfe // 2)
            state = sampler.start(p.x)
            _, state = sampler.step(
                chain, call, p.x, t + 1, p.noise, state, guidance=guidance, clip_denoised=True
            )

            def run(sampler=sampler, chain=chain, call=call, guidance=guidance, t=t, state=state):
                out, _ = sampler.step(
                    chain, call, p.x, t, p.noise, state, guidance=guidance, clip_denoised=True
                )
                guidance.diagnostics.clear()
                return out.sample

            runs[f"{name} {nfe}"] = run
    timed = interleaved_medians(runs, repeats, warmup, p.device)
    batch = p.x.shape[0]
    out = {}
    for key, step_s in timed.items():
        nfe = int(key.split()[-1])
        out[key] = {"nfe": nfe, "step_s": step_s, "sample_s": nfe * step_s / batch}
    reference = out["ddpm 250"]["sample_s"]
    for entry in out.values():
        entry["vs_ddpm250"] = entry["sample_s"] / reference
    return out


def metrics_overhead(p: Pair, repeats: int, warmup: int) -> dict:
    """Feature extraction of one batch (the metrics callback's work per predict batch) vs
    sampling that batch (respaced steps × one vanilla guided step)."""
    from calguide.metrics.features import ClassifierFeatureExtractor

    extractor = ClassifierFeatureExtractor(
        p.classifier.net, name="bench", preprocess=p.classifier.prepare, batch_size=256
    )
    images = torch.randint(0, 256, (p.x.shape[0], *p.shape[1:], p.shape[0]), dtype=torch.uint8)
    extract_s = median_time(lambda: extractor(images.to(p.device)), repeats, warmup, p.device)
    step_s = median_time(p.step("vanilla"), repeats, warmup, p.device)
    sample_s = step_s * p.chain.num_timesteps
    return {"extract_batch_s": extract_s, "sample_batch_s": sample_s, "ratio": extract_s / sample_s}


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
    over_vanilla = r.get("strategy_over_vanilla", {})
    for name, seconds in r["strategies"].items():
        rel = f"{over_vanilla[name]:.3f}" if name in over_vanilla else "–"
        lines.append(
            f"| {name} | {seconds * 1e3:.1f} | {r['batch'] / seconds:.1f} | "
            f"{r['guided_over_unguided'][name]:.3f} | {rel} |"
        )
    m = r["metrics"]
    lines += [
        "",
        f"- metrics: extracting features of one batch takes {m['extract_batch_s'] * 1e3:.1f} ms, "
        f"{m['ratio'] * 100:.2f}% of sampling it ({m['sample_batch_s']:.1f} s for 250 steps)",
    ]
    lines += [
        "",
        "| sampler (vanilla, EluCD's score and schedule) | NFE | step (ms) | s per guided sample "
        "| / DDPM 250 |",
        "| --- | --- | --- | --- | --- |",
    ]
    for key, e in r["samplers"].items():
        lines.append(
            f"| {key.rsplit(' ', 1)[0]} | {e['nfe']} | {e['step_s'] * 1e3:.1f} | "
            f"{e['sample_s']:.3g} | {e['vs_ddpm250']:.3f} |"
        )
    if "fast_paths" in r:
        lines += [
            "",
            "| fast path (vanilla guided step) | step (ms) | images·steps/s | speedup | "
            "first call (s) | max |Δ| vs fp32 |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for label, e in r["fast_paths"].items():
            lines.append(
                f"| {label} | {e['step_s'] * 1e3:.1f} | {e['images_steps_per_s']:.1f} | "
                f"{e['speedup']:.2f}× | {e['first_call_s']:.1f} | {e['max_abs_diff_vs_fp32']:.1e} |"
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
    parser.add_argument("--strategies", default=",".join(STRATEGIES), help="comma-separated")
    parser.add_argument("--fast-paths", action="store_true", help="also time the fast paths")
    args = parser.parse_args()
    results = bench(
        args.pair,
        args.batch,
        args.repeats,
        args.warmup,
        torch.device(args.device),
        strategies=tuple(s for s in args.strategies.split(",") if s),
        fast_paths=args.fast_paths,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"bench_{args.pair}_b{args.batch}_{args.device}"
    stem.with_suffix(".json").write_text(json.dumps(results, indent=2))
    text = markdown(results)
    stem.with_suffix(".md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
