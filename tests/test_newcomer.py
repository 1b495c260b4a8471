"""What people do on their first day: log to W&B without an account, ask for a GPU the machine
does not have, run ADM's fp16 flags on a CPU. Each gives one line, never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_sampling import export_tiny_pair, sample_overrides
from wandb_records import run_contents

from calguide import assembly
from calguide.assembly.machine import wandb_key_configured, wandb_mode
from calguide.config import check
from calguide.errors import ConfigError


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> dict[str, Path]:
    return export_tiny_pair(tmp_path_factory.mktemp("newcomer_artifacts"))


def no_key_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """An environment with no W&B key anywhere (an empty netrc, no WANDB_* variables)."""
    netrc = tmp_path / "netrc"
    netrc.write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(NETRC=str(netrc), HOME=str(tmp_path), WANDB_SILENT="true", **extra)
    return env


def run_sample(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    script = Path(sys.executable).parent / "calguide-sample"
    return subprocess.run(
        [str(script), *args], capture_output=True, text=True, timeout=600, env=env, cwd=cwd
    )


def wandb_args(artifacts, tmp_path: Path) -> list[str]:
    return [
        *sample_overrides(artifacts, tmp_path / "samples", "guidance=js"),
        "metrics=domain", f"metrics.evaluator={artifacts['classifier']}",
        f"metrics.cache_dir={tmp_path / 'reference'}", "logger=wandb",
        f"paths.log_dir={tmp_path / 'logs'}", "sampling.figures=true",
    ]  # fmt: skip


def test_wandb_without_a_key_logs_offline_and_says_how_to_sync(artifacts, tmp_path) -> None:
    done = run_sample(wandb_args(artifacts, tmp_path), no_key_env(tmp_path), tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    lines = [x for x in done.stdout.splitlines() if x.startswith("calguide: W&B:")]
    assert len(lines) == 1 and "logging offline" in lines[0] and "wandb sync" in lines[0]
    (run_file,) = (tmp_path / "logs").rglob("offline-run-*/run-*.wandb")
    contents = run_contents(run_file)
    config = contents["config"]
    assert config["guidance"]["name"] == "js" and config["task_name"] == "sample"
    summary = contents["summary"]
    for key in ("fid", "precision", "recall", "class_acc", "kid"):
        assert key in summary, key
    record = json.loads((tmp_path / "samples" / "metrics.json").read_text())
    assert summary["fid"] == pytest.approx(record["fid"])
    media = {p.parent.name for p in run_file.parent.rglob("files/media/images/**/*.png")}
    assert {"samples", "diagnostics"} <= media  # the sample grid and the diagnostics figure


@pytest.mark.parametrize("mode", ["disabled", "offline"])
def test_wandb_modes_from_the_environment(artifacts, tmp_path, mode) -> None:
    env = no_key_env(tmp_path, WANDB_MODE=mode)
    done = run_sample(wandb_args(artifacts, tmp_path), env, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "calguide: W&B:" not in done.stdout and "Traceback" not in done.stderr
    assert "💡 Tip" not in done.stderr + done.stdout  # Lightning's adverts are dropped
    runs = list((tmp_path / "logs").rglob("offline-run-*"))
    assert bool(runs) == (mode == "offline")


def test_wandb_online_without_a_key_is_one_line(tmp_path, monkeypatch) -> None:
    for key in [k for k in os.environ if k.startswith("WANDB_")]:
        monkeypatch.delenv(key)
    (tmp_path / "netrc").write_text("")
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    assert not wandb_key_configured()
    monkeypatch.setenv("WANDB_MODE", "online")
    with pytest.raises(ConfigError, match="WANDB_MODE=online, but no W&B API key"):
        wandb_mode(False, tmp_path)
    monkeypatch.setenv("WANDB_MODE", "sideways")
    with pytest.raises(ConfigError, match="WANDB_MODE='sideways'"):
        wandb_mode(False, tmp_path)
    monkeypatch.delenv("WANDB_MODE")
    (tmp_path / "netrc").write_text("machine api.wandb.ai\n  login user\n  password abc123\n")
    assert wandb_key_configured()
    assert wandb_mode(False, tmp_path) == ("online", None)
    assert wandb_mode(True, tmp_path) == ("offline", None)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_asking_for_a_gpu_on_a_cpu_machine_is_one_line(artifacts, tmp_path) -> None:
    args = [*sample_overrides(artifacts, tmp_path / "s"), "trainer=gpu"]
    done = run_sample(args, no_key_env(tmp_path, WANDB_MODE="disabled"), tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "calguide: error: trainer.accelerator=gpu: this machine has no CUDA GPU "
        "(torch.cuda.is_available() is False); use trainer=cpu"
    ]
    assert not (tmp_path / "s").exists()  # nothing loaded, nothing written


def test_more_gpus_than_the_machine_has(monkeypatch, compose_config) -> None:
    monkeypatch.setattr(assembly.machine, "gpu_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    cfg = compose_config("sample", ["trainer=gpu", "trainer.devices=4"])
    with pytest.raises(ConfigError, match=r"trainer.devices=4: this machine has 2 CUDA GPU\(s\)"):
        assembly.check_machine(cfg.trainer)
    assembly.check_machine(compose_config("sample", ["trainer=gpu", "trainer.devices=2"]).trainer)


def test_adm_fp16_and_autocast_on_a_cpu_run_in_float32(
    artifacts, compose_config, tmp_path, capsys
) -> None:
    out = tmp_path / "s"
    cfg = compose_config(
        "sample", [*sample_overrides(artifacts, out), "sampling.precision=bf16", "trainer=cpu"]
    )
    net = assembly.denoiser(check(cfg).denoiser, artifacts["denoiser"])
    net.net.convert_to_fp16()
    fp16 = assembly.Denoiser(net.net, {**net.flags, "use_fp16": True}, net.diffusion)
    back = assembly.float32_off_gpu(fp16)
    assert back.flags["use_fp16"] is False
    assert all(p.dtype == torch.float32 for p in back.net.parameters())
    assert "runs in float32" in capsys.readouterr().out
    setup = assembly.sampling_setup(check(cfg))
    assert "sampling.precision=bf16 is a CUDA autocast" in capsys.readouterr().out
    assert setup.module.precision == "32"  # built with what runs: the record says float32
    assert setup.module.describe()["compute"]["precision"] == "32"


def test_calibration_inputs_denoiser_with_adm_fp16_flags_runs_in_float32_on_a_cpu(
    compose_config, tmp_path, capsys
) -> None:
    from tiny import tiny_denoiser_module

    from calguide.modules.denoiser import export_denoiser

    path = export_denoiser(tiny_denoiser_module(use_fp16=True), tmp_path / "fp16.pt")
    cfg = compose_config(
        "calibrate", ["data.image_size=8", f"inputs.denoiser={path}", "trainer=cpu"]
    )
    net = assembly.inputs_denoiser(check(cfg))
    assert net is not None and net.flags["use_fp16"] is False
    assert all(p.dtype == torch.float32 for p in net.net.parameters())
    assert "runs in float32" in capsys.readouterr().out
