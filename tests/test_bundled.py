"""The bundled digits models: listed in the manifest with their provenance, loadable, used by
the digits configs by default (a user's own trained file first), and refused when corrupt."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch

import calguide.bundled as bundled
from calguide.config import check
from calguide.errors import CheckpointError
from calguide.nets.checkpoint import read_weights_file

EXPECTED = {
    "digits/unet_tiny.pt",
    "digits/unet_tiny_uncond.pt",
    "digits/digits_resnet-clean-ce-s0.pt",
    "digits/digits_noisy-noisy-ce-s0.pt",
    "digits/digits_eval-clean-ce-s1.pt",
}


def test_manifest_lists_every_model_with_its_provenance() -> None:
    entries = bundled.manifest()
    assert set(entries) == EXPECTED
    for name, entry in entries.items():
        assert entry["command"].startswith(("calguide-train", "calguide-calibrate")), name
        assert len(entry["sha256"]) == 64 and isinstance(entry["seed"], int)
        assert entry["calguide_version"] and entry["heldout_metrics"], name
        path = bundled.bundled_dir() / name
        assert path.stat().st_size == entry["bytes"] < 20_000_000  # small files
        bundled.verify(path)  # the shipped bytes are the manifest's


def test_classifiers_reached_their_recorded_heldout_accuracy() -> None:
    entries = bundled.manifest()
    assert entries["digits/digits_resnet-clean-ce-s0.pt"]["heldout_metrics"]["clean"]["acc"] > 0.9
    assert entries["digits/digits_eval-clean-ce-s1.pt"]["heldout_metrics"]["clean"]["acc"] > 0.9


def test_digits_configs_use_the_bundled_files_unless_trained_ones_exist(compose_config, tmp_path):
    cfg = compose_config("sample", ["classifier=digits_resnet"])
    run = check(cfg)
    root = bundled.bundled_dir()
    assert Path(run.denoiser.checkpoint) == root / "digits/unet_tiny.pt"
    assert Path(run.classifier.checkpoint) == root / "digits/digits_resnet-clean-ce-s0.pt"
    assert Path(run.metrics.evaluator) == root / "digits/digits_eval-clean-ce-s1.pt"
    uncond = check(compose_config("sample", ["denoiser=unet_tiny_uncond"]))
    assert Path(uncond.denoiser.checkpoint) == root / "digits/unet_tiny_uncond.pt"
    # Your own trained file at the standard place takes over.
    own = tmp_path / "artifacts" / "digits" / "unet_tiny" / "denoiser.pt"
    own.parent.mkdir(parents=True)
    shutil.copyfile(root / "digits/unet_tiny.pt", own)
    assert check(compose_config("sample", [])).denoiser.checkpoint == str(own)


def test_every_bundled_model_loads() -> None:
    from calguide.modules.denoiser import load_denoiser
    from calguide.nets.classifiers import load_classifier

    for name in EXPECTED:
        path = bundled.bundled_dir() / name
        if "unet" in name:
            net, meta = load_denoiser(path)
            assert meta["flags"]["image_size"] == 16
        else:
            net, _ = load_classifier(path)
        assert sum(p.numel() for p in net.parameters()) > 0


@pytest.fixture
def copied_bundle(tmp_path, monkeypatch) -> Path:
    """The bundle copied to a temp folder that calguide takes for its own."""
    copy = tmp_path / "bundled"
    shutil.copytree(
        bundled.bundled_dir(), copy, ignore=shutil.ignore_patterns("*.py", "__pycache__")
    )
    monkeypatch.setattr(bundled, "bundled_dir", lambda: copy)
    bundled.manifest.cache_clear()
    yield copy
    bundled.manifest.cache_clear()


def test_one_flipped_byte_is_one_line_naming_the_file(copied_bundle, tmp_path, capsys) -> None:
    target = copied_bundle / "digits/digits_resnet-clean-ce-s0.pt"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    with pytest.raises(CheckpointError) as info:
        read_weights_file(target, what="classifier")
    message = str(info.value)
    assert message.startswith(f"bundled model {target} is corrupt: sha256 ")
    assert message.endswith("reinstall calguide or restore the file from git")
    assert "\n" not in message

    # Through the console script: exit 2, the same single line.
    from test_faults import run_cli

    from calguide.commands.sample import main as sample_main

    code, err = run_cli(
        sample_main,
        [
            "classifier=digits_resnet",
            "guidance=vanilla",
            "sampling.num_samples=2",
            "metrics=none",
            f"paths.artifacts={tmp_path / 'artifacts'}",
            f"paths.log_dir={tmp_path / 'logs'}",
        ],
        capsys,
    )
    assert code == 2
    assert err.strip() == f"calguide: error: {message}"


def test_a_missing_bundled_file_is_named(copied_bundle) -> None:
    target = copied_bundle / "digits/unet_tiny_uncond.pt"
    target.unlink()
    with pytest.raises(
        FileNotFoundError, match=r"bundled model digits/unet_tiny_uncond.pt is missing"
    ):
        bundled.verify(target)


def test_files_outside_the_bundle_are_not_checked(tmp_path) -> None:
    path = tmp_path / "mine.pt"
    torch.save({"w": torch.zeros(2)}, path)
    assert read_weights_file(path, what="mine")["w"].shape == (2,)
    assert "calguide.bundled" in sys.modules
