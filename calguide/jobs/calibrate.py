"""The calibration job behind ``calguide-calibrate``: build, evaluate, fit, evaluate, export."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from calguide import assembly
from calguide.calibration.ece import top_label_confidence
from calguide.calibration.metrics import fit_temperature
from calguide.calibration.reliability import save_reliability_diagram
from calguide.calibration.report import calibration_table, named_buckets
from calguide.config.calibrate import CalibrateSpec
from calguide.io import atomic_write_text, log_image
from calguide.jobs.records import calibration_line, calibration_record
from calguide.modules.classifier import ClassifierModule
from calguide.nets.classifiers import export_classifier


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


def run_calibration(spec: CalibrateSpec) -> dict[str, Any]:
    """Evaluate the starting classifier, calibrate it, evaluate again, export, report."""
    L.seed_everything(spec.seed, workers=True, verbose=False)
    output = Path(spec.output)
    out_dir = output.with_suffix("")
    setup = assembly.calibration_setup(spec)
    module = setup.module
    datamodule = assembly.datamodule(spec.data, spec.seed)
    run = calibration_record(spec, setup, assembly.device_name(spec.trainer))
    print(calibration_line("calguide-calibrate", run), flush=True)
    trainer: L.Trainer = assembly.trainer(
        spec, run, callbacks=[ModelCheckpoint(dirpath=out_dir, save_last=True, save_top_k=0)]
    )
    diagrams = list(spec.evaluation.diagrams)

    before = None
    if spec.init is not None:
        trainer.validate(module, datamodule=datamodule, verbose=False)
        before = module.val_results
        save_diagrams(module, out_dir, diagrams, trainer, "before")

    if spec.calibration.method == "temperature":
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
        resume = str(last) if spec.resume and last.is_file() else None
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume)

    trainer.validate(module, datamodule=datamodule, verbose=False)
    after = module.val_results
    saved = save_diagrams(module, out_dir, diagrams, trainer, "after")

    record = {
        "classifier": spec.classifier.name,
        "calibration": spec.calibration.name,
        "mode": spec.inputs.mode,
        "seed": spec.seed,
        "steps": int(trainer.global_step),
        "temperature": module.temperature,
        "before": before,
        "after": after,
        "diagrams": saved,
        "run": run,
    }
    if trainer.is_global_zero:
        export_classifier(
            setup.classifier,
            output,
            temperature=module.temperature,
            calibration=spec.calibration.name,
            mode=spec.inputs.mode,
            seed=spec.seed,
            metrics=after,
        )
        atomic_write_text(json.dumps(record, indent=2), out_dir / "calibration.json")
        title = f"{spec.classifier.name} · {spec.calibration.name} · seed {spec.seed}"
        table = calibration_table(after, before, title=title)
        atomic_write_text(table + "\n", out_dir / "report.md")
        print(table)
        print(f"calguide: classifier exported to {output}")
        for logger in trainer.loggers:
            logger.log_hyperparams({"config": spec.config, "run": run})
    return record
