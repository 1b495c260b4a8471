"""ClassifierModule, temperature scaling, classifier files and calguide-calibrate end to end."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch
from tiny import TINY_ADM_CLASSIFIER_FLAGS, tiny_denoiser_module

from calguide.calibration.metrics import classification_metrics, fit_temperature, timestep_buckets
from calguide.calibration.report import calibration_table, named_buckets
from calguide.commands.calibrate import main as calibrate_main
from calguide.config import check
from calguide.diffusion import GaussianDiffusion
from calguide.modules.classifier import ClassifierModule
from calguide.modules.denoiser import export_denoiser
from calguide.nets import resnet18
from calguide.nets.classifiers import build_classifier, export_classifier, load_classifier

TINY_DATA = ["data.image_size=8", "data.batch_size=32", "trainer.enable_progress_bar=false"]
TINY_CLASSIFIER = ["classifier.params.width=32"]


def tiny_denoiser_file(path: Path) -> Path:
    return export_denoiser(tiny_denoiser_module(), path)


def test_timestep_buckets_cover_the_chain():
    buckets = timestep_buckets(1000, 10)
    assert buckets[0] == (0, 100) and buckets[-1] == (900, 1000)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(buckets))
    with pytest.raises(ValueError):
        timestep_buckets(10, 0)


def test_fit_temperature_recovers_a_known_temperature():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(20_000, 10, generator=g) * 2
    labels = torch.distributions.Categorical(logits=base).sample()
    # The model's logits are 3x too sharp: the NLL-optimal temperature is 3.
    tau = fit_temperature(base * 3, labels)
    assert tau == pytest.approx(3.0, rel=0.05)
    before = classification_metrics(base * 3, labels)
    after = classification_metrics(base * 3, labels, temperature=tau)
    assert after["ece"] < before["ece"] and after["nll"] < before["nll"]


def test_named_buckets_and_table():
    results = {
        "clean": {"acc": 1.0, "nll": 0.1, "ece": 0.01, "smece": 0.02, "confidence": 0.9},
        **{
            f"t{i:03d}-{i + 99:03d}": {"acc": 0.5, "nll": 1.0, "ece": 0.2, "smece": 0.3}
            for i in range(0, 1000, 100)
        },
    }
    named = named_buckets(results)
    assert named == {"clean": "clean", "low": "t000-099", "mid": "t500-599", "high": "t900-999"}
    table = calibration_table(results, results, title="x")
    assert "| high | t900-999 | 0.500 → 0.500 |" in table


def test_module_rejects_inconsistent_settings():
    diffusion = GaussianDiffusion.from_config(steps=100)
    clf = build_classifier("small_resnet", {"in_channels": 1, "image_size": 8})
    with pytest.raises(ValueError, match="inputs.mode=x0 needs a denoiser"):
        ClassifierModule(clf, diffusion, mode="x0")
    with pytest.raises(ValueError, match="noise-aware"):
        ClassifierModule(clf, diffusion, mode="noisy")
    with pytest.raises(ValueError, match="t_min/t_max"):
        ClassifierModule(clf, diffusion, mode="clean", t_max=100)


def test_noisy_mode_trains_a_noise_aware_classifier():
    diffusion = GaussianDiffusion.from_config(steps=100)
    clf = build_classifier("adm_classifier", TINY_ADM_CLASSIFIER_FLAGS)
    module = ClassifierModule(
        clf, diffusion, mode="noisy", loss="smooth_ece", weight=1.0, buckets=4
    )
    x0, y = torch.rand(16, 1, 8, 8) * 2 - 1, torch.randint(0, 10, (16,))
    loss = module.training_step((x0, y), 0)
    loss.backward()
    assert torch.isfinite(loss)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in clf.parameters())
    module.on_validation_epoch_start()
    module.validation_step((x0, y), 0)
    first = {k: torch.cat([z for z, _ in v]) for k, v in module._val_outputs.items()}
    module.on_validation_epoch_start()
    module.validation_step((x0, y), 0)
    for name, logits in first.items():  # fixed evaluation noise: identical logits
        torch.testing.assert_close(torch.cat([z for z, _ in module._val_outputs[name]]), logits)
    assert len(first) == 5  # clean + 4 buckets


def test_classifier_files_round_trip_and_published_layout(tmp_path):
    clf = build_classifier("small_resnet", {"in_channels": 1, "image_size": 8, "num_classes": 10})
    export_classifier(clf, tmp_path / "c.pt", temperature=1.7, note="x")
    loaded, meta = load_classifier(tmp_path / "c.pt")
    assert meta["temperature"] == pytest.approx(1.7) and meta["arch"] == "small_resnet"
    x = torch.rand(2, 1, 8, 8)
    torch.testing.assert_close(loaded(x), clf.eval()(x))

    # A torchvision-layout file (bare state dict) needs the arch from the config.
    torch.save(resnet18(num_classes=5).state_dict(), tmp_path / "resnet18-xyz.pth")
    net, meta = load_classifier(
        tmp_path / "resnet18-xyz.pth",
        arch="resnet18",
        params={"num_classes": 5},
        normalize="imagenet",
        input_size=32,
    )
    assert net(torch.rand(1, 3, 16, 16) * 2 - 1).shape == (1, 5)
    with pytest.raises(ValueError, match="classifier.arch"):
        load_classifier(tmp_path / "resnet18-xyz.pth")
    with pytest.raises(FileNotFoundError, match="nothing.pth"):
        load_classifier(tmp_path / "nothing.pth", arch="resnet18")


def test_calibrate_end_to_end_train_then_finetune(compose_config, tmp_path, capsys):
    # 1. Train the off-the-shelf classifier from scratch on clean digits.
    cfg = compose_config(
        "calibrate",
        [
            *TINY_DATA,
            *TINY_CLASSIFIER,
            "calibration=ce",
            "inputs.mode=clean",
            "init=null",
            "trainer.max_steps=4",
        ],
    )
    record = calibrate_main.task(check(cfg))
    base = Path(cfg.output)
    assert base.is_file() and record["before"] is None and "clean" in record["after"]

    # 2. Fine-tune it on x̂₀ from a (random, tiny) denoiser with CE + λ·L_ECE (the paper's loss).
    denoiser = tiny_denoiser_file(tmp_path / "denoiser.pt")
    cfg = compose_config(
        "calibrate",
        [
            *TINY_DATA,
            *TINY_CLASSIFIER,
            "calibration=smece",
            f"init={base}",
            f"inputs.denoiser={denoiser}",
            "trainer.max_steps=3",
            "evaluation.buckets=3",
        ],
    )
    capsys.readouterr()
    record = calibrate_main.task(check(cfg))
    out_dir = Path(cfg.output).with_suffix("")
    assert set(record["after"]) == {"clean", "t000-332", "t333-666", "t667-999"}
    # It says what it runs first, and keeps the same record (what ran, not the config read back).
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith(f"calguide-calibrate: digits_resnet (small_resnet) from {base.name}")
    assert "smece: CE + 1·smooth_ece (form=binned, beta=0.0001, bins=15)" in first
    assert "inputs x0 from denoiser.pt, t in [0, 999]" in first and "3 steps at lr" in first
    run = record["run"]
    assert run["optim"]["max_steps"] == 3 and record["steps"] == 3  # configured = ran
    assert run["inputs"]["denoiser"]["sha256"] and run["compute"]["device"] == "cpu"
    saved = json.loads((out_dir / "calibration.json").read_text())
    assert saved["run"] == run
    assert record["before"]["clean"]["acc"] == pytest.approx(
        json.loads((base.with_suffix("") / "calibration.json").read_text())["after"]["clean"]["acc"]
    )
    assert (out_dir / "report.md").read_text().count("→") >= 4
    for tag in ("before", "after"):
        for label in ("clean", "low", "mid", "high"):
            assert (out_dir / f"reliability_{tag}_{label}.png").is_file()
    _, meta = load_classifier(cfg.output)
    assert meta["meta"]["calibration"] == "smece"

    # 3. Temperature scaling: fits τ, changes no weight.
    cfg = compose_config(
        "calibrate",
        [
            *TINY_DATA,
            *TINY_CLASSIFIER,
            "calibration=temperature",
            f"init={base}",
            f"inputs.denoiser={denoiser}",
            "evaluation.buckets=2",
        ],
    )
    record = calibrate_main.task(check(cfg))
    assert record["temperature"] > 0 and record["steps"] == 0


def test_calibrate_missing_denoiser_is_one_clear_error(compose_config, tmp_path):
    cfg = compose_config(
        "calibrate", [*TINY_DATA, "init=null", f"inputs.denoiser={tmp_path}/none.pt"]
    )
    with pytest.raises(FileNotFoundError, match=r"inputs.denoiser: no denoiser at .*none.pt"):
        calibrate_main.task(check(cfg))
