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
import json
import statistics
from collections.abc import Callable
from pathlib import Path

import torch

from calguide.perf.pairs import PAIRS, Pair, bench_samplers
from calguide.perf.timing import interleaved_medians, machine, median_time, timed_call

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
