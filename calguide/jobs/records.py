"""What a run ran, read off the built objects: one record per run (in its JSON file and the W&B
config) and the one line every sampling, calibration and lab run starts with."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from calguide.io import content_sha256

NOISE_WORDS = {"per_sample": "per-sample noise", "batch": "per-batch noise"}


def _g(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def file_record(path: str | Path | None) -> dict[str, Any] | None:
    """A file by path and content (sha256), the way a run folder's identity counts it."""
    if path is None:
        return None
    return {"file": str(path), "sha256": content_sha256(path)}


def sampling_record(
    module_description: dict[str, Any],
    *,
    respacing: str,
    denoiser: dict[str, Any],
    classifier: dict[str, Any] | None,
    device: str,
    samples: int,
    batch_size: int,
    labels: str,
    seed: int,
) -> dict[str, Any]:
    """A sampling run's record: the module's own description (sampler, grid, evaluations,
    precision, guidance) with the files, device, sample count and seed around it. Its keys
    are the config's names (``guidance.scale``, ``classifier.name``, ``denoiser.name``)."""
    described = dict(module_description)
    guidance = dict(described.pop("guidance") or {"strategy": "none"})
    name = guidance.pop("strategy")
    if classifier is not None and "temperature" in guidance:
        # the τ_c the classifier's logits are divided by: its calibrated τ × guidance.temperature
        classifier = {**classifier, "temperature": guidance.pop("temperature")}
    described["compute"] = {**described.get("compute", {}), "device": device}
    return {
        "sampler": described.pop("sampler"),
        "respacing": respacing,
        **described,
        "guidance": {"name": name, **guidance},
        "denoiser": denoiser,
        "classifier": classifier,
        "samples": int(samples),
        "batch_size": int(batch_size),
        "labels": labels,
        "seed": int(seed),
    }


def chain_words(record: dict[str, Any]) -> str:
    """``ddpm, 100 of 1000 steps, 100 network evaluations per sample``."""
    knobs = {k: v for k, v in (record.get("sampler_params") or {}).items() if v is not None}
    sampler = record["sampler"]
    if knobs:
        sampler += " (" + ", ".join(f"{k}={_g(v)}" for k, v in knobs.items()) + ")"
    clip = "" if record.get("clip_denoised", True) else ", x̂₀ unclipped"
    return (
        f"{sampler}, {record['steps']} of {record['base_steps']} steps "
        f"(respacing {record['respacing']!r}), {record['network_evaluations']} network "
        f"evaluations per sample{clip}"
    )


def guidance_words(guidance: dict[str, Any], classifier: dict[str, Any] | None) -> str:
    """``guidance vanilla s=1 (constant; tau1=1, delta=0.5) on x̂₀ by digits_resnet (τ_c=1)``."""
    if guidance.get("name", "none") == "none":
        return "unguided"
    knobs = {k: v for k, v in (guidance.get("params") or {}).items() if k != "divergence"}
    params = ", ".join(f"{k}={_g(v)}" for k, v in knobs.items())
    schedule = guidance["schedule"]
    extra = guidance.get("schedule_params") or {}
    if extra:
        schedule += " " + ", ".join(f"{k}={_g(v)}" for k, v in extra.items())
    space = "x̂₀" if guidance.get("space") == "x0" else "x_t"
    who = f" by {classifier['name']} (τ_c={_g(classifier['temperature'])})" if classifier else ""
    return (
        f"guidance {guidance['name']} s={_g(guidance['scale'])} ({schedule}; {params}) on "
        f"{space}{who}"
    )


def compute_words(compute: dict[str, Any]) -> str:
    """``float32 · cpu``, ``bf16 autocast + channels_last + compile · cuda (…) ×1``."""
    words = {"32": "float32", "bf16": "bf16 autocast", "fp16": "fp16 autocast"}
    text = words.get(str(compute.get("precision")), str(compute.get("precision")))
    fast = [name for name in ("channels_last", "compile", "fused_attention") if compute.get(name)]
    return text + (" + " + " + ".join(fast) if fast else "") + f" · {compute['device']}"


def sampling_line(command: str, record: dict[str, Any]) -> str:
    """The first line of a sampling run: sampler, grid and evaluations, guidance, precision,
    device, samples, seed."""
    return (
        f"{command}: {chain_words(record)} · "
        f"{guidance_words(record['guidance'], record.get('classifier'))} · "
        f"{compute_words(record['compute'])} · {record['samples']} samples "
        f"({record['labels']} labels, batch {record['batch_size']}, "
        f"{NOISE_WORDS.get(record['noise'], record['noise'])}) · seed {record['seed']}"
    )


def calibration_record(spec: Any, setup: Any, device: str) -> dict[str, Any]:
    """A calibration run's record: the classifier and where it starts, its inputs (x̂₀ through
    which denoiser), the loss, the optimiser and its steps, precision, device, seed."""
    calibration, inputs = spec.calibration, spec.inputs
    module = setup.module
    loss = {"method": calibration.method, "loss": calibration.loss, "weight": calibration.weight}
    if calibration.loss == "smooth_ece":
        loss.update(form=calibration.form, beta=calibration.beta, bins=calibration.bins)
    elif calibration.loss == "kernel_smece":
        loss.update(sigma=calibration.sigma, sigma_min=calibration.sigma_min)
    return {
        "classifier": {
            "name": spec.classifier.name,
            "arch": spec.classifier.arch,
            "init": file_record(spec.init) if spec.init else None,
            "temperature": float(module.temperature),
        },
        "calibration": {"name": calibration.name, **loss},
        "inputs": {
            "mode": inputs.mode,
            "t_min": int(module.t_min),
            "t_max": int(module.t_max),
            "denoiser": file_record(inputs.denoiser) if setup.denoiser is not None else None,
        },
        "optim": {
            "lr": spec.optim.lr,
            "warmup_steps": spec.optim.warmup_steps,
            "max_steps": spec.trainer.get("max_steps", -1),
            "batch_size": spec.data.batch_size,
        },
        "compute": {"precision": str(spec.trainer.get("precision", "32-true")), "device": device},
        "seed": spec.seed,
        "output": spec.output,
    }


def calibration_line(command: str, record: dict[str, Any]) -> str:
    """The first line of a calibration run."""
    clf, cal, inputs, optim = (record[k] for k in ("classifier", "calibration", "inputs", "optim"))
    start = Path(clf["init"]["file"]).name if clf["init"] else "random weights"
    loss = "CE" if cal["weight"] == 0 else f"CE + {_g(cal['weight'])}·{cal['loss']}"
    knobs = [f"{k}={_g(cal[k])}" for k in ("form", "beta", "bins", "sigma") if k in cal]
    if knobs:
        loss += " (" + ", ".join(knobs) + ")"
    if cal["method"] == "temperature":
        loss = "post-hoc temperature (no weight changes)"
    source = inputs["mode"]
    if inputs["denoiser"]:
        source += f" from {Path(inputs['denoiser']['file']).name}"
    steps, compute = optim["max_steps"], record["compute"]
    return (
        f"{command}: {clf['name']} ({clf['arch']}) from {start} · {cal['name']}: {loss} · "
        f"inputs {source}, t in [{inputs['t_min']}, {inputs['t_max']}] · "
        f"{steps if steps != -1 else 'epoch-bound'} steps at lr {_g(optim['lr'])}, batch "
        f"{optim['batch_size']} · {compute['precision']} · {compute['device']} · "
        f"seed {record['seed']}"
    )
