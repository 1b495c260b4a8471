"""The prepared GPU check: one line and a non-zero exit without CUDA; its code paths, tiny, on
a CPU (``--smoke``), so a lent accelerator's few minutes are not spent finding a typo."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "gpu_check.py"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_without_cuda_it_stops_at_once_with_one_line(tmp_path) -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and proc.stdout == ""
    assert lines == [lines[0]] and lines[0].startswith("gpu-check: error: needs a CUDA GPU")
    assert not (tmp_path / "out").exists()
    made = subprocess.run(
        ["make", "--no-print-directory", "-C", str(ROOT), "gpu-check", f"GPU_OUT={tmp_path}/m"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert made.returncode != 0
    assert made.stderr.splitlines()[0].startswith("gpu-check: error: needs a CUDA GPU")


def test_smoke_run_writes_every_section(tmp_path) -> None:
    out = tmp_path / "out"
    args = [str(SCRIPT), "--out", str(out), "--smoke", "--batch", "2", "--repeats", "1"]
    args += ["--warmup", "0", "--e2e-samples", "2", "--e2e-steps", "3"]
    args += ["--features", "600", "--subset", "200", "--fastpath-samples", "40"]
    args += ["--fastpath-steps", "3"]
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads((out / "gpu_check.json").read_text())
    sections = data["sections"]
    assert not [name for name, s in sections.items() if "error" in s], sections
    variants = sections["steps"]["variants"]
    assert set(variants) >= {"fp32 eager", "tf32", "ADM use_fp16", "bf16", "bf16 + channels_last"}
    fp32 = variants["fp32 eager"]
    assert fp32["vanilla_step_s"] > 0 and fp32["diff_vs_fp32"]["denoiser"]["rel_l2"] == 0.0
    # ADM's fp16 blocks really change the denoiser output (ε̂ is not the all-zero of a fresh UNet).
    assert variants["ADM use_fp16"]["diff_vs_fp32"]["denoiser"]["rel_l2"] > 1e-5
    assert sections["e2e"]["runs"] and sections["metrics"]["cpu_equality"]["precision_recall_equal"]
    hours = sections["projection"]["gpu_hours"]["fp32 eager"]
    assert hours["vanilla"] == pytest.approx(
        50_000 * 250 / fp32["images_steps_per_s"]["vanilla"] / 3600
    )
    samplers = sections["samplers"]["samplers"]
    assert set(samplers) == {"dpmpp_2m 20", "dpmpp_2m 25", "ddpm 250"}
    for entry in samplers.values():
        assert entry["hours_50k"] == pytest.approx(50_000 * entry["sample_s"] / 3600)
    assert samplers["dpmpp_2m 20"]["sample_s"] < samplers["ddpm 250"]["sample_s"]
    # The MFU column: counted FLOPs per image and the measured matmul peak, per setting.
    flops = sections["flops"]
    assert flops["denoiser_fwd_flops_per_image"] > 0 and flops["matmul"]["tflops"] > 0
    want = flops["guided_step_flops_per_image"] * 2 / fp32["vanilla_step_s"] / 1e12
    assert fp32["throughput"]["tflops"] == pytest.approx(want)
    assert fp32["throughput"]["mfu"] == pytest.approx(want / flops["matmul"]["tflops"])
    # Every section says its precision state.
    assert fp32["tf32"] is False and variants["tf32"]["tf32"] is True
    assert sections["samplers"]["tf32"] is False
    # The fast path's quality as equivalence claims on the bundled digits models.
    fastpath = sections["fastpath"]
    assert [v["claim"] for v in fastpath["verdicts"]] == [
        "vanilla fid", "vanilla class_acc", "js fid", "js class_acc"
    ]  # fmt: skip
    assert all(v["margin"] in (0.5, 0.02) and v["verdict"] for v in fastpath["verdicts"])
    assert "sampling.fused_attention=true" in fastpath["fastest"]
    batches = sections["batches"]["batches"]
    assert set(batches) == {"2", "4"} and all(b["vanilla_step_s"] > 0 for b in batches.values())
    text = (out / "gpu_check.md").read_text()
    assert "## One DDPM step" in text and "## Projected GPU-hours" in text
    assert "## The fast path's quality" in text and "## Batch size" in text
    assert "## Samplers (fp32, TF32 off" in text and "| MFU |" in text


def test_conf_dir_falls_back_to_the_checkout(monkeypatch) -> None:
    from importlib import resources

    from calguide import config

    def missing(name):
        raise ModuleNotFoundError(name)

    monkeypatch.setattr(resources, "files", missing)
    assert config.conf_dir() == ROOT / "conf" and (config.conf_dir() / "sample.yaml").is_file()
