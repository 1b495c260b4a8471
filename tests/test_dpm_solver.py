"""DPM-Solver++(2M): against diffusers' DPMSolverMultistepScheduler on the same model outputs
and timesteps, second-order convergence on a Gaussian whose exact ε and ODE solution are known,
the guidance mapping (ADM's condition_score at w = 1, EluCD's additive schedule through w), and
the config and logSNR timesteps."""

from __future__ import annotations

import math

import pytest
import torch

from calguide.diffusion import GaussianDiffusion
from calguide.diffusion.dpm_solver import dpmpp_update, half_logsnr
from calguide.diffusion.samplers import DPMpp2M, build_sampler, sample_loop
from calguide.diffusion.schedules import beta_schedule, logsnr_timesteps, space_timesteps
from calguide.diffusion.steps import ddim_step


def chain(respacing: str) -> GaussianDiffusion:
    return GaussianDiffusion.from_config(steps=1000, schedule="linear", respacing=respacing)


BASE = torch.cumprod(1 - beta_schedule("linear", 1000), 0)


def toy_model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A smooth, deterministic stand-in for a network: the exact ε of data N(0.3, 0.5²) plus a
    nonlinear wobble, so that samples stay O(1) like a real denoiser's."""
    a = BASE[t].to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
    alpha, sigma = a.sqrt(), (1 - a).sqrt()
    return sigma * (x - 0.3 * alpha) / (0.25 * alpha**2 + sigma**2) + 0.05 * torch.sin(3.0 * x)


@pytest.mark.parametrize("respacing", ["10", "25", "logsnr15"])
def test_unguided_agrees_with_diffusers(respacing: str) -> None:
    import diffusers  # a dev dependency: the reference implementation

    diffusion = chain(respacing)
    x_T = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ours = sample_loop(
        diffusion, toy_model, x_T, sampler=build_sampler("dpmpp_2m"), clip_denoised=False
    )
    scheduler = diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=1000, trained_betas=beta_schedule("linear", 1000).numpy(),
        solver_order=2, prediction_type="epsilon", algorithm_type="dpmsolver++",
        solver_type="midpoint", lower_order_final=True, final_sigmas_type="zero",
    )  # fmt: skip
    steps = diffusion.timestep_map.flip(0).tolist()
    scheduler.set_timesteps(timesteps=steps)
    x = x_T.clone()
    for t in scheduler.timesteps:
        eps = toy_model(x, torch.full((x.shape[0],), int(t)))
        x = scheduler.step(eps, t, x).prev_sample
    # diffusers steps in float32 (it casts the sample to float32 in every step), and the chain
    # amplifies a rounding of x by up to σ/α ≈ 157 at t = 999: agreement to that precision.
    assert (ours - x).abs().max().item() < 5e-5 * max(1.0, x.abs().max().item())


@pytest.mark.parametrize("respacing", ["6", "20", "logsnr12"])
def test_unguided_is_the_published_algorithm_in_float64(respacing: str) -> None:
    """Lu et al. (2022), Algorithm 2 (DPM-Solver++(2M)), written out here from the paper in
    float64: the same trajectory to 1e-12."""
    diffusion = chain(respacing)
    x_T = torch.randn(2, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    ours = sample_loop(diffusion, toy_model, x_T, sampler="dpmpp_2m", clip_denoised=False)
    ts = diffusion.timestep_map.flip(0).tolist()  # t_0 = T (noisiest) ... t_M = smallest
    a = [float(BASE[t]) for t in ts]
    alpha = [math.sqrt(v) for v in a]
    sigma = [math.sqrt(1 - v) for v in a]
    lam = [math.log(al / si) for al, si in zip(alpha, sigma)]

    def data(x, k):  # x_θ(x, t_k): the model's data prediction
        eps = toy_model(x, torch.full((x.shape[0],), ts[k]))
        return (x - sigma[k] * eps) / alpha[k]

    x = x_T
    q_prev = data(x, 0)
    x = sigma[1] / sigma[0] * x - alpha[1] * math.expm1(-(lam[1] - lam[0])) * q_prev
    for i in range(2, len(ts)):
        h = lam[i] - lam[i - 1]
        r = (lam[i - 1] - lam[i - 2]) / h
        q = data(x, i - 1)
        d = (1 + 1 / (2 * r)) * q - 1 / (2 * r) * q_prev
        x = sigma[i] / sigma[i - 1] * x - alpha[i] * math.expm1(-h) * d
        q_prev = q
    x = data(x, len(ts) - 1)  # the final step to σ = 0 returns the data prediction
    assert (ours - x).abs().max().item() < 1e-12


def gaussian_eps(mu: float, s: float, cumprod: torch.Tensor):
    """Exact ε for data ~ N(mu, s²) in every coordinate: x_t ~ N(α·mu, α²s² + σ²)."""

    def eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = cumprod[t].to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
        alpha, sigma = a.sqrt(), (1 - a).sqrt()
        return sigma * (x - alpha * mu) / (alpha**2 * s**2 + sigma**2)

    return eps


def logsnr_chain(n: int, lam_min: float = -5.0, lam_max: float = 4.0) -> GaussianDiffusion:
    """A chain of n steps equally spaced in λ (step 0 the least noisy), from its ᾱ."""
    lam = torch.linspace(lam_max, lam_min, n, dtype=torch.float64)
    cumprod = torch.sigmoid(2 * lam)
    previous = torch.cat([torch.ones(1, dtype=torch.float64), cumprod[:-1]])
    return GaussianDiffusion(1 - cumprod / previous)


def solve_to_last_grid_point(diffusion, eps, x_T, sampler) -> torch.Tensor:
    """Every solver step but the final jump to σ = 0."""
    x, state = x_T, sampler.start(x_T)
    for i in range(diffusion.num_timesteps - 1, 0, -1):
        t = torch.full((x.shape[0],), i, dtype=torch.long)
        step, state = sampler.step(
            diffusion, eps, x, t, None, state, guidance=None, clip_denoised=False
        )
        x = step.sample
    return x


ERRORS: dict[int, float] = {}


def test_error_falls_at_second_order_on_a_gaussian() -> None:
    """Data N(mu, s²) per coordinate: the exact ε is known, and the probability-flow ODE moves
    quantiles linearly, x_t = α·mu + √(α²s² + σ²)·z. On chains equally spaced in λ (h =
    9/(N − 1)), the solver's error at the last grid point against that, at 5, 10, 20 and 40
    steps, falls with a log-log slope of about −2."""
    mu, s = 0.4, 0.3
    x_T = torch.randn(512, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for n in (5, 10, 20, 40):
        diffusion = logsnr_chain(n)
        cumprod = diffusion.alphas_cumprod
        x = solve_to_last_grid_point(diffusion, gaussian_eps(mu, s, cumprod), x_T, DPMpp2M())
        a_T, a_0 = cumprod[-1], cumprod[0]
        z = (x_T - a_T.sqrt() * mu) / (a_T * s**2 + 1 - a_T).sqrt()
        exact = a_0.sqrt() * mu + (a_0 * s**2 + 1 - a_0).sqrt() * z
        ERRORS[n] = float((x - exact).abs().max())
    slope = math.log(ERRORS[40] / ERRORS[5]) / math.log(40 / 5)
    print(f"max error at 5/10/20/40 steps: {ERRORS}; log-log slope {slope:.2f}")
    assert -2.4 < slope < -1.7, ERRORS
    assert ERRORS[40] < ERRORS[20] < ERRORS[10] < ERRORS[5]


def test_first_order_step_is_ddim_with_condition_score() -> None:
    """w = 1 (constant schedule, x_t-space guidance): the first step equals ADM's DDIM step
    with condition_score, ε' = ε − √(1−ᾱ)·s·g."""
    diffusion = chain("10")
    x = torch.randn(2, 1, 3, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)

    def guidance(x_t, pred_x0, t):
        return 0.2 * torch.cos(x_t)

    t = torch.full((2,), 9, dtype=torch.long)
    out = toy_model(x, diffusion.model_timesteps(t))
    want = ddim_step(diffusion, out, x, t, torch.zeros_like(x), guidance=guidance)
    sampler = DPMpp2M()
    got, _ = sampler.step(
        diffusion, toy_model, x, t, None, sampler.start(x), guidance=guidance, clip_denoised=True
    )
    assert torch.allclose(got.sample, want.sample, atol=1e-10)


def test_dpmpp_update_formulas() -> None:
    x, d, prev = torch.tensor(1.0), torch.tensor(0.5), torch.tensor(0.2)
    h, hp = 0.3, 0.2
    first = dpmpp_update(x, d, None, lam_s=0.0, lam_t=h, lam_prev=None,
                         sigma_s=0.8, sigma_t=0.7, alpha_t=0.6)  # fmt: skip
    assert float(first) == pytest.approx(0.7 / 0.8 * 1.0 - 0.6 * math.expm1(-h) * 0.5)
    second = dpmpp_update(x, d, prev, lam_s=0.0, lam_t=h, lam_prev=-hp,
                          sigma_s=0.8, sigma_t=0.7, alpha_t=0.6)  # fmt: skip
    r = hp / h
    blend = (1 + 1 / (2 * r)) * 0.5 - 1 / (2 * r) * 0.2
    assert float(second) == pytest.approx(0.7 / 0.8 - 0.6 * math.expm1(-h) * blend)
    assert dpmpp_update(x, d, prev, lam_s=0.0, lam_t=1.0, lam_prev=-1.0, sigma_s=0.5,
                        sigma_t=0.0, alpha_t=1.0) is d  # fmt: skip
    with pytest.raises(ValueError):
        dpmpp_update(x, d, None, lam_s=1.0, lam_t=0.5, lam_prev=None,
                     sigma_s=0.5, sigma_t=0.6, alpha_t=0.7)  # fmt: skip


class _Additive:
    """Guidance with EluCD's additive variance a_i = sin(π i/N)·Σ_max·γ (x̂₀ space)."""

    space = "x0"
    adds_variance = True

    def __call__(self, x_t, pred_x0, t):
        return torch.ones_like(x_t)

    def extra_variance(self, index, num_steps, variance_max):
        from calguide.guidance.schedules import elucd_extra_variance

        return elucd_extra_variance(index, num_steps, variance_max)


def test_weight_reproduces_the_reference_ddpm_shift() -> None:
    """On the reference chain's own timesteps, w·Σ_ref = Σ_ref + a_i: the field of the
    reference DDPM chain (fixed large variance, β)."""
    ref = chain("250")
    sampler = DPMpp2M(reference_steps=250)
    x = torch.zeros(1, 1, 2, 2, dtype=torch.float64)
    running = None
    for i in (249, 200, 125, 40, 3):
        t_model = ref.model_timesteps(torch.tensor([i]))
        w, running = sampler.guidance_weight(ref, _Additive(), None, x, t_model, running)
        beta = ref.betas[i] if i > 0 else ref.posterior_variance[1]
        a = math.sin(math.pi * i / 250) * float(running[0]) * 0.3
        assert float(w.reshape(-1)[0]) * float(beta) == pytest.approx(float(beta) + a, rel=1e-6)


@pytest.mark.parametrize("variance", ["fixed_large", "fixed_small"])
def test_weight_uses_the_reference_chains_own_variance_down_to_its_last_step(variance) -> None:
    """Σ behind w is the reference DDPM chain's own model_log_variance, interpolated in t
    between its steps, down to its last one (where ADM's fixed large takes the posterior
    variance, not β₀): base step 2 lies halfway between the 250-step chain's steps 0 and 1."""
    base = chain("1000")
    solver_chain = GaussianDiffusion(base.betas, variance=variance)
    ref = GaussianDiffusion.from_config(steps=1000, schedule="linear", respacing="250")
    ref = GaussianDiffusion(ref.betas, variance=variance)
    x = torch.zeros(1, 1, 2, 2, dtype=torch.float64)
    step_log_var = [float(ref.model_log_variance(None, x, torch.tensor([i])).reshape(-1)[0])
                    for i in (0, 1)]  # fmt: skip
    sigma = math.exp(0.5 * (step_log_var[0] + step_log_var[1]))
    sampler = DPMpp2M(reference_steps=250)
    w, _ = sampler.guidance_weight(
        solver_chain, _Additive(), None, x, torch.tensor([2]), torch.ones_like(x)
    )
    a = math.sin(math.pi * 0.5 / 250) * 1.0 * 0.3  # Σ_max held at 1, above every Σ
    assert float(w.reshape(-1)[0]) == pytest.approx(1.0 + a / sigma, rel=1e-9)


def test_the_solver_accepts_elucds_schedule_that_ddim_refuses() -> None:
    from calguide.diffusion.samplers import DDIM

    with pytest.raises(ValueError, match="ddim"):
        DDIM().check(_Additive())
    DPMpp2M().check(_Additive())
    diffusion = chain("8")
    x_T = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    out = sample_loop(diffusion, toy_model, x_T, sampler="dpmpp_2m", guidance=_Additive())
    # the last x̂₀ is clipped; Tweedie's shift (σ₀²/α₀)·w·s·g at base step 0 adds ~1e-4
    assert torch.isfinite(out).all() and out.abs().max() <= 1.0 + 1e-3


def test_logsnr_timesteps_are_uniform_in_logsnr_and_bad_knobs_are_one_line() -> None:
    base = torch.cumprod(1 - beta_schedule("linear", 1000), 0)
    kept = logsnr_timesteps(base, 20)
    assert len(kept) == 20 and kept[0] == 0 and kept[-1] == 999
    lam = half_logsnr(base[kept])
    gaps = (lam[:-1] - lam[1:]).tolist()
    assert max(gaps) < 1.5 * min(gaps)  # near-uniform (nearest integer steps)
    assert space_timesteps(1000, "logsnr20", base) == kept
    with pytest.raises(ValueError, match="logsnrN"):
        space_timesteps(1000, "logsnrX")
    cosine = torch.cumprod(1 - beta_schedule("cosine", 1000), 0)
    assert space_timesteps(1000, "logsnr20", cosine) != kept  # the schedule's own grid
    with pytest.raises(ValueError, match="needs the chain's alphas_cumprod"):
        space_timesteps(1000, "logsnr20")  # never a silent linear schedule
    with pytest.raises(ValueError, match="reference_steps"):
        build_sampler("dpmpp_2m", reference_steps=0)
    with pytest.raises(ValueError, match="thresholding"):
        build_sampler("dpmpp_2m", thresholding="soft")


@pytest.mark.parametrize("respacing", ["10", "logsnr15"])
def test_sde_variant_agrees_with_diffusers_on_the_same_noise(respacing: str) -> None:
    import diffusers  # a dev dependency: the reference implementation

    diffusion = chain(respacing)
    g = torch.Generator().manual_seed(7)
    x_T = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64)
    noises = {i: torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64) for i in range(40)}
    ours = sample_loop(
        diffusion, toy_model, x_T, sampler="dpmpp_2m_sde", clip_denoised=False,
        noise_fn=lambda i, x: noises[i],
    )  # fmt: skip
    scheduler = diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=1000, trained_betas=beta_schedule("linear", 1000).numpy(),
        solver_order=2, prediction_type="epsilon", algorithm_type="sde-dpmsolver++",
        solver_type="midpoint", lower_order_final=True, final_sigmas_type="zero",
    )  # fmt: skip
    scheduler.set_timesteps(timesteps=diffusion.timestep_map.flip(0).tolist())
    x = x_T.clone()
    for k, t in enumerate(scheduler.timesteps):
        eps = toy_model(x, torch.full((x.shape[0],), int(t)))
        noise = noises[diffusion.num_timesteps - 1 - k]
        x = scheduler.step(eps, t, x, variance_noise=noise).prev_sample
    assert (ours - x).abs().max().item() < 5e-5 * max(1.0, x.abs().max().item())


@pytest.mark.parametrize(
    ("sampler", "draws"),
    [("dpmpp_2m", 0), ("dpmpp_2m_sde", 6), (build_sampler("ddim", eta=0.0), 0),
     (build_sampler("ddim", eta=0.5), 6), ("ddpm", 6)],
)  # fmt: skip
def test_step_noise_is_drawn_only_by_steps_that_read_it(sampler, draws) -> None:
    """A deterministic step (the ODE, DDIM at η = 0) draws no random numbers per step; the
    sample is the one the same chain gives with drawn noise (it never reads it)."""
    diffusion = chain("6")
    x_T = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    calls = []

    def noise_fn(i, x):
        calls.append(i)
        return torch.randn(x.shape, generator=torch.Generator().manual_seed(i), dtype=x.dtype)

    out = sample_loop(diffusion, toy_model, x_T, sampler=sampler, noise_fn=noise_fn)
    assert len(calls) == draws
    entry = build_sampler(sampler) if isinstance(sampler, str) else sampler
    if not draws:  # the same step fed drawn noise gives the same sample
        x, state = x_T, entry.start(x_T)
        for i in range(diffusion.num_timesteps - 1, -1, -1):
            t = torch.full((2,), i, dtype=torch.long)
            step, state = entry.step(
                diffusion, toy_model, x, t, noise_fn(i, x), state, guidance=None,
                clip_denoised=True,
            )  # fmt: skip
            x = step.sample
        assert torch.equal(out, x)
