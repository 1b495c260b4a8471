"""The prepared GPU check (``make gpu-check``): ADM-128 guided sampling on one CUDA GPU.

    python experiments/gpu_check.py --out DIR            # on a machine with a CUDA GPU
    python experiments/gpu_check.py --out DIR --smoke    # the same code paths, tiny, on a CPU

Measures, on the real architectures with random weights (ADM-128 with the official flags,
torchvision-layout ResNet-101 in EluCD's convention: x̂₀ at 128×128, Softplus(β = 3)):

1. per DDPM step at ``--batch`` (64): denoiser forward, classifier forward+backward, unguided
   step, guided step (vanilla and JS) for fp32 eager, TF32, bf16 autocast, bf16 + channels_last
   and bf16 + channels_last + compile; images/s; guided/unguided against the floor ratio; the
   largest |Δ| of a guided step's output against fp32;
2. a short end-to-end guided run (``--e2e-samples`` × ``--e2e-steps`` respaced steps) in fp32
   and in the fastest setting without compile, with the two outputs' pixel statistics compared
   and the peak GPU memory of each;
3. precision/recall (k = 3) and FID of ``--features`` × ``--features`` random 2,048-d features
   on the GPU (time, peak memory) and their equality with the CPU path on a 5,000-row subset;
4. the projected wall time of one 50,000-sample, 250-step guided ImageNet-128 run on this GPU.

Everything goes to ``DIR/gpu_check.json`` and ``DIR/gpu_check.md``, rewritten after every
section, so a run cut short by its time limit still leaves what it measured. A section that
would not fit the remaining ``--budget-s`` is skipped and says so. Without CUDA (and without
``--smoke``) it stops at once with one line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

NEEDS_CUDA = (
    "gpu-check: error: needs a CUDA GPU (torch.cuda.is_available() is False here); "
    "run it on a lent accelerator, see docs/performance.md"
)

# The step settings, in the order they are timed; each is sampling switches plus TF32.
VARIANTS: dict[str, dict[str, Any]] = {
    "fp32 eager": {"tf32": False},
    "tf32": {"tf32": True},
    # The official flag: ADM's own fp16 blocks (use_fp16=True), no autocast.
    "ADM use_fp16": {"tf32": False, "adm_fp16": True},
    "bf16": {"tf32": False, "precision": "bf16"},
    "bf16 + channels_last": {"tf32": False, "precision": "bf16", "channels_last": True},
    "bf16 + channels_last + compile": {
        "tf32": False,
        "precision": "bf16",
        "channels_last": True,
        "compile": True,
    },
}
# Budget a section must still have before it starts (seconds; compile pays its first call).
SECTION_COST_S = {
    "step": 25.0,
    "compile": 150.0,
    "e2e": 60.0,
    "metrics": 60.0,
    "samplers": 40.0,
}


def sampling_switches(switches: dict[str, Any]) -> dict[str, Any]:
    """The ``sampling.*`` switches of a setting (TF32 and ADM's fp16 flag are set apart)."""
    return {k: v for k, v in switches.items() if k not in ("tf32", "adm_fp16")}


def unzero_(module, std: float = 0.02, seed: int = 0) -> int:
    """Fill the weights ADM initialises to zero (output convs, attention projections) with
    small random values, in place; returns how many tensors it filled.

    With them at zero a random-weight UNet predicts ε̂ = 0 exactly and every block is an
    identity, so precision settings could not differ: the comparison would be empty.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    filled = 0
    with torch.no_grad():
        for param in module.parameters():
            if param.ndim > 1 and not bool(param.any()):
                noise = torch.randn(param.shape, generator=gen) * std
                param.copy_(noise.to(device=param.device, dtype=param.dtype))
                filled += 1
    return filled


def setting_module(pair, switches: dict[str, Any], chain):
    """A SamplingModule for one setting, vanilla-guided, on fresh copies of the pair's nets
    (channels_last converts nets in place; ADM's fp16 flag converts the UNet's torso)."""
    import copy

    from calguide.modules.sampling import SamplingModule

    unet = copy.deepcopy(pair.unet)
    if switches.get("adm_fp16"):
        unet.convert_to_fp16()
    return SamplingModule(
        unet,
        chain,
        sample_shape=pair.shape,
        class_cond=bool(pair.flags.get("class_cond")),
        guidance=pair.guidance("vanilla", copy.deepcopy(pair.classifier)),
        progress=False,
        **sampling_switches(switches),
    ).to(pair.device)


def cuda_ready() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


@contextmanager
def tf32(enabled: bool):
    """TF32 for matmuls and convolutions on, or both off (PyTorch enables it for cuDNN
    convolutions by default, so "fp32" needs it switched off explicitly)."""
    import torch

    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


class Report:
    """The check's record: a dict written as JSON and markdown after every section."""

    def __init__(self, out: Path, started: float, budget_s: float) -> None:
        self.out = out
        self.started = started
        self.budget_s = budget_s
        self.data: dict[str, Any] = {"sections": {}}
        out.mkdir(parents=True, exist_ok=True)

    def left_s(self) -> float:
        return self.budget_s - (time.perf_counter() - self.started)

    def fits(self, cost_s: float) -> bool:
        return self.left_s() >= cost_s

    def section(self, name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
        """Run one section; an exception is recorded (one line), not raised."""
        t0 = time.perf_counter()
        try:
            result = fn()
        except Exception as err:  # recorded, so the other sections still run
            result = {
                "error": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            }
        result["section_s"] = time.perf_counter() - t0
        self.data["sections"][name] = result
        self.write()
        print(f"gpu-check: {name} done in {result['section_s']:.1f} s", flush=True)
        return result

    def write(self) -> None:
        from calguide.io import atomic_write_text

        self.data["elapsed_s"] = time.perf_counter() - self.started
        atomic_write_text(json.dumps(self.data, indent=2), self.out / "gpu_check.json")
        atomic_write_text(markdown(self.data) + "\n", self.out / "gpu_check.md")


def environment(device) -> dict[str, Any]:
    import torch

    from calguide.perf.timing import machine

    info: dict[str, Any] = {"machine": machine(device), "torch": torch.__version__}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            gpu=props.name,
            capability=f"{props.major}.{props.minor}",
            memory_gib=props.total_memory / 2**30,
            multiprocessors=props.multi_processor_count,
            cuda=torch.version.cuda,
        )
    return info


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_reset(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def step_variant(pair, label: str, switches: dict[str, Any], repeats: int, warmup: int) -> dict:
    """Times of one setting: denoiser, classifier fwd+bwd, unguided, vanilla and JS steps.

    One SamplingModule per setting (so ``compile`` compiles once) on fresh copies of the nets
    (channels_last converts them in place); the JS hook shares the vanilla hook's classifier.
    """

    import torch

    from calguide.diffusion import ddpm_step
    from calguide.guidance import ClassifierGuidance, build_schedule, build_strategy
    from calguide.perf.timing import interleaved_medians, timed_call

    sampling = sampling_switches(switches)
    module = setting_module(pair, switches, pair.chain)
    vanilla = module.bound_guidance(pair.labels)
    classifier = module.guidance.classifier
    module.guidance = ClassifierGuidance(  # JS on the same classifier: the module binds it alike
        classifier, build_strategy("js"), build_schedule("constant", 1.0), 1000
    )
    js = module.bound_guidance(pair.labels)
    call = module.model_fn(pair.labels)
    layout = torch.channels_last if sampling.get("channels_last") else torch.contiguous_format
    x = pair.x.contiguous(memory_format=layout)

    def denoiser() -> torch.Tensor:
        with torch.no_grad():
            return call(x, pair.t_model)

    def classifier_fwd_bwd() -> torch.Tensor:
        inp = pair.x.detach().contiguous(memory_format=layout).requires_grad_(True)
        with module.autocast():
            logits = classifier(inp).float()
        (g,) = torch.autograd.grad(logits.log_softmax(1)[:, 0].sum(), inp)
        return g

    def step(hook) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            with torch.no_grad():
                out = call(x, pair.t_model)
            result = ddpm_step(pair.chain, out, x, pair.t, pair.noise, guidance=hook).sample
            if hook is not None:
                hook.diagnostics.clear()
            return result

        return run

    def outputs() -> dict[str, torch.Tensor]:
        """What the precision comparison looks at: the raw denoiser output, the guidance
        gradient and the step's sample (random weights saturate x̂₀'s clip, so the sample
        alone can hide a changed denoiser output)."""
        with torch.no_grad():
            out = call(x, pair.t_model)
        result = ddpm_step(pair.chain, out, x, pair.t, pair.noise, guidance=vanilla)
        vanilla.diagnostics.clear()
        return {"denoiser": out, "guidance": result.guidance, "sample": result.sample}

    with tf32(bool(switches.get("tf32"))):
        kept: list[dict[str, torch.Tensor]] = []
        first_s = timed_call(lambda: kept.append(outputs()), pair.device)
        timed = interleaved_medians(
            {
                "denoiser_fwd_s": denoiser,
                "classifier_fwd_bwd_s": classifier_fwd_bwd,
                "unguided_step_s": step(None),
                "vanilla_step_s": step(vanilla),
                "js_step_s": step(js),
            },
            repeats,
            warmup,
            pair.device,
        )
    batch = pair.x.shape[0]
    floor = (timed["denoiser_fwd_s"] + timed["classifier_fwd_bwd_s"]) / timed["denoiser_fwd_s"]
    return {
        **timed,
        "first_call_s": first_s,
        "outputs": {k: v.float().cpu() for k, v in kept[0].items()},
        "images_steps_per_s": {
            k.removesuffix("_step_s"): batch / timed[k]
            for k in ("unguided_step_s", "vanilla_step_s", "js_step_s")
        },
        "floor_ratio": floor,
        "guided_over_unguided": {
            "vanilla": timed["vanilla_step_s"] / timed["unguided_step_s"],
            "js": timed["js_step_s"] / timed["unguided_step_s"],
        },
    }


def steps_section(
    pair, report: Report, variants: dict[str, dict[str, Any]], repeats: int, warmup: int
) -> dict[str, Any]:
    out: dict[str, Any] = {"batch": int(pair.x.shape[0]), "variants": {}}
    reference = None
    for label, switches in variants.items():
        cost = SECTION_COST_S["compile" if switches.get("compile") else "step"]
        if not report.fits(cost):
            out["variants"][label] = {"skipped": f"budget: {report.left_s():.0f} s left"}
            continue
        try:
            entry = step_variant(pair, label, switches, repeats, warmup)
        except Exception as err:  # one failing setting must not lose the others
            out["variants"][label] = {"error": f"{type(err).__name__}: {err}".splitlines()[0]}
            continue
        outputs = entry.pop("outputs")
        if reference is None:
            reference = outputs
        entry["diff_vs_fp32"] = {
            name: {
                "max_abs": float((value - reference[name]).abs().max()),
                "rel_l2": float((value - reference[name]).norm() / reference[name].norm()),
            }
            for name, value in outputs.items()
        }
        out["variants"][label] = entry
        report.data["sections"]["steps"] = out
        report.write()
    timed = {k: v for k, v in out["variants"].items() if "vanilla_step_s" in v}
    if timed:
        out["fastest_guided"] = min(timed, key=lambda k: timed[k]["vanilla_step_s"])
    return out


def e2e_section(pair, samples: int, steps: int, fast: str) -> dict[str, Any]:
    """The same seeded samples, all ``steps`` respaced steps, in fp32 and in ``fast``."""

    import torch

    from calguide.perf.pairs import chain_of

    chain, _ = chain_of(pair.diffusion, pair.flags, str(steps))
    batch = {
        "indices": torch.arange(samples),
        "labels": torch.randint(0, int(pair.flags["num_classes"]), (samples,)),
    }
    out: dict[str, Any] = {"samples": samples, "steps": steps, "runs": {}}
    images: dict[str, torch.Tensor] = {}
    for label in dict.fromkeys(("fp32 eager", fast)):
        switches = VARIANTS[label]
        module = setting_module(pair, switches, chain)
        _peak_reset(pair.device)
        with tf32(bool(switches.get("tf32"))):
            _sync(pair.device)
            t0 = time.perf_counter()
            result = module.predict_step(batch)
            _sync(pair.device)
            seconds = time.perf_counter() - t0
        images[label] = result["images"].float()
        out["runs"][label] = {
            "seconds": seconds,
            "images_per_s": samples / seconds,
            "images_steps_per_s": samples * steps / seconds,
            "peak_gib": _peak_gib(pair.device),
            "pixel_mean": float(images[label].mean()),
            "pixel_std": float(images[label].std()),
        }
        del module
    a, b = images["fp32 eager"], images[fast]
    diff = (a - b).abs()
    out["fast"] = fast
    out["uint8_mean_abs_diff"] = float(diff.mean())
    out["uint8_share_diff_over_8"] = float((diff > 8).float().mean())
    out["uint8_max_abs_diff"] = float(diff.max())
    return out


def metrics_section(device, n: int, dim: int, subset: int) -> dict[str, Any]:
    """Precision/recall and FID of two random ``n`` × ``dim`` feature sets on ``device``, and
    the GPU results against the CPU path on a ``subset``-row slice."""
    import torch

    from calguide.metrics.fid import FeatureStats, fid_from_features, fid_from_stats
    from calguide.metrics.prdc import precision_recall

    gen = torch.Generator().manual_seed(0)
    real = torch.randn(n, dim, generator=gen)
    fake = 0.9 * torch.randn(n, dim, generator=gen) + 0.05
    out: dict[str, Any] = {"n": n, "dim": dim}
    real_d, fake_d = real.to(device), fake.to(device)
    _peak_reset(device)
    _sync(device)
    t0 = time.perf_counter()
    precision, recall = precision_recall(real_d, fake_d, 3, device=device)
    _sync(device)
    out["precision_recall"] = {
        "precision": precision,
        "recall": recall,
        "seconds": time.perf_counter() - t0,
        "peak_gib": _peak_gib(device),
    }
    _peak_reset(device)
    t0 = time.perf_counter()
    a, b = FeatureStats.from_features(real_d), FeatureStats.from_features(fake_d)
    fid = fid_from_stats(a.mean, a.covariance, b.mean, b.covariance)
    _sync(device)
    out["fid"] = {"fid": fid, "seconds": time.perf_counter() - t0, "peak_gib": _peak_gib(device)}
    m = min(subset, n)
    p_dev, r_dev = precision_recall(real_d[:m], fake_d[:m], 3, device=device)
    p_cpu, r_cpu = precision_recall(real[:m], fake[:m], 3, device="cpu")
    fid_dev = fid_from_features(real_d[:m], fake_d[:m])
    fid_cpu = fid_from_features(real[:m], fake[:m])
    out["cpu_equality"] = {
        "rows": m,
        "precision": [p_dev, p_cpu],
        "recall": [r_dev, r_cpu],
        "fid": [fid_dev, fid_cpu],
        "precision_recall_equal": p_dev == p_cpu and r_dev == r_cpu,
        "fid_rel_diff": abs(fid_dev - fid_cpu) / max(abs(fid_cpu), 1e-12),
    }
    return out


def projection(steps: dict[str, Any], samples: int = 50_000, chain: int = 250) -> dict:
    """Hours for one ``samples``-sample, ``chain``-step guided run from the measured step rates."""
    hours: dict[str, dict[str, float]] = {}
    for label, entry in steps.get("variants", {}).items():
        rates = entry.get("images_steps_per_s")
        if rates:
            hours[label] = {k: samples * chain / r / 3600 for k, r in rates.items()}
    return {"samples": samples, "steps": chain, "gpu_hours": hours}


def samplers_section(pair, repeats: int, warmup: int) -> dict[str, Any]:
    """DPM-Solver++(2M) at 20 and 25 NFE beside DDPM at 100 and 250 steps (fp32, vanilla on
    EluCD's score and additive schedule): seconds per guided sample, and the projected hours of
    a 50,000-sample run."""
    from calguide.perf.pairs import bench_samplers

    found = bench_samplers(pair, repeats, warmup)
    keep = {k: v for k, v in found.items() if k in ("dpmpp_2m 20", "dpmpp_2m 25", "ddpm 250")}
    for entry in keep.values():
        entry["hours_50k"] = 50_000 * entry["sample_s"] / 3600
    return {"batch": int(pair.x.shape[0]), "samplers": keep}


def _fmt(value: Any, spec: str = ".3g") -> str:
    return "–" if value is None else format(value, spec)


def markdown(data: dict[str, Any]) -> str:
    env = data.get("environment", {})
    lines = [
        f"# GPU check — {env.get('gpu', env.get('machine', '?'))}",
        "",
        f"{env.get('machine', '')}; CUDA {env.get('cuda', '–')}; "
        f"elapsed {data.get('elapsed_s', 0):.0f} s",
    ]
    sections = data.get("sections", {})
    steps = sections.get("steps", {})
    if steps.get("variants"):
        lines += [
            "",
            f"## One DDPM step, {data.get('pair', '')}, batch {steps['batch']}",
            "",
            "| setting | denoiser (ms) | clf fwd+bwd (ms) | unguided (ms) | vanilla (ms) | JS (ms) "
            "| vanilla img·steps/s | vanilla / unguided | floor | rel ‖Δ‖ vs fp32: ε̂ / g / "
            "x_{t−1} | max |Δ| x_{t−1} |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for label, e in steps["variants"].items():
            if "vanilla_step_s" not in e:
                lines.append(f"| {label} | {e.get('skipped') or e.get('error')} |" + " |" * 10)
                continue
            d = e["diff_vs_fp32"]
            lines.append(
                f"| {label} | {e['denoiser_fwd_s'] * 1e3:.1f} "
                f"| {e['classifier_fwd_bwd_s'] * 1e3:.1f} "
                f"| {e['unguided_step_s'] * 1e3:.1f} | {e['vanilla_step_s'] * 1e3:.1f} "
                f"| {e['js_step_s'] * 1e3:.1f} | {e['images_steps_per_s']['vanilla']:.1f} "
                f"| {e['guided_over_unguided']['vanilla']:.3f} | {e['floor_ratio']:.3f} "
                f"| {d['denoiser']['rel_l2']:.1e} / {d['guidance']['rel_l2']:.1e} / "
                f"{d['sample']['rel_l2']:.1e} | {d['sample']['max_abs']:.1e} |"
            )
    e2e = sections.get("e2e", {})
    if e2e.get("runs"):
        lines += [
            "",
            f"## End to end: {e2e['samples']} samples × {e2e['steps']} respaced steps, vanilla",
            "",
            "| setting | seconds | images/s | peak GPU memory (GiB) | pixel mean | pixel std |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for label, r in e2e["runs"].items():
            lines.append(
                f"| {label} | {r['seconds']:.1f} | {r['images_per_s']:.2f} | {_fmt(r['peak_gib'])} "
                f"| {r['pixel_mean']:.2f} | {r['pixel_std']:.2f} |"
            )
        lines.append(
            f"\nuint8 outputs, fp32 vs {e2e['fast']}: mean |Δ| {e2e['uint8_mean_abs_diff']:.2f}, "
            f"share of pixels off by > 8 levels {e2e['uint8_share_diff_over_8']:.4f}, "
            f"max |Δ| {e2e['uint8_max_abs_diff']:.0f}"
        )
    metrics = sections.get("metrics", {})
    if "precision_recall" in metrics:
        pr, fid, eq = metrics["precision_recall"], metrics["fid"], metrics["cpu_equality"]
        lines += [
            "",
            f"## Metrics on {metrics['n']:,} × {metrics['n']:,} random {metrics['dim']}-d features",
            "",
            f"- precision/recall (k=3): {pr['seconds']:.1f} s, peak {_fmt(pr['peak_gib'])} GiB",
            f"- FID statistics + Fréchet distance: {fid['seconds']:.1f} s, peak "
            f"{_fmt(fid['peak_gib'])} GiB",
            f"- against the CPU path on {eq['rows']:,} rows: precision/recall equal "
            f"{eq['precision_recall_equal']}, FID relative difference {eq['fid_rel_diff']:.1e}",
        ]
    proj = sections.get("projection", {}).get("gpu_hours", {})
    if proj:
        lines += [
            "",
            "## Projected GPU-hours of one 50,000-sample, 250-step ImageNet-128 run",
            "",
            "| setting | unguided | vanilla | JS |",
            "| --- | --- | --- | --- |",
        ]
        for label, h in proj.items():
            lines.append(f"| {label} | {h['unguided']:.2f} | {h['vanilla']:.2f} | {h['js']:.2f} |")
    samplers = sections.get("samplers", {}).get("samplers", {})
    if samplers:
        lines += [
            "",
            f"## Samplers (fp32, vanilla on EluCD's score and schedule, batch "
            f"{sections['samplers']['batch']})",
            "",
            "| sampler | NFE | step (ms) | s per guided sample | 50K-sample run (GPU-hours) |",
            "| --- | --- | --- | --- | --- |",
        ]
        for key, e in samplers.items():
            lines.append(
                f"| {key.rsplit(' ', 1)[0]} | {e['nfe']} | {e['step_s'] * 1e3:.1f} "
                f"| {e['sample_s']:.3g} | {e['hours_50k']:.2f} |"
            )
    errors = [f"- {k}: {v['error']}" for k, v in sections.items() if "error" in v]
    if errors:
        lines += ["", "## Errors", "", *errors]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the JSON and markdown")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--e2e-samples", type=int, default=64)
    parser.add_argument("--e2e-steps", type=int, default=25)
    parser.add_argument("--features", type=int, default=50_000)
    parser.add_argument("--subset", type=int, default=5_000)
    parser.add_argument("--budget-s", type=float, default=330.0, help="stop starting sections")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny sizes on the digits pair, on a CPU: the code paths",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.smoke and not cuda_ready():
        print(NEEDS_CUDA, file=sys.stderr)
        return 2
    started = time.perf_counter()
    import torch

    from calguide.perf.pairs import Pair

    device = torch.device("cpu" if args.smoke else "cuda")
    report = Report(args.out, started, args.budget_s)
    report.data["environment"] = environment(device)
    report.data["args"] = {k: str(v) for k, v in vars(args).items()}
    report.write()
    # The smoke run skips compile (a CPU compile of the UNet alone takes a minute); bf16
    # autocast is CUDA-only, so on a CPU those settings run in fp32 and time the same paths.
    variants = {k: v for k, v in VARIANTS.items() if not (args.smoke and v.get("compile"))}
    pair = Pair("digits" if args.smoke else "adm128", args.batch, device)
    # The baseline is true fp32: ADM's official use_fp16 is its own setting ("ADM use_fp16").
    if pair.flags.get("use_fp16"):
        pair.unet.convert_to_fp32()
    pair.flags["use_fp16"] = False
    report.data["unzeroed_tensors"] = unzero_(pair.unet)
    report.data["pair"] = (
        "digits (unet_tiny + digits_resnet; smoke)"
        if args.smoke
        else "ADM-128 (official flags) + ResNet-101 (EluCD convention: x̂₀ at 128×128, Softplus 3)"
    )
    steps = report.section(
        "steps", lambda: steps_section(pair, report, variants, args.repeats, args.warmup)
    )
    fast = (steps or {}).get("fastest_guided", "fp32 eager")
    if variants[fast].get("compile"):  # end to end without compile: a fresh compile costs
        fast = "bf16 + channels_last"
    if report.fits(SECTION_COST_S["e2e"]):
        report.section("e2e", lambda: e2e_section(pair, args.e2e_samples, args.e2e_steps, fast))
    if report.fits(SECTION_COST_S["metrics"]):
        report.section("metrics", lambda: metrics_section(device, args.features, 2048, args.subset))
    if report.fits(SECTION_COST_S["samplers"]):
        report.section("samplers", lambda: samplers_section(pair, args.repeats, args.warmup))
    report.section("projection", lambda: projection(steps or {}))
    print(markdown(report.data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
