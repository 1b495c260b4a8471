"""ClassifierModule: every classifier job (train, noise-aware train, fine-tune, calibrate).

The job is chosen by configuration, not by subclass:
- ``inputs.mode``: ``clean`` images, ``noisy`` x_t (noise-aware networks, ADM-style), or ``x0``:
  x̂₀(x_t) from a frozen denoiser (the off-the-shelf guidance setting);
- ``calibration.loss`` and its weight λ: L = CE + λ·L_cal, where L_cal is the paper's Huber-style
  smooth ECE (``smooth_ece``, :mod:`calguide.calibration.losses`) or Błasiok–Nakkiran's kernel
  smECE (``kernel_smece``); ``ce`` (or λ = 0) is plain cross-entropy;
- the starting weights: random (training from scratch) or a checkpoint (fine-tuning).
Validation measures accuracy, NLL, binned ECE and kernel smECE on held-out data per timestep
bucket (whatever the training loss), with fixed noise so that numbers before and after fine-tuning
are comparable.
"""

from __future__ import annotations

import math

import lightning as L
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from calguide.calibration.ece import smooth_ece_from_logits
from calguide.calibration.inputs import INPUT_MODES
from calguide.calibration.losses import (
    CALIBRATION_LOSSES,
    DEFAULT_BETA,
    DEFAULT_BINS,
    check_smooth_ece_knobs,
    huber_smooth_ece_from_logits,
)
from calguide.calibration.metrics import classification_metrics, timestep_buckets
from calguide.diffusion import GaussianDiffusion
from calguide.modules.denoiser import warmup_factor
from calguide.nets.classifiers import Classifier


class ClassifierModule(L.LightningModule):
    def __init__(
        self,
        classifier: Classifier,
        diffusion: GaussianDiffusion,
        *,
        mode: str = "clean",
        t_min: int = 0,
        t_max: int | None = None,
        loss: str = "ce",
        weight: float = 0.0,
        form: str = "binned",
        beta: float = DEFAULT_BETA,
        bins: int = DEFAULT_BINS,
        sigma: float | None = None,
        sigma_min: float = 0.01,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        buckets: int = 10,
        n_bins: int = 15,
        denoiser: nn.Module | None = None,
        denoiser_class_cond: bool = False,
        eval_seed: int = 0,
        temperature: float = 1.0,
    ) -> None:
        super().__init__()
        if mode not in INPUT_MODES:
            raise ValueError(f"inputs.mode={mode!r}: must be one of {list(INPUT_MODES)}")
        if mode == "x0" and denoiser is None:
            raise ValueError("inputs.mode=x0 needs a denoiser (inputs.denoiser) to make x̂₀")
        if mode == "noisy" and not classifier.noise_aware:
            raise ValueError(
                f"inputs.mode=noisy needs a noise-aware classifier; {classifier.arch!r} is not "
                "(use inputs.mode=x0 for off-the-shelf networks)"
            )
        if loss not in CALIBRATION_LOSSES:
            raise ValueError(
                f"calibration.loss={loss!r}: must be one of {list(CALIBRATION_LOSSES)}"
            )
        if not (math.isfinite(weight) and weight >= 0):
            raise ValueError(f"calibration.weight={weight!r}: must be a finite number >= 0")
        if loss == "ce" and weight > 0:
            raise ValueError(
                f"calibration.weight={weight!r}: calibration.loss=ce has no calibration term "
                "(use smooth_ece or kernel_smece, or weight 0)"
            )
        if loss == "smooth_ece":
            check_smooth_ece_knobs(form, beta, bins)
        self.save_hyperparameters(ignore=["classifier", "diffusion", "denoiser"])
        self.classifier = classifier
        self.diffusion = diffusion
        self.mode = mode
        self.t_min = int(t_min)
        self.t_max = int(diffusion.num_timesteps - 1 if t_max is None else t_max)
        if not 0 <= self.t_min <= self.t_max < diffusion.num_timesteps:
            raise ValueError(
                f"inputs.t_min/t_max must satisfy 0 <= t_min <= t_max < "
                f"{diffusion.num_timesteps}, got {self.t_min}, {self.t_max}"
            )
        # The frozen denoiser is a tool, not part of this module's weights or checkpoints.
        self._denoiser = [denoiser.eval().requires_grad_(False)] if denoiser is not None else []
        self.buckets = (
            [("clean", None)]
            if mode == "clean"
            else [("clean", None)]
            + [
                (f"t{lo:03d}-{hi - 1:03d}", (lo, hi))
                for lo, hi in timestep_buckets(diffusion.num_timesteps, buckets)
            ]
        )
        # Post-hoc temperature τ (1 while training); logits are divided by it everywhere.
        self.temperature = float(temperature)
        self.val_results: dict[str, dict[str, float]] = {}
        self._val_outputs: dict[str, list[tuple[Tensor, Tensor]]] = {}

    # ----------------------------------------------------------------------- inputs
    @property
    def denoiser(self) -> nn.Module | None:
        return self._denoiser[0] if self._denoiser else None

    def on_fit_start(self) -> None:
        if self.denoiser is not None:
            self.denoiser.to(self.device)

    on_validation_start = on_fit_start

    def make_inputs(
        self,
        x0: Tensor,
        labels: Tensor,
        t_range: tuple[int, int] | None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """(classifier input, timesteps) for clean images under this module's input mode."""
        if t_range is None:
            # Clean images are t = 0 for a noise-aware network.
            if self.classifier.noise_aware:
                return x0, torch.zeros(x0.shape[0], dtype=torch.long, device=x0.device)
            return x0, None
        lo, hi = t_range
        t = torch.randint(lo, hi, (x0.shape[0],), device=x0.device, generator=generator)
        noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
        x_t = self.diffusion.q_sample(x0, t, noise)
        if self.mode == "noisy":
            return x_t, t
        with torch.no_grad():
            cond = labels if self.hparams.denoiser_class_cond else None
            out = self.denoiser(x_t, self.diffusion.model_timesteps(t), cond)
            pred_x0 = self.diffusion.p_mean_variance(out.float(), x_t, t).pred_x0
        return pred_x0, t

    def logits(self, inputs: Tensor, t: Tensor | None) -> Tensor:
        if self.classifier.noise_aware:
            logits = self.classifier(inputs, self.diffusion.model_timesteps(t))
        else:
            logits = self.classifier(inputs)
        return logits / self.temperature if self.temperature != 1.0 else logits

    # ----------------------------------------------------------------------- training
    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x0, labels = batch
        t_range = None if self.mode == "clean" else (self.t_min, self.t_max + 1)
        inputs, t = self.make_inputs(x0, labels, t_range)
        logits = self.logits(inputs, t)
        ce = F.cross_entropy(logits, labels)
        loss = ce
        weight = float(self.hparams.weight)
        if self.hparams.loss != "ce" and weight > 0:
            calibration = self.calibration_loss(logits, labels)
            loss = ce + weight * calibration
            self.log("train/calibration_loss", calibration)
        acc = (logits.argmax(1) == labels).float().mean()
        self.log_dict({"train/ce": ce, "train/loss": loss, "train/acc": acc})
        self.log("loss", loss, prog_bar=True, logger=False)
        return loss

    def calibration_loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """The configured calibration term L_cal (unweighted) of a batch; needs loss != ce."""
        hp = self.hparams
        if hp.loss == "smooth_ece":
            return huber_smooth_ece_from_logits(
                logits, labels, form=hp.form, beta=hp.beta, bins=hp.bins
            )
        if hp.loss == "kernel_smece":
            return smooth_ece_from_logits(logits, labels, sigma=hp.sigma, sigma_min=hp.sigma_min)
        raise ValueError(f"calibration.loss={hp.loss!r} has no calibration term")

    def configure_optimizers(self):
        opt = torch.optim.AdamW(
            [p for p in self.classifier.parameters() if p.requires_grad],
            lr=self.hparams.lr,
            weight_decay=self.hparams.weight_decay,
        )
        warmup = int(self.hparams.warmup_steps)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_factor(s, warmup))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ----------------------------------------------------------------------- validation
    def on_validation_epoch_start(self) -> None:
        self._val_outputs = {name: [] for name, _ in self.buckets}

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x0, labels = batch
        for b, (name, t_range) in enumerate(self.buckets):
            # Same noise for the same (bucket, batch) in every evaluation: before/after compare.
            seed = (self.hparams.eval_seed * 1_000_003 + b * 10_007 + batch_idx) % (2**63)
            generator = torch.Generator(device=x0.device).manual_seed(seed)
            inputs, t = self.make_inputs(x0, labels, t_range, generator)
            self._val_outputs[name].append((self.logits(inputs, t).float(), labels))

    def collected(self, name: str) -> tuple[Tensor, Tensor]:
        logits = torch.cat([z for z, _ in self._val_outputs[name]])
        labels = torch.cat([y for _, y in self._val_outputs[name]])
        if self.trainer is not None and self.trainer.world_size > 1:
            logits = self.all_gather(logits).flatten(0, 1)
            labels = self.all_gather(labels).flatten(0, 1)
        return logits, labels

    def on_validation_epoch_end(self) -> None:
        results: dict[str, dict[str, float]] = {}
        for name, _ in self.buckets:
            if not self._val_outputs.get(name):
                continue
            results[name] = classification_metrics(
                *self.collected(name), n_bins=self.hparams.n_bins
            )
            for key, value in results[name].items():
                self.log(f"val/{name}/{key}", value, sync_dist=False)
        noisy = [r for n, r in results.items() if n != "clean"]
        if noisy:
            self.log("val/smece_mean", sum(r["smece"] for r in noisy) / len(noisy))
        self.val_results = results

    def validation_logits(self) -> dict[str, tuple[Tensor, Tensor]]:
        """The last validation pass's logits and labels per bucket (for diagrams / τ fitting)."""
        return {
            name: self.collected(name) for name, _ in self.buckets if self._val_outputs.get(name)
        }
