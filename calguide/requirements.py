"""Every file a sampling run reads, checked before any work: one error that lists them all.

An ImageNet table needs five or six large files from three places; finding out one at a time,
each after minutes of start-up, is what this prevents.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from calguide.config import is_guided


def required_files(cfg: DictConfig) -> list[tuple[str, Path]]:
    """(what, path) of every input file of a ``calguide-sample`` config."""
    needed = [
        (
            f"denoiser '{cfg.denoiser.name}' (denoiser.checkpoint)",
            Path(
                cfg.denoiser.checkpoint
                or f"{cfg.paths.artifacts}/{cfg.data.name}/{cfg.denoiser.name}/denoiser.pt"
            ),
        )
    ]
    if is_guided(cfg):
        needed.append(
            (
                f"guidance classifier '{cfg.classifier.name}' (classifier.checkpoint)",
                Path(cfg.classifier.checkpoint),
            )
        )
    metrics = cfg.get("metrics") or {}
    kind = metrics.get("kind", "none")
    if kind != "none" and metrics.get("evaluator"):
        needed.append(
            ("metrics evaluation classifier (metrics.evaluator)", Path(metrics.evaluator))
        )
    if kind != "none" and str(metrics.get("reference", "")).endswith(".npz"):
        needed.append(("ADM reference batch (metrics.reference)", Path(metrics.reference)))
    if kind == "inception" and not metrics.get("download"):
        from calguide.metrics.features import inception_weights_path

        weights = metrics.get("inception_weights")
        needed.append(
            (
                "Inception-v3 weights for FID (metrics.inception_weights)",
                Path(weights) if weights else inception_weights_path(),
            )
        )
    return needed


def missing_files(cfg: DictConfig) -> list[tuple[str, Path]]:
    return [(what, path) for what, path in required_files(cfg) if not path.is_file()]


def missing_message(missing: list[tuple[str, Path]]) -> str:
    lines = [f"{len(missing)} required file(s) missing:"]
    lines += [f"  - {path}   [{what}]" for what, path in missing]
    return "\n".join(lines)


def check_required_files(cfg: DictConfig) -> None:
    """Raise FileNotFoundError naming every missing input (not just the first)."""
    missing = missing_files(cfg)
    if missing:
        raise FileNotFoundError(missing_message(missing))
