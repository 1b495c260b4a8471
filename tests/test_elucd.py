"""EluCD as calguide composes it (``row=elucd_resnet50``) equals EluCD's ``p_sample`` step.

The reference below is EluCD's guided DDPM step written out from its description (PAPER.md §6):
a torchvision ResNet with every ReLU (stem and bottlenecks) replaced by Softplus(β = 3), fed the
clipped x̂₀ as it is; g = ∇_{x̂₀}[τ1·f_y − log Σ exp(τ2·f)] times the scale; the guided mean
μ + (Σ_t + a_i)·g with a_i = max(sin(π·i/N)·Σ_max·γ, 0) and Σ_max the running maximum of the
model variance (one element per sample, where EluCD reads one element of the batch's first
sample: the batch-independent reading). Random weights, fixed model outputs.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from calguide import assembly
from calguide.config import check
from calguide.diffusion import GaussianDiffusion, ddpm_step

torchvision = pytest.importorskip("torchvision")

N_STEPS, SIZE, BATCH = 10, 32, 2


def _elucd_resnet(state_dict: dict, beta: float) -> nn.Module:
    """EluCD's classifier: torchvision's ResNet-50 with its ReLUs swapped as EluCD swaps them."""
    net = torchvision.models.resnet50()
    net.load_state_dict(state_dict)
    for name, module in net.named_children():
        if isinstance(module, nn.ReLU):
            setattr(net, name, nn.Softplus(beta=beta))
        elif isinstance(module, nn.Sequential):
            for block in module:
                block.relu = nn.Softplus(beta=beta)
    return net.eval()


def _elucd_step(diffusion, output, x, i, noise, resnet, y, var_max, *, tau1, delta, scale, gamma):
    """One EluCD p_sample step; returns (sample, updated Σ_max per sample)."""
    t = torch.full((x.shape[0],), i)
    out = diffusion.p_mean_variance(output, x, t)
    var_max = torch.maximum(var_max, out.variance.reshape(x.shape[0], -1)[:, 0])
    a = (torch.sin(torch.tensor(i / N_STEPS * math.pi)) * var_max * gamma).clamp_min(0.0)
    x0 = out.pred_x0.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = resnet(x0)
        numerator = torch.exp(logits * tau1)[torch.arange(len(y)), y]
        denominator = torch.exp(logits * tau1 * delta).sum(1)
        selected = torch.log(numerator / denominator)
        grad = torch.autograd.grad(selected.sum(), x0)[0] * scale
    mean = out.mean + (out.variance + a.view(-1, 1, 1, 1)) * grad
    nonzero = float(i != 0)
    return mean + nonzero * torch.exp(0.5 * out.log_variance) * noise, var_max


def test_elucd_row_equals_elucds_p_sample(compose_config, tmp_path) -> None:
    torch.manual_seed(0)
    weights = torchvision.models.resnet50().state_dict()
    path = tmp_path / "resnet50-11ad3fa6.pth"
    torch.save(weights, path)
    cfg = compose_config(
        "sample", ["row=elucd_resnet50", f"classifier.checkpoint={path}", "diffusion.steps=1000"]
    )
    assert (cfg.guidance.name, cfg.guidance.schedule) == ("vanilla", "elucd")
    assert dict(cfg.guidance.params) == {"tau1": 1.0, "delta": 0.5}
    assert cfg.guidance.schedule_params.gamma == 0.3 and cfg.guidance.scale == 1.0
    assert cfg.classifier.normalize == "none" and cfg.classifier.input_size is None
    assert cfg.classifier.softplus_beta == 3.0
    run = check(cfg)
    net, meta = assembly.classifier(run.classifier, run.classifier.checkpoint, "resnet50")
    hook = assembly.guidance_of(
        run.guidance, net, input_mode="x0", temperature=meta["temperature"], num_timesteps=1000
    )
    assert hook.space == "x0" and hook.adds_variance

    diffusion = GaussianDiffusion.from_config(steps=1000, learn_sigma=True, respacing=str(N_STEPS))
    reference = _elucd_resnet(weights, 3.0).double()
    hook.classifier.double()
    y = torch.tensor([3, 917])
    bound = hook.bind(y)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(BATCH, 3, SIZE, SIZE, generator=gen, dtype=torch.float64)
    x_ref, ours_max, ref_max = x.clone(), None, torch.zeros(BATCH, dtype=torch.float64)
    for i in (N_STEPS - 1, N_STEPS // 2, 0):  # Σ_max carries across steps; a_0 = 0
        # Fixed model outputs: ε and per-pixel variance values in [−1, 1] (learned sigma).
        output = torch.cat(
            [
                torch.randn(BATCH, 3, SIZE, SIZE, generator=gen, dtype=torch.float64),
                torch.rand(BATCH, 3, SIZE, SIZE, generator=gen, dtype=torch.float64) * 2 - 1,
            ],
            dim=1,
        )
        noise = torch.randn(BATCH, 3, SIZE, SIZE, generator=gen, dtype=torch.float64)
        t = torch.full((BATCH,), i)
        step = ddpm_step(diffusion, output, x, t, noise, guidance=bound, variance_max=ours_max)
        want, ref_max = _elucd_step(
            diffusion, output, x_ref, i, noise, reference, y, ref_max,
            tau1=1.0, delta=0.5, scale=1.0, gamma=0.3,
        )  # fmt: skip
        # float64 throughout; what remains is EluCD's exp/log against our logsumexp.
        torch.testing.assert_close(step.sample, want, rtol=1e-7, atol=1e-9)
        torch.testing.assert_close(step.variance_max, ref_max)
        assert step.guidance.abs().sum() > 0
        x, x_ref, ours_max = step.sample, want, step.variance_max


def test_constant_schedule_keeps_adm_g_bit_for_bit() -> None:
    """With no additive variance the guided mean is exactly μ + Σ_t·(s·g)."""
    diffusion = GaussianDiffusion.from_config(steps=1000, learn_sigma=True, respacing="10")
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(3, 3, 8, 8, generator=gen)
    output = torch.randn(3, 6, 8, 8, generator=gen)
    noise = torch.randn(3, 3, 8, 8, generator=gen)
    grad = torch.randn(3, 3, 8, 8, generator=gen)
    t = torch.full((3,), 7)
    step = ddpm_step(diffusion, output, x, t, noise, guidance=lambda *_: grad)
    out = diffusion.p_mean_variance(output, x, t)
    want = out.mean + out.variance * grad
    assert torch.equal(step.mean, want)


def test_sample_loop_carries_the_running_variance_maximum() -> None:
    """Σ_max is the maximum over the chain so far (the first step's, for ADM's variances that
    fall along the chain), not the current step's variance."""
    from calguide.diffusion import sample_loop
    from calguide.guidance import GuidanceClassifier, build_schedule, build_strategy, make_guidance

    diffusion = GaussianDiffusion.from_config(steps=1000, respacing="10")
    torch.manual_seed(0)
    clf = GuidanceClassifier(nn.Sequential(nn.Flatten(), nn.Linear(16, 3)))
    hook = make_guidance(clf, build_strategy("vanilla"), build_schedule("elucd", 1.0), 1000)
    bound = hook.bind(torch.tensor([0, 2]))
    seen: list[torch.Tensor] = []

    def record(i, x_t, step) -> None:
        seen.append(step.variance_max)

    x_T = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(3))
    sample_loop(diffusion, lambda x, t: torch.zeros_like(x), x_T, guidance=bound, callback=record)
    first = diffusion.p_mean_variance(torch.zeros_like(x_T), x_T, torch.full((2,), 9)).variance
    for variance_max in seen:
        torch.testing.assert_close(variance_max, first.reshape(2, -1)[:, 0])
