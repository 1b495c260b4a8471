"""The Gaussian-mixture lab: exact formulas, exact samplers and the lab job end to end."""

from __future__ import annotations

import json
import math

import pytest
import torch
from omegaconf import OmegaConf

from calguide.config import ConfigError, check, compose, release
from calguide.config.lab import lab_run_guidance
from calguide.data.gmm import GaussianMixture, mixture_from_config
from calguide.diffusion import GaussianDiffusion
from calguide.jobs.lab import chains, run_lab, sample_run
from calguide.lab.evaluate import (
    class_energy,
    energy_distance,
    evaluate_samples,
    exact_reference,
    mode_coverage_tv,
)
from calguide.lab.plugins import ExactEpsModel, ExactPosterior
from calguide.modules.sampling import SamplingModule
from calguide.nets.classifiers import build_classifier
from calguide.samples.noise import BatchNoise

N = 10_000  # the sample size for the sampler checks


@pytest.fixture(scope="module")
def lab_cfg():
    cfg = compose("lab", ["paths.artifacts=unused"], output_dir="unused")
    release()
    return cfg


@pytest.fixture(scope="module")
def mixture(lab_cfg) -> GaussianMixture:
    return mixture_from_config(OmegaConf.to_container(lab_cfg.lab.mixture.components))


@pytest.fixture(scope="module")
def base() -> GaussianDiffusion:
    return GaussianDiffusion.from_config()


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------- closed forms


def test_noised_density_is_the_gaussian_convolution(mixture):
    """log p_t from the eigenbasis form equals the direct N(√ᾱ μ, ᾱΣ + (1−ᾱ)I) mixture."""
    x = torch.randn(7, 2, dtype=torch.float64) * 2
    for a in (1.0, 0.6, 0.01):
        direct = []
        for k in range(mixture.num_components):
            cov = a * mixture.covs[k] + (1 - a) * torch.eye(2, dtype=torch.float64)
            law = torch.distributions.MultivariateNormal(math.sqrt(a) * mixture.means[k], cov)
            direct.append(mixture.weights[k].log() + law.log_prob(x))
        expected = torch.stack(direct, -1).logsumexp(-1)
        torch.testing.assert_close(mixture.log_prob(x, a), expected)


def test_score_eps_and_posterior_match_autograd_and_bayes(mixture):
    x = torch.randn(9, 2, dtype=torch.float64) * 2
    a = torch.rand(9, dtype=torch.float64)
    y = torch.randint(0, mixture.num_classes, (9,))
    for labels in (None, y):
        xr = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(mixture.log_prob(xr, a, labels).sum(), xr)
        torch.testing.assert_close(mixture.score(x, a, labels), grad)
        torch.testing.assert_close(mixture.eps(x, a, labels), -(1 - a).sqrt()[:, None] * grad)
    # Bayes: log p(y | x_t) = log p(x_t | y) + log p(y) − log p(x_t).
    prior = mixture.class_prior()
    for c in range(mixture.num_classes):
        bayes = (
            mixture.log_prob(x, a, torch.full((9,), c)) + prior[c].log() - mixture.log_prob(x, a)
        )
        torch.testing.assert_close(mixture.class_log_posterior(x, a)[:, c], bayes)


def test_sampling_moments_and_class_conditioning(mixture):
    g = torch.Generator().manual_seed(0)
    x, y, comp = mixture.sample(40_000, generator=g)
    shares = torch.bincount(comp, minlength=mixture.num_components).double() / 40_000
    assert torch.allclose(shares, mixture.weights, atol=0.01)
    assert torch.allclose(x.double().mean(0), mixture.weights @ mixture.means, atol=0.03)
    assert torch.equal(y, mixture.classes[comp])
    labels = torch.full((500,), 2)
    _, y2, comp2 = mixture.sample(500, labels, generator=g)
    assert (y2 == 2).all() and (mixture.classes[comp2] == 2).all()


def test_mixture_config_errors_name_the_key():
    with pytest.raises(ValueError, match=r"components\[1\]: missing class"):
        mixture_from_config([{"class": 0, "mean": [0, 0]}, {"mean": [1, 1]}])
    with pytest.raises(ValueError, match=r"components\[0\].std"):
        mixture_from_config([{"class": 0, "mean": [0, 0], "std": [1, 1, 1]}])
    with pytest.raises(ValueError, match="every class"):
        mixture_from_config([{"class": 0, "mean": [0]}, {"class": 2, "mean": [1]}])
    with pytest.raises(ValueError, match="positive definite"):
        mixture_from_config([{"class": 0, "mean": [0, 0], "cov": [[1, 2], [2, 1]]}])


def test_any_dimension():
    m = mixture_from_config(
        [
            {"class": 0, "mean": [0, 0, 0, 0, 0], "std": 0.5},
            {"class": 1, "mean": [2, 0, 0, 0, 1], "std": [0.3, 0.4, 0.5, 0.6, 0.7]},
        ]
    )
    x = torch.randn(4, 5, dtype=torch.float64)
    xr = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(m.log_prob(xr, 0.3).sum(), xr)
    torch.testing.assert_close(m.score(x, 0.3), grad)


# ----------------------------------------------------------------------- measurements


def test_energy_distance_reference_definition():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(30, 2, generator=g), torch.randn(40, 2, generator=g) + 0.5
    dab = torch.cdist(a.double(), b.double()).mean()
    daa = torch.cdist(a.double(), a.double()).sum() / (30 * 29)
    dbb = torch.cdist(b.double(), b.double()).sum() / (40 * 39)
    assert energy_distance(a, b, chunk=7) == pytest.approx(float(2 * dab - daa - dbb))
    assert energy_distance(a, a + 3.0) > 1.0


def test_mode_coverage_tv_scores_a_collapsed_class_by_its_missing_weight(mixture):
    g = torch.Generator().manual_seed(2)
    labels = torch.arange(6000) % mixture.num_classes
    exact = exact_reference(mixture, labels, seed=3)
    assert mode_coverage_tv(mixture, exact, labels) < 0.02
    # Every sample on its class's major (heaviest) component: TV = the minor weight, 0.2.
    major = torch.stack(
        [torch.nonzero(mixture.classes == c).flatten()[0] for c in range(mixture.num_classes)]
    )
    collapsed = mixture.means[major[labels]].float() + 0.01 * torch.randn(6000, 2, generator=g)
    assert mode_coverage_tv(mixture, collapsed, labels) == pytest.approx(0.2, abs=1e-6)
    scores = evaluate_samples(mixture, collapsed, labels)
    assert scores["class_acc"] == 1.0 and scores["energy"] > 0.01


# ----------------------------------------------------------------------- exact samplers


def _sample(mixture, base, respacing, *, classifier=None, temperature=1.0, n=N, class_cond=False):
    chain = GaussianDiffusion.from_config(respacing=respacing)
    guidance = None
    if classifier is not None:
        from calguide.guidance import (
            GuidanceClassifier,
            build_schedule,
            build_strategy,
            make_guidance,
        )

        wrapped = GuidanceClassifier(classifier, input_mode="noisy", temperature=temperature)
        guidance = make_guidance(
            wrapped, build_strategy("vanilla"), build_schedule("constant", 1.0), 1000
        )
    module = SamplingModule(
        ExactEpsModel(mixture, base.alphas_cumprod),
        chain,
        sample_shape=(mixture.dim,),
        class_cond=class_cond,
        guidance=guidance,
        clip_denoised=False,
        seed=5,
        progress=False,
        as_images=False,
        noise="batch",
    )
    labels = torch.arange(n) % mixture.num_classes
    with torch.no_grad():
        out = module.predict_step({"indices": torch.arange(n), "labels": labels})
    return out["samples"], labels


REPLICATES = 6


@pytest.fixture(scope="module")
def noise_floor(mixture) -> dict[str, float]:
    """The noise floor: 4 × the standard deviation of the energy distance between two exact
    sample sets of size N (6 replicate pairs), pooled (unconditional) and per class. Under the
    null (sampler exact) a sampler-vs-exact distance has that same spread."""
    labels = torch.arange(N) % mixture.num_classes
    pooled, per_class = [], []
    for i in range(REPLICATES):
        g1, g2 = (torch.Generator().manual_seed(100 + 2 * i + j) for j in (0, 1))
        pooled.append(
            energy_distance(mixture.sample(N, generator=g1)[0], mixture.sample(N, generator=g2)[0])
        )
        per_class.append(
            class_energy(
                exact_reference(mixture, labels, seed=200 + 2 * i),
                exact_reference(mixture, labels, seed=201 + 2 * i),
                labels,
            )
        )
    return {
        "pooled": 4 * float(torch.tensor(pooled).std()),
        "class": 4 * float(torch.tensor(per_class).std()),
    }


@pytest.mark.parametrize("respacing", ["", "250"])
def test_exact_denoiser_unguided_ddpm_matches_the_mixture(mixture, base, noise_floor, respacing):
    """10,000 DDPM samples (1000 steps; 250 respaced) are within the noise floor."""
    x, _ = _sample(mixture, base, respacing)
    reference = mixture.sample(N, generator=torch.Generator().manual_seed(7))[0]
    assert abs(energy_distance(x, reference)) <= noise_floor["pooled"]


def test_exact_posterior_scale_one_samples_match_class_conditionals(mixture, base, noise_floor):
    """∇log p_t(x) + ∇log p(y | x_t) = ∇log p_t(x | y): class-y samples match p(x | y)."""
    x, labels = _sample(
        mixture, base, "250", classifier=ExactPosterior(mixture, base.alphas_cumprod)
    )
    assert (
        abs(class_energy(x, exact_reference(mixture, labels, seed=8), labels))
        <= noise_floor["class"]
    )


def test_the_check_has_power_miscalibrated_guidance_and_coarse_chains_fail(
    mixture, base, noise_floor
):
    """The same checks reject the lab's overconfident posterior (τ_c = 0.3) and a 10-step chain."""
    x, labels = _sample(
        mixture,
        base,
        "250",
        classifier=ExactPosterior(mixture, base.alphas_cumprod),
        temperature=0.3,
    )
    reference = exact_reference(mixture, labels, seed=8)
    assert class_energy(x, reference, labels) > noise_floor["class"]
    coarse, _ = _sample(mixture, base, "10")
    pooled_ref = mixture.sample(N, generator=torch.Generator().manual_seed(7))[0]
    assert energy_distance(coarse, pooled_ref) > noise_floor["pooled"]


@pytest.mark.slow
def test_exact_posterior_full_chain(mixture, base, noise_floor):
    x, labels = _sample(mixture, base, "", classifier=ExactPosterior(mixture, base.alphas_cumprod))
    assert (
        abs(class_energy(x, exact_reference(mixture, labels, seed=8), labels))
        <= noise_floor["class"]
    )


def test_class_conditional_exact_eps_alone_samples_p_x_given_y(mixture, base, noise_floor):
    x, labels = _sample(mixture, base, "250", class_cond=True)
    assert (
        abs(class_energy(x, exact_reference(mixture, labels, seed=9), labels))
        <= noise_floor["class"]
    )


# ----------------------------------------------------------------------- plumbing


def test_batch_noise_is_reproducible_and_shaped():
    a = BatchNoise(3, [4, 5, 6], (2,))
    b = BatchNoise(3, [4, 5, 6], (2,))
    first = a.draw()
    assert first.shape == (3, 2)
    torch.testing.assert_close(first, b.draw())
    torch.testing.assert_close(a(0, torch.zeros(3, 2)), b(0, torch.zeros(3, 2)))
    assert not torch.equal(first, a.draw())  # the generator advances once per step
    assert not torch.equal(
        BatchNoise(3, [7, 8, 9], (2,)).draw(), BatchNoise(3, [4, 5, 6], (2,)).draw()
    )


def test_sampling_module_refuses_images_of_the_wrong_rank(mixture, base):
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        SamplingModule(
            ExactEpsModel(mixture, base.alphas_cumprod), base, sample_shape=(2,), class_cond=False
        )
    with pytest.raises(ValueError, match="sampling.noise"):
        SamplingModule(
            ExactEpsModel(mixture, base.alphas_cumprod),
            base,
            sample_shape=(2,),
            class_cond=False,
            as_images=False,
            noise="shared",
        )


def test_noisy_mlp_is_a_noise_aware_classifier():
    clf = build_classifier("noisy_mlp", {"in_dim": 3, "num_classes": 4, "width": 8, "depth": 2})
    assert clf.noise_aware
    assert clf(torch.randn(5, 3), torch.randint(0, 1000, (5,))).shape == (5, 4)


def test_lab_config_errors_are_one_line(lab_cfg):
    cfg = lab_cfg.copy()
    OmegaConf.set_struct(cfg, False)
    cfg.lab.classifiers.bad = {"kind": "oracle"}
    with pytest.raises(ConfigError, match=r"lab.classifiers.bad.kind"):
        check(cfg)
    cfg = lab_cfg.copy()
    OmegaConf.set_struct(cfg, False)
    cfg.lab.classifiers.mlp_smece = {"kind": "mlp", "smece_weight": 1.0}
    with pytest.raises(ConfigError, match=r"\['smece_weight'\]; allowed: .*calibration_weight"):
        check(cfg)
    cfg = lab_cfg.copy()
    cfg.lab.runs = [{"guidance": "kl_typo", "scale": 1.0}]
    with pytest.raises(ConfigError, match=r"lab.runs\[0\].guidance='kl_typo'"):
        check(cfg)
    cfg = lab_cfg.copy()
    cfg.lab.mixture.components[0].std = -1
    with pytest.raises(ConfigError, match=r"lab.mixture.components\[0\].std"):
        check(cfg)


def test_lab_runs_take_the_image_path_defaults(lab_cfg):
    spec = lab_run_guidance(0, {"guidance": "js", "scale": 3.0})
    assert spec.name == "js" and spec.scale == 3.0 and spec.params["eps"] == 0.9


def test_lab_job_end_to_end(compose_config, tmp_path, capsys):
    cfg = compose_config(
        "lab",
        [
            "lab.num_samples=90",
            "lab.calibration_points=300",
            "diffusion.respacing=20",
            "lab.mlp.steps=5",
            "lab.mlp.train_size=300",
            "lab.mlp.batch_size=100",
            "lab.runs=[{guidance: none},{guidance: vanilla, scale: 1.0},"
            "{guidance: js, scale: 3.0}]",
        ],
    )
    record = run_lab(check(cfg))
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith(
        "calguide-lab: ddpm, 20 of 1000 steps (respacing '20'), 20 network evaluations per "
        "sample, x̂₀ unclipped · 3 runs × 4 classifiers (exact, overconfident, mlp_ce, mlp_smece)"
    )
    assert record["run"]["steps"] == 20 and record["run"]["clip_denoised"] is False
    out = tmp_path / "run"
    table = (out / "lab.md").read_text()
    # none once + 2 guided runs × 4 classifiers.
    assert len(record["rows"]) == 1 + 2 * 4
    assert "| exact | vanilla | 1 |" in table and "| overconfident | js | 3 |" in table
    saved = json.loads((out / "lab.json").read_text())
    assert saved["calibration"]["overconfident"]["temperature"] == 0.3
    assert (out / "samples.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "diagnostics_exact.png").is_file()
    exact_vanilla = next(
        r for r in record["rows"] if r["classifier"] == "exact" and r["guidance"] == "vanilla"
    )
    assert exact_vanilla["grad_high"] is not None and exact_vanilla["grad_high"] > 0
    assert record["rows"][0]["guidance"] == "none" and record["rows"][0]["grad_high"] is None


def test_sample_run_uses_the_configured_chain(compose_spec, mixture):
    spec = compose_spec("lab", ["diffusion.respacing=10", "lab.num_samples=30"])
    base, chain = chains(spec)
    assert chain.num_timesteps == 10
    x, _, diag = sample_run(
        spec,
        mixture,
        base,
        chain,
        (ExactPosterior(mixture, base.alphas_cumprod), 1.0),
        lab_run_guidance(0, {"guidance": "vanilla", "scale": 1.0}),
    )
    assert x.shape == (30, 2) and len(diag) == 10


@pytest.mark.parametrize("option", ["default", "dpmpp", "adm250"])
def test_the_lab_refuses_to_clip_the_mixture_with_one_line(compose_config, option):
    """The option's clip_denoised wins (it is what the user chose), and the lab says why it
    cannot run that: the mixture lies outside [-1, 1]."""
    cfg = compose_config("lab", [f"diffusion={option}"])
    assert cfg.diffusion.clip_denoised is True
    with pytest.raises(ConfigError, match=r"^diffusion.clip_denoised=true: the lab's mixture"):
        check(cfg)
    assert check(compose_config("lab", [f"diffusion={option}", "diffusion.clip_denoised=false"]))
