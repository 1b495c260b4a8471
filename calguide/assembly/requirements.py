"""Every file a sampling run reads, checked before any work: one error that lists them all.

An ImageNet table needs five or six large files from three places; finding out one at a time,
each after minutes of start-up, is what this prevents.
"""

from __future__ import annotations

from pathlib import Path

from calguide.assembly.models import denoiser_path
from calguide.config.sample import SampleSpec


def required_files(spec: SampleSpec) -> list[tuple[str, Path]]:
    """(what, path) of every input file of a ``calguide-sample`` spec."""
    needed = [
        (
            f"denoiser '{spec.denoiser.name}' (denoiser.checkpoint)",
            denoiser_path(spec.denoiser, spec.data, spec.paths.artifacts),
        )
    ]
    if spec.guided:
        needed.append(
            (
                f"guidance classifier '{spec.classifier.name}' (classifier.checkpoint)",
                Path(str(spec.classifier.checkpoint)),
            )
        )
    metrics = spec.metrics
    kind = metrics.kind
    if kind != "none" and metrics.evaluator:
        needed.append(
            ("metrics evaluation classifier (metrics.evaluator)", Path(metrics.evaluator))
        )
    if kind != "none" and str(metrics.reference).endswith(".npz"):
        needed.append(("ADM reference batch (metrics.reference)", Path(metrics.reference)))
    if kind == "inception" and not metrics.download:
        from calguide.metrics.features import inception_weights_path

        weights = metrics.inception_weights
        needed.append(
            (
                "Inception-v3 weights for FID (metrics.inception_weights)",
                Path(weights) if weights else inception_weights_path(),
            )
        )
    return needed


def missing_files(spec: SampleSpec) -> list[tuple[str, Path]]:
    return [(what, path) for what, path in required_files(spec) if not path.is_file()]


def missing_message(missing: list[tuple[str, Path]]) -> str:
    lines = [f"{len(missing)} required file(s) missing:"]
    lines += [f"  - {path}   [{what}]" for what, path in missing]
    return "\n".join(lines)


def check_required_files(spec: SampleSpec) -> None:
    """Raise FileNotFoundError naming every missing input (not just the first)."""
    missing = missing_files(spec)
    if missing:
        raise FileNotFoundError(missing_message(missing))
