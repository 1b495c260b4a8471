"""The paper's Huber-style smooth ECE loss, its config keys and its use in ClassifierModule."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

from calguide.calibration.ece import binned_ece, smooth_ece_from_logits, top_label_confidence
from calguide.calibration.losses import (
    DEFAULT_BETA,
    DEFAULT_BINS,
    huber_smooth_ece,
    huber_smooth_ece_from_logits,
)
from calguide.config import ConfigError, check, conf_dir
from calguide.config.base import section
from calguide.config.calibrate import CalibrationConfig
from calguide.diffusion import GaussianDiffusion
from calguide.modules.classifier import ClassifierModule
from calguide.nets.classifiers import build_classifier


def stable_logits(n: int = 24, classes: int = 4, bins: int = 5, seed: int = 0):
    """float64 logits whose argmax and confidence bin survive gradcheck's perturbations.

    Rows whose top-2 logit gap or confidence distance to a bin edge is under 1e-3 are dropped, so
    the loss is smooth at every point gradcheck evaluates.
    """
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(4 * n, classes, generator=g, dtype=torch.float64) * 1.5
    labels = torch.randint(0, classes, (4 * n,), generator=g)
    top2 = logits.topk(2, dim=1).values
    confidence = torch.softmax(logits, 1).max(1).values
    to_edge = (confidence * bins - (confidence * bins).round()).abs() / bins
    keep = ((top2[:, 0] - top2[:, 1]) > 1e-3) & (to_edge > 1e-3)
    logits, labels = logits[keep][:n], labels[keep][:n]
    assert logits.shape[0] == n
    return logits.clone().requires_grad_(True), labels


def test_binned_form_tends_to_the_binned_ece():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(500, 10, generator=g) * 3
    labels = torch.randint(0, 10, (500,), generator=g)
    confidence, correct = top_label_confidence(logits, labels)
    for bins in (1, 5, 15):
        ece = binned_ece(confidence, correct, n_bins=bins)
        loss = huber_smooth_ece(confidence, correct, form="binned", beta=1e-12, bins=bins)
        assert float(loss) == pytest.approx(float(ece), abs=1e-5)
    # β > 0 only adds: sqrt(x² + β) ≥ |x|, by at most sqrt(β) per bin (weights sum to 1).
    smooth = huber_smooth_ece(confidence, correct, beta=1e-2)
    ece = binned_ece(confidence, correct, n_bins=DEFAULT_BINS)
    assert float(ece) < float(smooth) <= float(ece) + 0.1 + 1e-6


def test_binned_form_by_hand_with_empty_bins():
    # Two bins of width 0.5: bin 0 holds 0.2, 0.4 (acc 1/2); bin 1 holds 0.9 (acc 1); the
    # 4-bin split leaves bins empty, which must add nothing.
    confidence = torch.tensor([0.2, 0.4, 0.9], dtype=torch.float64)
    correct = torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64)
    beta = 0.01
    expected = (2 / 3) * math.sqrt((0.3 - 0.5) ** 2 + beta) + (1 / 3) * math.sqrt(0.01 + beta)
    assert float(huber_smooth_ece(confidence, correct, beta=beta, bins=2)) == pytest.approx(
        expected, rel=1e-12
    )
    # 4 bins: {0.2}, {0.4}, {}, {0.9}.
    expected = (math.sqrt(0.8**2 + beta) + math.sqrt(0.4**2 + beta) + math.sqrt(0.1**2 + beta)) / 3
    assert float(huber_smooth_ece(confidence, correct, beta=beta, bins=4)) == pytest.approx(
        expected, rel=1e-12
    )


def test_per_sample_form_closed_form():
    # Rows: softmax [0.9, 0.1] with label 0 (correct), softmax [0.6, 0.4] with label 1 (wrong).
    logits = torch.log(torch.tensor([[0.9, 0.1], [0.6, 0.4]], dtype=torch.float64))
    labels = torch.tensor([0, 1])
    beta = 0.01
    expected = 0.5 * (math.sqrt(0.1**2 + beta) + math.sqrt(0.6**2 + beta))
    loss = huber_smooth_ece_from_logits(logits, labels, form="per_sample", beta=beta)
    assert float(loss) == pytest.approx(expected, rel=1e-12)
    assert loss.dtype == torch.float64
    # The bins play no part in the per-sample form.
    for bins in (1, 7, 40):
        other = huber_smooth_ece_from_logits(
            logits, labels, form="per_sample", beta=beta, bins=bins
        )
        assert float(other) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("form", ["binned", "per_sample"])
def test_gradcheck_in_float64(form):
    logits, labels = stable_logits(bins=5)

    def loss(z: torch.Tensor) -> torch.Tensor:
        return huber_smooth_ece_from_logits(z, labels, form=form, beta=1e-3, bins=5)

    assert torch.autograd.gradcheck(loss, (logits,), eps=1e-6, atol=1e-7)
    assert logits.grad is None
    loss(logits).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_float32_inputs_give_a_float32_loss_with_gradient():
    logits, labels = stable_logits()
    logits = logits.detach().float().requires_grad_(True)
    loss = huber_smooth_ece_from_logits(logits, labels)
    assert loss.dtype == torch.float32
    loss.backward()
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize(
    ("knobs", "key"),
    [
        ({"form": "binned_typo"}, "calibration.form"),
        ({"beta": 0.0}, "calibration.beta"),
        ({"beta": -1e-3}, "calibration.beta"),
        ({"beta": float("nan")}, "calibration.beta"),
        ({"bins": 0}, "calibration.bins"),
        ({"bins": 2.5}, "calibration.bins"),
    ],
)
def test_bad_knobs_raise_naming_the_key(knobs, key):
    logits, labels = stable_logits()
    with pytest.raises(ValueError, match=key) as info:
        huber_smooth_ece_from_logits(logits, labels, **knobs)
    assert "\n" not in str(info.value)
    confidence, correct = top_label_confidence(logits, labels)
    with pytest.raises(ValueError, match=key):
        huber_smooth_ece(confidence, correct, **knobs)


def test_defaults_match_the_config():
    smece = OmegaConf.load(conf_dir() / "calibration" / "smece.yaml")
    assert smece.loss == "smooth_ece" and smece.form == "binned"
    assert smece.beta == DEFAULT_BETA and smece.bins == DEFAULT_BINS


# ----------------------------------------------------------------------------- config


def calibration_cfg(**section):
    return OmegaConf.create({"calibration": {"name": "x", **section}})


@pytest.mark.parametrize("option", ["ce", "smece", "kernel_smece", "temperature"])
def test_calibration_options_validate(option):
    option_file = OmegaConf.load(conf_dir() / "calibration" / f"{option}.yaml")
    checked = section(
        OmegaConf.create({"calibration": option_file}), "calibration", CalibrationConfig
    )
    assert checked.name == option
    expected = {"ce": "ce", "smece": "smooth_ece", "kernel_smece": "kernel_smece"}
    assert checked.loss == expected.get(option, "ce")


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"loss": "focal"}, "calibration.loss='focal': must be one of"),
        ({"loss": "smooth_ece", "weight": -1.0}, "calibration.weight=-1.0"),
        ({"loss": "ce", "weight": 1.0}, "calibration.weight=1.0: calibration.loss=ce"),
        ({"form": "per_bin"}, "calibration.form='per_bin'"),
        ({"beta": 0.0}, "calibration.beta=0.0: must be a finite number > 0"),
        ({"bins": 0}, "calibration.bins=0: must be an integer >= 1"),
        ({"bins": "many"}, "calibration.bins"),
        ({"sigma_min": 0.9}, "calibration.sigma_min=0.9"),
        ({"sigma": 2.0}, "calibration.sigma=2.0"),
    ],
)
def test_bad_calibration_config_is_one_line_naming_the_key(values, message):
    with pytest.raises(ConfigError) as info:
        section(calibration_cfg(**values), "calibration", CalibrationConfig)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------- module


def tiny_module(**knobs) -> tuple[ClassifierModule, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    diffusion = GaussianDiffusion.from_config(steps=100)
    clf = build_classifier("small_resnet", {"in_channels": 1, "image_size": 8, "width": 8})
    module = ClassifierModule(clf, diffusion, mode="clean", **knobs)
    x, y = torch.rand(16, 1, 8, 8) * 2 - 1, torch.randint(0, 10, (16,))
    return module, x, y


@pytest.mark.parametrize(
    ("knobs", "term"),
    [
        ({"loss": "ce"}, None),
        ({"loss": "smooth_ece", "weight": 0.0}, None),
        (
            {"loss": "smooth_ece", "weight": 0.5, "form": "per_sample", "beta": 1e-3},
            lambda z, y: huber_smooth_ece_from_logits(z, y, form="per_sample", beta=1e-3),
        ),
        (
            {"loss": "smooth_ece", "weight": 0.5, "bins": 5},
            lambda z, y: huber_smooth_ece_from_logits(z, y, bins=5),
        ),
        (
            {"loss": "kernel_smece", "weight": 0.5, "sigma": 0.1},
            lambda z, y: smooth_ece_from_logits(z, y, sigma=0.1),
        ),
    ],
)
def test_module_selects_the_configured_loss(knobs, term):
    module, x, y = tiny_module(**knobs)
    module.eval()  # deterministic batch norm: the reference logits below are the same
    logged: dict[str, torch.Tensor] = {}
    module.log = lambda name, value, **_: logged.__setitem__(name, value)
    module.log_dict = lambda values, **_: logged.update(values)
    loss = module.training_step((x, y), 0)
    with torch.no_grad():
        logits = module.logits(x, None)
        ce = torch.nn.functional.cross_entropy(logits, y)
        expected = ce if term is None else ce + 0.5 * term(logits, y)
    torch.testing.assert_close(loss.detach(), expected)
    assert ("train/calibration_loss" in logged) is (term is not None)
    loss.backward()


@pytest.mark.parametrize(
    ("knobs", "key"),
    [
        ({"loss": "smece"}, "calibration.loss"),
        ({"loss": "smooth_ece", "weight": -0.1}, "calibration.weight"),
        ({"loss": "ce", "weight": 1.0}, "calibration.weight"),
        ({"loss": "smooth_ece", "weight": 1.0, "form": "x"}, "calibration.form"),
        ({"loss": "smooth_ece", "weight": 1.0, "beta": 0.0}, "calibration.beta"),
        ({"loss": "smooth_ece", "weight": 1.0, "bins": 0}, "calibration.bins"),
    ],
)
def test_module_rejects_bad_loss_knobs(knobs, key):
    with pytest.raises(ValueError, match=key):
        tiny_module(**knobs)


def test_old_key_in_a_composed_run_names_the_new_key(compose_config):
    cfg = compose_config("calibrate", ["calibration=smece", "+calibration.smece_weight=1.0"])
    with pytest.raises(ConfigError, match=r"^calibration.smece_weight: .*was renamed: use "):
        check(cfg)
    for option in ("smece", "kernel_smece"):
        check(compose_config("calibrate", [f"calibration={option}"]))
