"""The training job behind ``calguide-train``: fit (or resume) the denoiser, export, draw."""

from __future__ import annotations

import warnings
from dataclasses import asdict
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

from calguide import assembly
from calguide.config.train import TrainSpec
from calguide.errors import ConfigError
from calguide.modules.callbacks import DenoiserSampleGrid, ExportDenoiser
from calguide.modules.denoiser import DenoiserModule


def run_training(spec: TrainSpec) -> None:
    """Train (or resume) the denoiser, then export it and draw an unguided sample grid."""
    flags = dict(spec.denoiser.flags)
    if flags["image_size"] != spec.data.image_size or flags["in_channels"] != spec.data.channels:
        raise ConfigError(
            f"denoiser.flags (image_size={flags['image_size']}, in_channels="
            f"{flags['in_channels']}) must match data (image_size={spec.data.image_size}, "
            f"channels={spec.data.channels})"
        )
    # The EMA copy is kept in eval mode on purpose; Lightning would warn about it every run.
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    L.seed_everything(spec.seed, workers=True, verbose=False)
    out_dir = Path(spec.out_dir)
    module = DenoiserModule(flags=flags, diffusion=asdict(spec.diffusion), optim=asdict(spec.optim))
    callbacks = [
        ModelCheckpoint(dirpath=out_dir, save_last=True, save_top_k=0, every_n_train_steps=500),
        ExportDenoiser(out_dir / "denoiser.pt"),
        DenoiserSampleGrid(out_dir / "samples.png", **asdict(spec.sample_grid)),
    ]
    trainer = assembly.trainer(spec, callbacks=callbacks)
    last = out_dir / "last.ckpt"
    resume = str(last) if spec.resume and last.is_file() else None
    if resume:
        print(f"calguide: resuming from {last}")
    trainer.fit(module, datamodule=assembly.datamodule(spec.data, spec.seed), ckpt_path=resume)
