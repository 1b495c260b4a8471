"""The calibration job behind ``calguide-calibrate``: build, evaluate, fit, evaluate, export."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from calguide.builders import datamodule_from, loggers_from
from calguide.calibration.ece import top_label_confidence
from calguide.calibration.metrics import fit_temperature
from calguide.calibration.module import ClassifierModule
from calguide.calibration.reliability import save_reliability_diagram
from calguide.calibration.report import calibration_table, named_buckets
from calguide.callbacks import log_image
from calguide.config import validated
from calguide.denoiser import load_denoiser
from calguide.diffusion import GaussianDiffusion
from calguide.io import atomic_write_text
from calguide.nets.classifiers import (
    Classifier,
    build_classifier,
    export_classifier,
    load_classifier,
)


def classifier_from(spec: DictConfig, init: str | None) -> tuple[Classifier, dict[str, Any]]:
    """Random weights (init null), a calguide export, or published weights for ``spec.arch``."""
    params = OmegaConf.to_container(spec.params, resolve=True)
    if init is None:
        classifier = build_classifier(
            spec.arch,
            params,
            normalize=spec.normalize,
            input_size=spec.input_size,
            softplus_beta=spec.softplus_beta,
        )
        return classifier, {"temperature": 1.0}
    classifier, meta = load_classifier(
        init,
        arch=spec.arch,
        params=params,
        normalize=spec.normalize,
        input_size=spec.input_size,
        what=f"classifier '{spec.name}' (init)",
    )
    if spec.softplus_beta:
        from calguide.nets import swap_relu_for_softplus

        swap_relu_for_softplus(classifier.net, spec.softplus_beta)
    return classifier, meta


def denoiser_from(cfg: DictConfig) -> tuple[torch.nn.Module | None, dict[str, Any]]:
    if cfg.inputs.mode != "x0":
        return None, {}
    if cfg.inputs.denoiser is None:
        raise FileNotFoundError("inputs.mode=x0 needs inputs.denoiser (a trained denoiser file)")
    path = Path(cfg.inputs.denoiser)
    if not path.is_file():
        raise FileNotFoundError(
            f"inputs.denoiser: no denoiser at {path}; train one with `calguide-train` "
            "(or `make train-denoiser`) or point inputs.denoiser at a checkpoint"
        )
    flags = cfg.inputs.denoiser_flags
    flags = OmegaConf.to_container(flags, resolve=True) if flags is not None else None
    net, meta = load_denoiser(path, flags=flags, what="inputs.denoiser")
    return net, {"flags": meta["flags"], "diffusion": meta.get("diffusion", {})}


def diffusion_from(cfg: DictConfig, denoiser_meta: dict[str, Any]) -> GaussianDiffusion:
    settings = {**OmegaConf.to_container(cfg.diffusion, resolve=True)}
    settings.update(denoiser_meta.get("diffusion", {}))
    return GaussianDiffusion.from_config(
        steps=int(settings["steps"]),
        schedule=str(settings["schedule"]),
        learn_sigma=bool(denoiser_meta.get("flags", {}).get("learn_sigma", False)),
        sigma_small=bool(settings.get("sigma_small", False)),
    )


def save_diagrams(
    module: ClassifierModule, out_dir: Path, wanted: list[str], trainer: L.Trainer, tag: str
) -> dict[str, str]:
    logits_by_bucket = module.validation_logits()
    names = named_buckets(module.val_results)
    saved = {}
    for label in wanted:
        bucket = names.get(label)
        if bucket is None:
            continue
        logits, labels = logits_by_bucket[bucket]
        confidence, correct = top_label_confidence(logits, labels)
        path = out_dir / f"reliability_{tag}_{label}.png"
        save_reliability_diagram(
            confidence.cpu(), correct.cpu(), path, title=f"{tag}: {label} noise ({bucket})"
        )
        log_image(trainer, f"reliability/{tag}/{label}", path)
        saved[label] = str(path)
    return saved


def run_calibration(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate the starting classifier, calibrate it, evaluate again, export, report."""
    L.seed_everything(cfg.seed, workers=True)
    output = Path(cfg.output)
    out_dir = output.with_suffix("")
    classifier, init_meta = classifier_from(cfg.classifier, cfg.init)
    denoiser, denoiser_meta = denoiser_from(cfg)
    diffusion = diffusion_from(cfg, denoiser_meta)
    calibration = validated(cfg, "calibration")  # typed, with the schema's defaults filled in
    module = ClassifierModule(
        classifier,
        diffusion,
        mode=cfg.inputs.mode,
        t_min=cfg.inputs.t_min,
        t_max=min(cfg.inputs.t_max, diffusion.num_timesteps - 1),
        loss=calibration.loss,
        weight=calibration.weight,
        form=calibration.form,
        beta=calibration.beta,
        bins=calibration.bins,
        sigma=calibration.sigma,
        sigma_min=calibration.sigma_min,
        lr=cfg.optim.lr,
        weight_decay=cfg.optim.weight_decay,
        warmup_steps=cfg.optim.warmup_steps,
        buckets=cfg.evaluation.buckets,
        n_bins=cfg.evaluation.n_bins,
        denoiser=denoiser,
        denoiser_class_cond=bool(denoiser_meta.get("flags", {}).get("class_cond", False)),
        eval_seed=cfg.evaluation.seed,
        temperature=float(init_meta.get("temperature", 1.0)),
    )
    datamodule = datamodule_from(cfg, cfg.seed)
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        callbacks=[ModelCheckpoint(dirpath=out_dir, save_last=True, save_top_k=0)],
        logger=loggers_from(cfg) or False,
    )

    before = None
    if cfg.init is not None:
        trainer.validate(module, datamodule=datamodule, verbose=False)
        before = module.val_results
        save_diagrams(module, out_dir, list(cfg.evaluation.diagrams), trainer, "before")

    if cfg.calibration.method == "temperature":
        datamodule.setup("fit")
        trainer.validate(module, dataloaders=datamodule.train_dataloader(), verbose=False)
        pooled = [
            v
            for k, v in module.validation_logits().items()
            if k != "clean" or len(module.buckets) == 1
        ]
        logits = torch.cat([z * module.temperature for z, _ in pooled])
        labels = torch.cat([y for _, y in pooled])
        module.temperature = fit_temperature(logits, labels)
        print(f"calguide: fitted temperature τ = {module.temperature:.4f} on the training split")
    else:
        last = out_dir / "last.ckpt"
        resume = str(last) if cfg.resume and last.is_file() else None
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume)

    trainer.validate(module, datamodule=datamodule, verbose=False)
    after = module.val_results
    diagrams = save_diagrams(module, out_dir, list(cfg.evaluation.diagrams), trainer, "after")

    resolved = OmegaConf.to_container(cfg, resolve=False)
    record = {
        "classifier": cfg.classifier.name,
        "calibration": cfg.calibration.name,
        "mode": cfg.inputs.mode,
        "seed": int(cfg.seed),
        "steps": int(trainer.global_step),
        "temperature": module.temperature,
        "before": before,
        "after": after,
        "diagrams": diagrams,
    }
    if trainer.is_global_zero:
        export_classifier(
            classifier,
            output,
            temperature=module.temperature,
            calibration=cfg.calibration.name,
            mode=cfg.inputs.mode,
            seed=int(cfg.seed),
            metrics=after,
        )
        atomic_write_text(json.dumps(record, indent=2), out_dir / "calibration.json")
        table = calibration_table(
            after, before, title=f"{cfg.classifier.name} · {cfg.calibration.name} · seed {cfg.seed}"
        )
        atomic_write_text(table + "\n", out_dir / "report.md")
        print(table)
        print(f"calguide: classifier exported to {output}")
        for logger in trainer.loggers:
            logger.log_hyperparams({"config": resolved})
    return record
