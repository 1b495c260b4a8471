"""The prepared GPU check (``make gpu-check``): ADM-128 guided sampling on one CUDA GPU.

    python experiments/gpu_check.py --out DIR            # on a machine with a CUDA GPU
    python experiments/gpu_check.py --out DIR --smoke    # the same code paths, tiny, on a CPU

Measures, on the real architectures with random weights (ADM-128 with the official flags,
torchvision-layout ResNet-101 in EluCD's convention: x̂₀ at 128×128, Softplus(β = 3)):

0. FLOPs per image counted on the real nets, and the bf16 matmul throughput of the chip;
1. per DDPM step at ``--batch`` (64): denoiser forward, classifier forward+backward, unguided
   step, guided step (vanilla and JS) for fp32 eager, TF32, ADM's fp16 blocks, bf16 autocast,
   bf16 + channels_last, bf16 + channels_last + compile, and that with fused (SDPA)
   attention; images/s, achieved TFLOP/s and MFU against the measured matmul; each setting's
   TF32 state; guided/unguided against the floor ratio; the largest |Δ| of a guided step's
   output against fp32;
2. a short end-to-end guided run (``--e2e-samples`` × ``--e2e-steps`` respaced steps) in fp32
   and in the fastest setting without compile: time and peak GPU memory of each (no pixel
   comparison: on random weights it measures chaos, section 5 judges quality);
3. precision/recall (k = 3) and FID of ``--features`` × ``--features`` random 2,048-d features
   on the GPU (time, peak memory) and their equality with the CPU path on a 5,000-row subset;
4. DPM-Solver++ beside DDPM 250 (TF32 off);
5. the guided step at batch 64, 128 and 256 (bf16 + channels_last + fused attention);
6. the fast path's quality on the bundled digits models: the miniature's EluCD and JS rows,
   ``--fastpath-samples`` (4,800) each, exact fp32 against the fastest setting, as paired
   equivalence claims within stated margins (FID ±0.5, class accuracy ±0.02);
7. the projected wall time of one 50,000-sample, 250-step guided ImageNet-128 run on this GPU.

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
    # ADM's attention blocks through scaled_dot_product_attention (flash kernels).
    "bf16 + channels_last + fused attention": {
        "tf32": False,
        "precision": "bf16",
        "channels_last": True,
        "fused_attention": True,
    },
    "bf16 + channels_last + compile + fused attention": {
        "tf32": False,
        "precision": "bf16",
        "channels_last": True,
        "compile": True,
        "fused_attention": True,
    },
}
# Budget a section must still have before it starts (seconds; compile pays its first call).
SECTION_COST_S = {
    "flops": 15.0,
    "batches": 60.0,
    "fastpath": 150.0,
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


def flops_section(pair, matmul_size: int, repeats: int) -> dict[str, Any]:
    """FLOPs per image counted by ``torch.utils.flop_counter`` on the real nets (the denoiser's
    forward, the classifier's forward + input-gradient backward), and the bf16 matmul
    throughput this chip reaches (``matmul_size``² by ``matmul_size``²): the peak the steps'
    MFU column is measured against."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    batch = int(pair.x.shape[0])
    y = pair.labels if pair.flags.get("class_cond") else None
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        pair.unet(pair.x, pair.t_model, y)
    denoiser = counter.get_total_flops() / batch
    inp = pair.x.detach().clone().requires_grad_(True)
    params = [p for p in pair.classifier.parameters() if p.requires_grad]
    for p in params:  # guidance differentiates the input only: no weight gradients counted
        p.requires_grad_(False)
    try:
        with FlopCounterMode(display=False) as counter:
            logits = pair.classifier(inp).float()
            logits.log_softmax(1)[:, 0].sum().backward()  # .backward: the counter's hooks
    finally:
        for p in params:
            p.requires_grad_(True)
    classifier = counter.get_total_flops() / batch
    dtype = torch.bfloat16 if pair.device.type == "cuda" else torch.float32
    a = torch.randn(matmul_size, matmul_size, device=pair.device, dtype=dtype)
    b = torch.randn(matmul_size, matmul_size, device=pair.device, dtype=dtype)
    for _ in range(2):
        a @ b
    _sync(pair.device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    _sync(pair.device)
    seconds = (time.perf_counter() - t0) / repeats
    return {
        "denoiser_fwd_flops_per_image": denoiser,
        "classifier_fwd_bwd_flops_per_image": classifier,
        "guided_step_flops_per_image": denoiser + classifier,
        "matmul": {
            "size": matmul_size,
            "dtype": str(dtype).removeprefix("torch."),
            "tflops": 2 * matmul_size**3 / seconds / 1e12,
        },
    }


def throughput(entry: dict[str, Any], flops: dict[str, Any], batch: int) -> dict[str, float]:
    """Achieved TFLOP/s of a timed setting's guided (vanilla) step, and its share of the
    measured matmul peak (MFU)."""
    achieved = flops["guided_step_flops_per_image"] * batch / entry["vanilla_step_s"] / 1e12
    return {"tflops": achieved, "mfu": achieved / flops["matmul"]["tflops"]}


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
        entry["tf32"] = bool(switches.get("tf32"))
        flops = report.data["sections"].get("flops", {})
        if "guided_step_flops_per_image" in flops:
            entry["throughput"] = throughput(entry, flops, int(pair.x.shape[0]))
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


BATCH_SWEEP = (64, 128, 256)
BATCH_SETTING = "bf16 + channels_last + fused attention"  # no compile: no recompile per shape


def at_batch(pair, batch: int):
    """The pair's nets with a fresh mid-chain batch of ``batch`` samples."""
    import copy

    import torch

    resized = copy.copy(pair)
    gen = torch.Generator().manual_seed(batch)
    resized.x = torch.randn(batch, *pair.shape, generator=gen).to(pair.device)
    num_classes = int(pair.flags["num_classes"])
    resized.labels = torch.randint(0, num_classes, (batch,), generator=gen).to(pair.device)
    resized.t = torch.full((batch,), int(pair.t[0]), device=pair.device, dtype=torch.long)
    resized.t_model = pair.chain.model_timesteps(resized.t)
    resized.noise = torch.randn_like(resized.x)
    return resized


def batches_section(pair, batches: tuple[int, ...], repeats: int, warmup: int) -> dict[str, Any]:
    """The guided step at several batch sizes in one uncompiled fast setting: how throughput
    (and MFU, with the flops section) scales with the batch."""
    switches = {"tf32": False, "precision": "bf16", "channels_last": True, "fused_attention": True}
    out: dict[str, Any] = {"setting": BATCH_SETTING, "tf32": False, "batches": {}}
    for batch in batches:
        try:
            entry = step_variant(at_batch(pair, batch), BATCH_SETTING, switches, repeats, warmup)
        except Exception as err:  # out of memory at the largest batch must not lose the rest
            out["batches"][str(batch)] = {"error": f"{type(err).__name__}: {err}".splitlines()[0]}
            continue
        entry.pop("outputs")
        out["batches"][str(batch)] = {
            "vanilla_step_s": entry["vanilla_step_s"],
            "images_steps_per_s": entry["images_steps_per_s"]["vanilla"],
            "peak_gib": _peak_gib(pair.device),
        }
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
    # No pixel comparison: on random weights it measures chaos, not quality (the fastpath
    # section judges quality on trained models instead).
    out["fast"] = fast
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
    """DPM-Solver++(2M) at 20 and 25 NFE beside DDPM at 250 steps (fp32 with TF32 off, vanilla
    on EluCD's score and additive schedule): seconds per guided sample, and the projected hours
    of a 50,000-sample run."""
    from calguide.perf.pairs import bench_samplers

    with tf32(False):  # exact fp32: PyTorch's default would run cuDNN convolutions in TF32
        found = bench_samplers(pair, repeats, warmup)
    keep = {k: v for k, v in found.items() if k in ("dpmpp_2m 20", "dpmpp_2m 25", "ddpm 250")}
    for entry in keep.values():
        entry["hours_50k"] = 50_000 * entry["sample_s"] / 3600
    return {"batch": int(pair.x.shape[0]), "tf32": False, "samplers": keep}


# The fast path's quality on the bundled digits models: margins fixed before any run.
FASTPATH_MARGINS = {"fid": 0.5, "class_acc": 0.02}
FASTPATH_ROWS = ("vanilla", "js")
VERDICT_KEYS = ("claim", "verdict", "better_value", "than_value", "difference", "lo", "hi")
VERDICT_KEYS += ("level", "margin")


def fastpath_section(out: Path, samples: int, steps: int, smoke: bool) -> dict[str, Any]:
    """The miniature's EluCD and JS rows (bundled digits models, unconditional denoiser, scale
    0.7, random labels, seed 0) in exact fp32 (TF32 off) and at the fastest setting, the same
    labels and noise; each metric's paired difference judged as an equivalence claim within
    FASTPATH_MARGINS (two one-sided tests, one 5% error rate for the four claims)."""
    from calguide.config import compose_spec
    from calguide.jobs.sample import run_sampling
    from calguide.tables.records import collect_runs
    from calguide.verdicts import Settings, judge

    device = ["trainer=cpu"] if smoke else ["trainer=gpu", "trainer.precision=32-true"]
    # On a CPU (smoke) bf16 autocast and compile do not apply: the switches' code paths only.
    fast = ["sampling.channels_last=true", "sampling.fused_attention=true"]
    if not smoke:
        fast += ["sampling.precision=bf16", "sampling.compile=true"]
    settings = {"exact fp32": [], "fastest": fast}
    runs, seconds = [], {}
    for row in FASTPATH_ROWS:
        for label, switches in settings.items():
            folder = out / "fastpath" / f"{row}-{label.replace(' ', '_')}"
            spec = compose_spec(
                "sample",
                ["experiment=digits_miniature", "denoiser=unet_tiny_uncond", f"guidance={row}",
                 "guidance.scale=0.7", "seed=0", f"sampling.num_samples={samples}",
                 f"diffusion.respacing={steps}", "sampling.batch_size=1000",
                 "sampling.progress=false", "trainer.enable_progress_bar=false",
                 f"paths.artifacts={out / 'fastpath' / 'artifacts'}", *device, *switches],
                output_dir=folder,
            )  # fmt: skip
            t0 = time.perf_counter()
            with tf32(False):
                run_sampling(spec)
            seconds[f"{row} {label}"] = time.perf_counter() - t0
            (record,) = collect_runs([folder])
            record["fastpath.setting"] = label
            runs.append(record)
    claims = [
        {"id": f"{row} {metric}", "metric": metric, "margin": margin,
         "lower_is_better": metric != "class_acc",
         "text": f"{row}: the fastest setting equals exact fp32 within ±{margin:g} {metric}",
         "a": {"guidance.name": row, "fastpath.setting": "fastest"},
         "b": {"guidance.name": row, "fastpath.setting": "exact fp32"}}
        for row in FASTPATH_ROWS for metric, margin in FASTPATH_MARGINS.items()
    ]  # fmt: skip
    verdicts = judge(runs, claims, Settings(block_size=20))
    return {
        "samples": samples,
        "steps": steps,
        "fastest": fast,
        "tf32": False,
        "seconds": seconds,
        "verdicts": [{k: getattr(v, k) for k in VERDICT_KEYS} for v in verdicts],
    }


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
    flops = sections.get("flops", {})
    if "guided_step_flops_per_image" in flops:
        mm = flops["matmul"]
        lines += [
            "",
            f"FLOPs per image (counted): denoiser forward "
            f"{flops['denoiser_fwd_flops_per_image'] / 1e9:.1f} G, classifier forward + backward "
            f"{flops['classifier_fwd_bwd_flops_per_image'] / 1e9:.1f} G; a {mm['size']}² "
            f"{mm['dtype']} matmul reaches {mm['tflops']:.0f} TFLOP/s here (the MFU column's "
            "peak).",
        ]
    steps = sections.get("steps", {})
    if steps.get("variants"):
        lines += [
            "",
            f"## One DDPM step, {data.get('pair', '')}, batch {steps['batch']}",
            "",
            "| setting | TF32 | denoiser (ms) | clf fwd+bwd (ms) | unguided (ms) | vanilla (ms) "
            "| JS (ms) | vanilla img·steps/s | TFLOP/s | MFU | vanilla / unguided | floor "
            "| rel ‖Δ‖ vs fp32: ε̂ / g / x_{t−1} | max |Δ| x_{t−1} |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for label, e in steps["variants"].items():
            if "vanilla_step_s" not in e:
                lines.append(f"| {label} | {e.get('skipped') or e.get('error')} |" + " |" * 13)
                continue
            d = e["diff_vs_fp32"]
            tp = e.get("throughput") or {}
            lines.append(
                f"| {label} | {'on' if e.get('tf32') else 'off'} "
                f"| {e['denoiser_fwd_s'] * 1e3:.1f} "
                f"| {e['classifier_fwd_bwd_s'] * 1e3:.1f} "
                f"| {e['unguided_step_s'] * 1e3:.1f} | {e['vanilla_step_s'] * 1e3:.1f} "
                f"| {e['js_step_s'] * 1e3:.1f} | {e['images_steps_per_s']['vanilla']:.1f} "
                f"| {_fmt(tp.get('tflops'), '.1f')} | {_fmt(tp.get('mfu'), '.1%')} "
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
            f"## Samplers (fp32, TF32 off, vanilla on EluCD's score and schedule, batch "
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
    fastpath = sections.get("fastpath", {})
    if fastpath.get("verdicts"):
        lines += [
            "",
            f"## The fast path's quality: bundled digits models, {fastpath['samples']:,} samples "
            f"per row, {fastpath['steps']} DDPM steps",
            "",
            f"Fastest setting ({', '.join(fastpath['fastest'])}) against exact fp32 (TF32 off), "
            "the same labels and noise; paired difference [interval at the level shown], "
            "equivalence within the margin fixed before the run.",
            "",
            "| row, metric | exact fp32 | fastest | difference [interval] | level | margin "
            "| verdict |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for v in fastpath["verdicts"]:
            interval = (
                "–"
                if v["difference"] is None
                else f"{v['difference']:+.3f} [{v['lo']:+.3f}, {v['hi']:+.3f}]"
            )
            lines.append(
                f"| {v['claim']} | {_fmt(v['than_value'], '.4f')} | "
                f"{_fmt(v['better_value'], '.4f')} | {interval} | {_fmt(v['level'], '.4f')} "
                f"| ±{v['margin']:g} | {v['verdict']} |"
            )
    sweep = sections.get("batches", {}).get("batches", {})
    if sweep:
        flops = sections.get("flops", {})
        lines += [
            "",
            f"## Batch size ({sections['batches']['setting']}, TF32 off, vanilla step)",
            "",
            "| batch | step (ms) | img·steps/s | TFLOP/s | MFU | peak GPU memory (GiB) |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for batch, e in sweep.items():
            if "error" in e:
                lines.append(f"| {batch} | {e['error']} | | | | |")
                continue
            tp = throughput(e, flops, int(batch)) if "matmul" in flops else {}
            lines.append(
                f"| {batch} | {e['vanilla_step_s'] * 1e3:.1f} | {e['images_steps_per_s']:.1f} "
                f"| {_fmt(tp.get('tflops'), '.1f')} | {_fmt(tp.get('mfu'), '.1%')} "
                f"| {_fmt(e['peak_gib'])} |"
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
    parser.add_argument("--fastpath-samples", type=int, default=4_800)
    parser.add_argument("--fastpath-steps", type=int, default=20)
    parser.add_argument("--budget-s", type=float, default=400.0, help="stop starting sections")
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
    report.section(
        "flops", lambda: flops_section(pair, 256 if args.smoke else 8192, args.repeats * 4)
    )
    steps = report.section(
        "steps", lambda: steps_section(pair, report, variants, args.repeats, args.warmup)
    )
    fast = (steps or {}).get("fastest_guided", "fp32 eager")
    if variants[fast].get("compile"):  # end to end without compile: a fresh compile costs
        fast = "bf16 + channels_last"
    # The order is the order of importance: what a budget cut leaves out comes last.
    if report.fits(SECTION_COST_S["fastpath"]):
        report.section(
            "fastpath",
            lambda: fastpath_section(
                args.out, args.fastpath_samples, args.fastpath_steps, args.smoke
            ),
        )
    if report.fits(SECTION_COST_S["batches"]):
        sweep = (2, 4) if args.smoke else BATCH_SWEEP
        report.section("batches", lambda: batches_section(pair, sweep, args.repeats, args.warmup))
    if report.fits(SECTION_COST_S["samplers"]):
        report.section("samplers", lambda: samplers_section(pair, args.repeats, args.warmup))
    if report.fits(SECTION_COST_S["e2e"]):
        report.section("e2e", lambda: e2e_section(pair, args.e2e_samples, args.e2e_steps, fast))
    if report.fits(SECTION_COST_S["metrics"]):
        report.section("metrics", lambda: metrics_section(device, args.features, 2048, args.subset))
    report.section("projection", lambda: projection(steps or {}))
    print(markdown(report.data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
