"""A sampler added from outside calguide: one class registered here, one YAML in tests/conf.

``toy_plms`` is a deterministic DDIM step whose ε is extrapolated from the current and the
previous step's ε (Adams–Bashforth, PLMS's idea): it carries state from one step to the next
and receives guidance through the same contract as DDPM and DDIM (the scaled gradient, here
applied to ε as ADM's ``condition_score``). Nothing in calguide knows it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from calguide.commands.sample import main as sample_main
from calguide.config import check
from calguide.diffusion import GaussianDiffusion, Sampler, register_sampler, sample_loop
from calguide.diffusion.gaussian import extract
from calguide.diffusion.samplers import sampler_names, unregister_sampler
from calguide.diffusion.steps import StepOutput, check_sampler_supports, condition_score

TOY_CONF = Path(__file__).resolve().parent / "conf"  # holds diffusion/toy_plms.yaml


@dataclass
class ToyPLMS(Sampler):
    order: int = 2  # 1: plain DDIM (η = 0); 2: ε extrapolated from the previous step's

    def check(self, guidance) -> None:
        check_sampler_supports(guidance, "ddim")  # ε-space guidance only, as DDIM

    def start(self, x_T):
        return None  # the previous step's ε

    def step(self, diffusion, model_fn, x_t, t, noise, state, *, guidance, clip_denoised):
        with torch.no_grad():
            output = model_fn(x_t, diffusion.model_timesteps(t))
        out = diffusion.p_mean_variance(output, x_t, t, clip_denoised=clip_denoised)
        grad = None
        if guidance is not None:
            grad = guidance(x_t, out.pred_x0, diffusion.model_timesteps(t))
            eps, _ = condition_score(diffusion, out, x_t, t, grad)
        else:
            eps = diffusion.predict_eps_from_x0(x_t, t, out.pred_x0)
        used = eps if self.order == 1 or state is None else 1.5 * eps - 0.5 * state
        pred_x0 = diffusion.predict_x0_from_eps(x_t, t, used)
        if clip_denoised:
            pred_x0 = pred_x0.clamp(-1, 1)
        alpha_bar_prev = extract(diffusion.alphas_cumprod_prev, t, x_t)
        sample = alpha_bar_prev.sqrt() * pred_x0 + (1 - alpha_bar_prev).sqrt() * used
        log_var = torch.full_like(x_t, -float("inf"))
        return StepOutput(sample, pred_x0, sample, log_var, grad), eps


if os.environ.get("CALGUIDE_TEST_PLUGIN") == "1":
    # Imported as a plugin by a console script (plugins=[test_plugin_sampler]): register now.
    # Under pytest the fixture below registers it for its tests only.
    register_sampler("toy_plms")(ToyPLMS)


@pytest.fixture(autouse=True)
def toy_sampler():
    if "toy_plms" not in sampler_names():
        register_sampler("toy_plms")(ToyPLMS)
    yield "toy_plms"
    unregister_sampler("toy_plms")


def test_registered_sampler_runs_in_the_loop_and_keeps_state() -> None:
    chain = GaussianDiffusion.from_config(steps=1000, respacing="ddim8")
    x_T = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))

    def model_fn(x, t):
        return 0.1 * x

    first = sample_loop(chain, model_fn, x_T, sampler=ToyPLMS(order=1))
    ddim = sample_loop(chain, model_fn, x_T, sampler="ddim")
    torch.testing.assert_close(first, ddim)  # order 1 is DDIM η = 0
    second = sample_loop(chain, model_fn, x_T, sampler=ToyPLMS(order=2))
    assert not torch.allclose(second, first)  # the carried ε changes the path


def test_registered_sampler_runs_through_calguide_sample(compose_config, tmp_path) -> None:
    """The real sampling job: diffusion=toy_plms from the extra config folder, with guidance."""
    from test_sampling import tiny_denoiser, tiny_classifier  # noqa: I001 (the shared tiny nets)

    from calguide.modules.denoiser import export_denoiser
    from calguide.nets.classifiers import export_classifier

    denoiser = export_denoiser(tiny_denoiser(), tmp_path / "denoiser.pt")
    classifier = tmp_path / "classifier.pt"
    export_classifier(tiny_classifier(), classifier, temperature=1.0)
    overrides = [
        f"hydra.searchpath=[file://{TOY_CONF}]",
        "diffusion=toy_plms",
        "data.image_size=8",
        f"denoiser.checkpoint={denoiser}",
        f"classifier.checkpoint={classifier}",
        "classifier.params.width=32",
        "guidance=js",
        "guidance.through_denoiser=true",  # ε-space guidance, as the sampler requires
        "sampling.num_samples=6",
        "sampling.batch_size=3",
        "sampling.progress=false",
        "trainer.enable_progress_bar=false",
        "metrics=none",
    ]
    cfg = compose_config("sample", [*overrides, f"sampling.out_dir={tmp_path / 'a'}"])
    assert cfg.diffusion.sampler == "toy_plms" and cfg.diffusion.sampler_params.order == 2
    record = sample_main.task(check(cfg))
    with np.load(record["samples"]) as npz:
        images = npz["arr_0"]
    assert images.shape == (6, 8, 8, 1)
    # A knob the entry does not have is one line naming the ones it has.
    with pytest.raises(Exception, match=r"toy_plms.*no knob\(s\) \['steps'\].*\['order'\]"):
        check(compose_config("sample", [*overrides, "+diffusion.sampler_params.steps=3"]))


@pytest.mark.slow
def test_registered_sampler_through_the_console_script(tmp_path) -> None:
    """``plugins=[module]`` imports the entry before the config is checked."""
    from test_sampling import tiny_denoiser

    from calguide.modules.denoiser import export_denoiser

    denoiser = export_denoiser(tiny_denoiser(), tmp_path / "denoiser.pt")
    script = Path(sys.executable).with_name("calguide-sample")
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).parent),
        "WANDB_MODE": "offline",
        "CALGUIDE_TEST_PLUGIN": "1",
    }
    args = [
        str(script),
        "plugins=[test_plugin_sampler]",
        f"hydra.searchpath=[file://{TOY_CONF}]",
        "diffusion=toy_plms",
        "data.image_size=8",
        f"denoiser.checkpoint={denoiser}",
        "guidance=none",
        "sampling.num_samples=2",
        "sampling.progress=false",
        "trainer.enable_progress_bar=false",
        "metrics=none",
        f"sampling.out_dir={tmp_path / 'out'}",
        f"paths.log_dir={tmp_path / 'logs'}",
    ]
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "out" / "samples.npz").is_file()
    unknown = subprocess.run(
        [args[0], *[a for a in args[1:] if not a.startswith("plugins=")]],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert unknown.returncode == 2
    assert "diffusion.sampler='toy_plms': must be one of ['ddpm', 'ddim']" in unknown.stderr
