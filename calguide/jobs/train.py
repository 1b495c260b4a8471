"""The training job behind ``calguide-train``: fit (or resume) the denoiser, export, draw."""

from __future__ import annotations

import warnings
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from calguide import assembly
from calguide.config import ConfigError, checked
from calguide.modules.callbacks import DenoiserSampleGrid, ExportDenoiser
from calguide.modules.denoiser import DenoiserModule


def run_training(cfg: DictConfig) -> None:
    """Train (or resume) the denoiser, then export it and draw an unguided sample grid."""
    run = checked(cfg)
    flags = dict(run.denoiser.flags)
    if flags["image_size"] != run.data.image_size or flags["in_channels"] != run.data.channels:
        raise ConfigError(
            f"denoiser.flags (image_size={flags['image_size']}, in_channels="
            f"{flags['in_channels']}) must match data (image_size={run.data.image_size}, "
            f"channels={run.data.channels})"
        )
    # The EMA copy is kept in eval mode on purpose; Lightning would warn about it every run.
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    out_dir = Path(cfg.out_dir)
    module = DenoiserModule(
        flags=flags,
        diffusion=OmegaConf.to_container(cfg.diffusion, resolve=True),
        optim=OmegaConf.to_container(cfg.optim, resolve=True),
    )
    callbacks = [
        ModelCheckpoint(dirpath=out_dir, save_last=True, save_top_k=0, every_n_train_steps=500),
        ExportDenoiser(out_dir / "denoiser.pt"),
        DenoiserSampleGrid(out_dir / "samples.png", **cfg.sample_grid),
    ]
    trainer = assembly.trainer(cfg, callbacks=callbacks)
    last = out_dir / "last.ckpt"
    resume = str(last) if cfg.resume and last.is_file() else None
    if resume:
        print(f"calguide: resuming from {last}")
    trainer.fit(module, datamodule=assembly.datamodule(run.data, cfg.seed), ckpt_path=resume)
