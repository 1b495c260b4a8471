"""What you configure is what runs: the console script makes the network evaluations its chosen
option promises (counted at the network), and every run says what it ran, in its first line and
in its record."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from calguide.config.compose import option_config

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = 2


def promised_evaluations(option: str) -> int:
    """Network evaluations per sample the option file promises: one per step of its own
    respacing (``"20"``, ``"250"``, ``"ddim50"``; comma sections add up)."""
    composed = option_config("diffusion", option)  # with the options it inherits from
    respacing = str(composed["respacing"])
    digits = respacing.removeprefix("ddim").removeprefix("logsnr").partition(":")[0]
    return sum(int(part) for part in digits.split(","))


@pytest.mark.parametrize(
    ("option", "guidance"),
    [("dpmpp", "none"), ("adm250", "none"), ("ddim", "none"), ("dpmpp_sde", "js")],
)
def test_calguide_sample_makes_the_evaluations_its_option_promises(option, guidance, tmp_path):
    out = tmp_path / "count.json"
    command = [
        sys.executable, str(ROOT / "tests" / "nfe_probe.py"), f"diffusion={option}",
        f"guidance={guidance}", "metrics=none", f"sampling.num_samples={SAMPLES}",
        f"sampling.batch_size={SAMPLES}", "sampling.progress=false", "sampling.figures=false",
        "trainer.enable_progress_bar=false", f"paths.artifacts={tmp_path / 'art'}",
        f"paths.log_dir={tmp_path / 'logs'}", f"sampling.out_dir={tmp_path / 'run'}",
    ]  # fmt: skip
    env = {**os.environ, "CALGUIDE_NFE_OUT": str(out), "WANDB_MODE": "offline"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    promised = promised_evaluations(option)
    counted = json.loads(out.read_text())
    assert counted["rows"] == promised * SAMPLES  # at the network, from outside calguide
    record = json.loads((tmp_path / "run" / "sampling.json").read_text())["run"]
    assert record["network_evaluations"] == promised
    assert record["network_evaluations_counted"] == promised
    first = done.stdout.splitlines()[0]
    assert first.startswith("calguide-sample: ")
    for words in (
        f"{record['sampler']}",
        f"{promised} of 1000 steps",
        f"{promised} network evaluations per sample",
        "unguided" if guidance == "none" else f"guidance {guidance} ",
        "float32",
        "· cpu ·",
        f"{SAMPLES} samples",
        "seed 0",
    ):
        assert words in first, (words, first)


def test_the_first_line_names_the_guidance_that_runs(compose_spec, tmp_path, capsys):
    from calguide.jobs.sample import run_sampling

    spec = compose_spec(
        "sample",
        ["score=elucd", "guidance=js", "guidance.scale=0.7", "diffusion=ddpm20",
         "sampling.num_samples=2", "sampling.batch_size=2", "metrics=none",
         "sampling.progress=false", "trainer.enable_progress_bar=false", "sampling.figures=false",
         f"sampling.out_dir={tmp_path / 'run'}"],
    )  # fmt: skip
    record = run_sampling(spec)["run"]
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("calguide-sample: ddpm, 20 of 1000 steps")
    assert "guidance js s=0.7 (elucd gamma=0.3; tau1=1, delta=0.5" in first
    assert "on x̂₀ by digits_resnet (τ_c=1)" in first
    assert record["guidance"]["scale"] == 0.7 and record["guidance"]["schedule"] == "elucd"
    assert record["guidance"]["params"]["delta"] == 0.5  # score=elucd's δ, as it ran
    assert (
        record["classifier"]["name"] == "digits_resnet"
        and len(record["classifier"]["sha256"]) == 64
    )


def test_the_readme_shows_the_first_line_of_the_default_command(compose_spec):
    """README.md quotes what a plain ``calguide-sample`` says first: built, not sampled."""
    from calguide import assembly
    from calguide.jobs.records import sampling_line
    from calguide.jobs.sample import input_identity, run_record

    spec = compose_spec("sample", [])
    setup = assembly.sampling_setup(spec)
    line = sampling_line("calguide-sample", run_record(spec, setup, input_identity(spec)))
    assert line in (ROOT / "README.md").read_text()


def test_fused_attention_is_applied_and_said(compose_spec):
    """``sampling.fused_attention=true`` switches the denoiser's attention blocks, and the first
    line and the record say so."""
    from calguide import assembly
    from calguide.jobs.records import sampling_line
    from calguide.jobs.sample import input_identity, run_record
    from calguide.nets.unet import QKVAttention, QKVAttentionLegacy

    spec = compose_spec("sample", ["sampling.fused_attention=true"])
    setup = assembly.sampling_setup(spec)
    blocks = [m for m in setup.module.denoiser.modules()
              if isinstance(m, (QKVAttention, QKVAttentionLegacy))]  # fmt: skip
    assert blocks and all(block.fused for block in blocks)
    record = run_record(spec, setup, input_identity(spec))
    assert record["compute"]["fused_attention"] is True
    assert "float32 + fused_attention · cpu" in sampling_line("calguide-sample", record)
