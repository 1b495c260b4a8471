"""Every config composes, schemas reject bad values with one line, the CLI says it plainly."""

from __future__ import annotations

import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from calguide.commands.cli import check_group_overrides, config_groups, split_overrides
from calguide.config import ConfigError, check, conf_dir
from calguide.nets import create_unet

GROUPS = {"data", "denoiser", "diffusion", "trainer", "logger", "paths", "hydra"}


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (conf_dir() / group).glob("*.yaml"))


def test_config_tree_has_the_design_groups():
    assert set(config_groups(conf_dir())) >= GROUPS
    assert (conf_dir() / "train.yaml").is_file()


@pytest.mark.parametrize("data", ["digits", "cifar10"])
@pytest.mark.parametrize("denoiser", ["unet_tiny", "unet_tiny_uncond"])
@pytest.mark.parametrize("diffusion", options("diffusion"))
def test_train_config_composes_and_validates(compose_config, data, denoiser, diffusion):
    cfg = compose_config(
        "train", [f"data={data}", f"denoiser={denoiser}", f"diffusion={diffusion}"]
    )
    check(cfg)
    flags = OmegaConf.to_container(cfg.denoiser.flags, resolve=True)
    assert flags["image_size"] == cfg.data.image_size
    assert flags["class_cond"] is (denoiser == "unet_tiny")


@pytest.mark.parametrize("trainer", options("trainer"))
@pytest.mark.parametrize("logger", options("logger"))
def test_trainer_and_logger_options_compose(compose_config, trainer, logger):
    cfg = compose_config("train", [f"trainer={trainer}", f"logger={logger}"])
    check(cfg)
    assert cfg.trainer._target_ == "lightning.pytorch.Trainer"
    for spec in cfg.logger.values():
        assert "_target_" in spec


def test_adm128_denoiser_flags_build_the_official_layout(compose_config):
    cfg = compose_config("train", ["denoiser=adm128"])
    flags = OmegaConf.to_container(cfg.denoiser.flags, resolve=True)
    import torch

    with torch.device("meta"):
        net = create_unet(**flags)
    assert sum(p.numel() for p in net.parameters()) > 100_000_000
    assert cfg.denoiser.checkpoint.endswith("adm/128x128_diffusion.pt")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("diffusion.steps=-5", "diffusion.steps=-5: must be >= 1"),
        ("diffusion.schedule=quadratic", "diffusion.schedule='quadratic': must be one of"),
        ("diffusion.respacing=abc", "diffusion.respacing 'abc'"),
        (
            "diffusion.sampler=euler",
            "diffusion.sampler='euler': must be one of ['ddpm', 'ddim', 'dpmpp_2m', 'dpmpp_2m_sde'"
            "]",
        ),
        ("data.batch_size=0", "data.batch_size=0: must be >= 1"),
        ("data.heldout_fraction=1.5", "data.heldout_fraction=1.5: must be in [0.0, 1.0)"),
        ("optim.ema_decay=1.0", "optim.ema_decay=1.0"),
        ("diffusion.steps=abc", "diffusion.steps: Value 'abc'"),
        ("trainer.accelerator=quantum", "trainer.accelerator='quantum': must be one of"),
    ],
)
def test_bad_values_give_one_line_naming_the_key(compose_config, override, message):
    cfg = compose_config("train", [override])
    with pytest.raises(ConfigError) as info:
        check(cfg)
    text = str(info.value)
    assert message in text
    assert "\n" not in text


def test_check_returns_the_commands_typed_spec(compose_config):
    spec = check(compose_config("train", ["diffusion=ddim"]))
    assert spec.diffusion.sampler == "ddim" and spec.diffusion.respacing == "ddim50"
    assert spec.diffusion.sampler_params == {"eta": 0.0}
    assert spec.trainer["max_steps"] == 2000 and spec.seed == 0


def test_unknown_group_option_lists_allowed_values():
    with pytest.raises(ConfigError, match=r"data=nonexistent: no such option.*digits"):
        check_group_overrides(["data=nonexistent"], conf_dir())
    with pytest.raises(ConfigError, match="guess"):
        check_group_overrides(["diffusion=default,guess"], conf_dir())
    check_group_overrides(["data=digits", "diffusion.steps=10", "+x=1"], conf_dir())


def test_split_overrides_handles_flags():
    overrides, multirun = split_overrides(["-m", "--config-name", "x", "a=1", "--cfg", "job"])
    assert multirun and overrides == ["a=1", "job"]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    code = (
        "import sys; from calguide.commands.train import main; "
        "sys.argv[0] = 'calguide-train'; main()"
    )
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("diffusion.steps=-5", "calguide: error: diffusion.steps=-5: must be >= 1"),
        ("data=nonexistent", "calguide: error: data=nonexistent: no such option in conf/data/"),
        ("diffusion.stepz=3", "calguide: error: Could not override 'diffusion.stepz'"),
    ],
)
def test_cli_bad_override_is_one_clear_line(override, expected):
    proc = run_cli(override)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(expected)
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        # An old divergence name: the one line says what the paper calls them.
        ("guidance=reverse_" + "kl", "no such option in conf/guidance/; allowed: chi2, entropy"),
        ("guidance=elucd", "EluCD is vanilla with score=elucd"),
        ("guidance.params.gamma=2", "guidance.params.gamma was renamed: use guidance.params.alpha"),
        (
            "calibration.smece_weight=1",
            "calibration.smece_weight was renamed: use calibration.weight",
        ),
    ],
)
def test_old_names_get_one_line_naming_the_new_ones(override: str, expected: str):
    script = (
        "calguide.commands.calibrate"
        if override.startswith("calibration")
        else "calguide.commands.sample"
    )
    code = f"import sys; from {script} import main; sys.argv[0] = 'x'; main()"
    proc = subprocess.run(
        [sys.executable, "-c", code, override], capture_output=True, text=True, timeout=120
    )
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("calguide: error: ") and expected in lines[0]
    if override.startswith("guidance="):
        assert "rkl = KL(q_y‖p), fkl = KL(p‖q_y)" in lines[0]


def test_cli_cfg_job_prints_resolvable_config():
    proc = run_cli("--cfg", "job", "diffusion=ddim")
    assert proc.returncode == 0, proc.stderr
    assert "sampler: ddim" in proc.stdout
