"""GuidanceClassifier (modes, preprocessing, temperature) and the ClassifierGuidance hook."""

from __future__ import annotations

import pytest
import torch
from tiny import TINY_ADM_CLASSIFIER_FLAGS
from torch import nn

from calguide.diffusion.gaussian import GaussianDiffusion
from calguide.diffusion.samplers import sample_loop
from calguide.diffusion.steps import ddpm_step
from calguide.guidance import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ClassifierGuidance,
    GuidanceClassifier,
    build_schedule,
    build_strategy,
    divergence_names,
    make_guidance,
)
from calguide.guidance.hook import BoundGuidance
from calguide.guidance.strategies import entropy
from calguide.nets import create_adm_classifier, small_resnet, swap_relu_for_softplus

K, T = 3, 1000


class NoisyLinear(nn.Module):
    """A noise-aware toy classifier: linear logits sharpened as t falls."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.linear = linear

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.linear(x) * (2.0 - t.to(x.dtype) / T)[:, None]


def _linear() -> nn.Linear:
    torch.manual_seed(0)
    lin = nn.Linear(2, K).double()
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 0.0], [-0.5, 0.9], [-0.5, -0.9]]))
        lin.bias.zero_()
    return lin


@pytest.fixture
def points() -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    return 0.5 * torch.randn(8, 2, generator=gen, dtype=torch.float64)


@pytest.fixture
def labels() -> torch.Tensor:
    return torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])


def _hook(mode: str = "x0", strategy: str = "vanilla", schedule=None, **kwargs):
    net = _linear() if mode == "x0" else NoisyLinear(_linear())
    clf = GuidanceClassifier(net, input_mode=mode, **kwargs.pop("clf", {}))
    schedule = schedule or build_schedule("constant", 1.0)
    return ClassifierGuidance(clf, build_strategy(strategy, **kwargs), schedule, T)


def _p_y(hook: BoundGuidance, x: torch.Tensor, t: torch.Tensor, labels) -> torch.Tensor:
    with torch.no_grad():
        logits = hook.guidance.classifier(x, t)
    return torch.softmax(logits, -1)[torch.arange(len(labels)), labels]


STEP_STRATEGIES = [
    ("vanilla", {}),
    ("vanilla", {"tau1": 1.0, "delta": 0.5}),
    ("entropy", {"lambda0": 0.1, "adapt": "confidence"}),
    ("tilted", {"t": -0.2}),
    *[(name, {"alpha": 0.5}) for name in sorted(divergence_names())],
]


@pytest.mark.parametrize("mode", ["x0", "noisy"])
@pytest.mark.parametrize(("strategy", "params"), STEP_STRATEGIES, ids=lambda v: str(v))
def test_guided_step_raises_p_y(mode: str, strategy: str, params: dict, points, labels) -> None:
    hook = _hook(mode, strategy, **params).bind(labels)
    t = torch.full((len(labels),), 400)
    with torch.no_grad():
        g = hook(points, points, t)
    before = _p_y(hook, points, t, labels)
    after = _p_y(hook, points + 0.05 * g, t, labels)
    assert bool((after > before).all()), (before, after)


@pytest.mark.parametrize(
    ("mode", "through", "space"),
    [("x0", False, "x0"), ("noisy", False, "x_t"), ("x0", True, "x_t")],
)
def test_space_shape_and_name(mode: str, through: bool, space: str, points, labels) -> None:
    clf = GuidanceClassifier(
        _linear() if mode == "x0" else NoisyLinear(_linear()),
        input_mode=mode,
        through_denoiser=through,
    )
    hook = ClassifierGuidance(clf, build_strategy("js"), build_schedule("constant", 1.0), T).bind(
        labels, denoise_fn=(lambda x, t: 0.9 * x) if through else None
    )
    out = hook(points, points, torch.full((8,), 10))
    assert hook.space == space and hook.name == "js"
    assert out.shape == points.shape and out.dtype == points.dtype


def test_x0_gradient_is_taken_at_pred_x0_not_x_t(points, labels) -> None:
    hook = _hook("x0").bind(labels)
    t = torch.full((8,), 10)
    torch.testing.assert_close(hook(points + 5.0, points, t), hook(points, points, t))
    p = torch.softmax(_linear()(points), -1).detach()
    want = (torch.nn.functional.one_hot(labels, K).double() - p) @ _linear().weight.detach()
    torch.testing.assert_close(hook(points, points, t), want)


def test_scale_schedule_is_applied_per_sample(points, labels) -> None:
    t = torch.linspace(0, T - 1, 8).long()
    unit = _hook("noisy").bind(labels)
    ramp = _hook("noisy", schedule=build_schedule("linear", 3.0, start=1.0, end=0.2)).bind(labels)
    s = 3.0 * (0.2 + 0.8 * t.double() / (T - 1))
    torch.testing.assert_close(ramp(points, points, t), s[:, None] * unit(points, points, t))


def test_through_denoiser_is_jacobian_transpose_times_g(points, labels) -> None:
    """For x̂₀ = A x_t + b, g_{x_t} = Aᵀ g_{x̂₀} evaluated at x̂₀."""
    a = torch.tensor([[0.7, 0.2], [-0.3, 1.1]], dtype=torch.float64)
    b = torch.tensor([0.1, -0.2], dtype=torch.float64)

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return x @ a.T + b

    clf = GuidanceClassifier(_linear(), input_mode="x0", through_denoiser=True)
    hook = ClassifierGuidance(clf, build_strategy("rkl"), build_schedule("constant", 1.0), T).bind(
        labels, denoise_fn=denoise
    )
    t = torch.full((8,), 300)
    x0 = denoise(points, t)
    g_x0 = _hook("x0", "rkl").bind(labels)(points, x0, t)
    stale_pred_x0 = torch.zeros_like(points)  # ignored: x̂₀ is recomputed from x_t
    torch.testing.assert_close(hook(points, stale_pred_x0, t), g_x0 @ a)


def test_diagnostics(points, labels) -> None:
    hook = _hook("x0", schedule=build_schedule("constant", 2.0)).bind(labels)
    t = torch.full((8,), 123)
    out = hook(points, points, t)
    hook.labels = labels[:4]  # the same batch's bound guidance, called on a smaller slice
    hook(points[:4], points[:4], torch.full((4,), 122))
    assert len(hook.diagnostics) == 2
    rec = hook.diagnostics[0]
    logits = _linear()(points).detach()
    p_y = torch.softmax(logits, -1)[torch.arange(8), labels]
    assert rec["t"] == 123 and rec["n"] == 8
    assert rec["scale"] == pytest.approx(2.0)
    assert rec["grad_norm"] == pytest.approx(float((out / 2.0).norm(dim=1).mean()))
    assert rec["p_y"] == pytest.approx(float(p_y.mean()))
    assert rec["entropy"] == pytest.approx(float(entropy(logits).mean()))
    per_t = hook.diagnostics.per_timestep()
    assert list(per_t) == [122, 123] and per_t[123]["p_y"] == pytest.approx(rec["p_y"])
    hook.diagnostics.clear()
    assert len(hook.diagnostics) == 0


def test_diagnostics_pool_batches_by_size(points, labels) -> None:
    hook = _hook("x0").bind(labels)
    t = torch.full((8,), 5)
    hook(points, points, t)
    hook.labels = labels[:2]
    hook(points[:2], points[:2], t[:2])
    recs = list(hook.diagnostics)
    pooled = hook.diagnostics.per_timestep()[5]
    assert pooled["n"] == 10
    want = (8 * recs[0]["p_y"] + 2 * recs[1]["p_y"]) / 10
    assert pooled["p_y"] == pytest.approx(want)


def test_works_under_no_grad_and_inference_mode(points, labels) -> None:
    hook = _hook("noisy", "js")
    t = torch.full((8,), 50)
    want = hook.bind(labels)(points, points, t)
    with torch.inference_mode():
        x, y, tt = points.clone(), labels.clone(), t.clone()
        got = hook.bind(y)(x, x, tt)
    torch.testing.assert_close(got, want)


def test_label_errors(points, labels) -> None:
    hook = _hook("x0")
    with pytest.raises(TypeError, match="bind"):  # labels reach guidance through bind() only
        hook(points, points, torch.zeros(8, dtype=torch.long))
    with pytest.raises(ValueError, match="3 labels bound for a batch of 8"):
        hook.bind(labels[:3])(points, points, torch.zeros(8, dtype=torch.long))


def test_none_strategy_gives_no_hook() -> None:
    none = build_strategy("none")
    assert make_guidance(None, none, build_schedule("constant", 1.0), T) is None
    clf = GuidanceClassifier(_linear())
    with pytest.raises(ValueError, match="make_guidance"):
        ClassifierGuidance(clf, none, build_schedule("constant", 1.0), T)
    hook = make_guidance(clf, build_strategy("tv"), build_schedule("constant", 1.0), T)
    assert isinstance(hook, ClassifierGuidance)


# ---- the classifier wrapper ----------------------------------------------------------------


def test_temperature_scales_logits(points) -> None:
    clf = GuidanceClassifier(_linear(), temperature=2.5)
    torch.testing.assert_close(clf(points), _linear()(points).detach() / 2.5)


def test_classifier_is_frozen_and_stays_in_eval() -> None:
    net = nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, K))
    clf = GuidanceClassifier(net)
    assert not any(p.requires_grad for p in clf.parameters())
    parent = nn.ModuleDict({"clf": clf}).train()
    assert parent.training and not net.training
    before = net[1].running_mean.clone()
    clf(torch.randn(16, 2))
    torch.testing.assert_close(net[1].running_mean, before)


def test_softplus_swap_when_a_classifier_is_built_or_loaded(tmp_path) -> None:
    """classifier.softplus_beta is applied in one place: building or loading the network."""
    from calguide.nets.classifiers import build_classifier, export_classifier, load_classifier

    params = {"in_channels": 1, "num_classes": K, "width": 8, "image_size": 16}
    built = build_classifier("small_resnet", params, softplus_beta=5.0)
    softplus = [m for m in built.modules() if isinstance(m, nn.Softplus)]
    assert softplus and all(m.beta == 5.0 for m in softplus)
    assert not any(isinstance(m, nn.ReLU) for m in built.modules())
    export_classifier(build_classifier("small_resnet", params), tmp_path / "c.pt")
    loaded, _ = load_classifier(tmp_path / "c.pt", softplus_beta=5.0)
    assert not any(isinstance(m, nn.ReLU) for m in loaded.modules())
    plain, _ = load_classifier(tmp_path / "c.pt")
    assert any(isinstance(m, nn.ReLU) for m in plain.modules())


def test_imagenet_preprocessing_and_resize() -> None:
    seen: dict[str, torch.Tensor] = {}

    class Probe(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen["x"] = x
            return x.mean(dim=(2, 3))

    clf = GuidanceClassifier(Probe(), normalization="imagenet", input_size=8)
    x0 = torch.full((2, 3, 4, 4), -1.0)
    x0[:, :, :2] = 1.0
    clf(x0)
    x = seen["x"]
    assert x.shape == (2, 3, 8, 8)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(x[:, :, :1, :1], ((1.0 - mean) / std).expand(2, 3, 1, 1))
    torch.testing.assert_close(x[:, :, -1:, -1:], ((0.0 - mean) / std).expand(2, 3, 1, 1))
    unit = GuidanceClassifier(Probe(), normalization="unit")
    unit(x0)
    assert float(seen["x"].min()) == 0.0 and float(seen["x"].max()) == 1.0
    custom = GuidanceClassifier(Probe(), normalization="custom", mean=[0.5] * 3, std=[0.5] * 3)
    custom(x0)
    torch.testing.assert_close(seen["x"], x0)


def test_preprocessing_gradient_flows_to_x0(labels) -> None:
    """Resize + normalisation stay inside the graph: g has x̂₀'s (smaller) shape."""
    net = nn.Sequential(nn.Conv2d(3, K, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    clf = GuidanceClassifier(net, normalization="imagenet", input_size=(12, 12))
    hook = ClassifierGuidance(clf, build_strategy("js"), build_schedule("constant", 1.0), T)
    x = torch.rand(3, 3, 6, 6) * 2 - 1
    g = hook.bind(labels[:3])(x, x, torch.full((3,), 7))
    assert g.shape == x.shape and bool(torch.isfinite(g).all()) and g.abs().sum() > 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"input_mode": "latent"}, "input_mode"),
        ({"normalization": "zscore"}, "normalization"),
        ({"temperature": 0.0}, "temperature"),
        ({"input_mode": "noisy", "normalization": "imagenet"}, "input_mode=noisy"),
        ({"input_mode": "noisy", "through_denoiser": True}, "through_denoiser"),
        ({"normalization": "custom"}, "mean and std"),
        ({"mean": [0.5], "std": [0.5]}, "mean and std"),
        ({"input_size": (1, 2, 3)}, "input_size"),
    ],
)
def test_classifier_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        GuidanceClassifier(_linear(), **kwargs)


def test_through_denoiser_needs_denoise_fn(labels) -> None:
    clf = GuidanceClassifier(_linear(), through_denoiser=True)
    hook = ClassifierGuidance(clf, build_strategy("vanilla"), build_schedule("constant", 1.0), T)
    assert hook.needs_denoiser
    with pytest.raises(ValueError, match="denoise_fn"):
        hook.bind(labels)


# ---- with the sampler ---------------------------------------------------------------------


def _image_classifier() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, K))


def test_hook_drives_the_ddpm_sampler() -> None:
    diffusion = GaussianDiffusion.from_config(steps=T, respacing="10")
    clf = GuidanceClassifier(_image_classifier())
    hook = make_guidance(clf, build_strategy("js"), build_schedule("sin", 2.0), T)
    labels = torch.tensor([0, 1, 2, 1])
    hook = hook.bind(labels)
    x_T = torch.randn(4, 1, 4, 4, generator=torch.Generator().manual_seed(0))

    def model_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)

    with torch.inference_mode():
        out = sample_loop(diffusion, model_fn, x_T, guidance=hook)
    assert out.shape == x_T.shape and bool(torch.isfinite(out).all())
    ts = [rec["t"] for rec in hook.diagnostics]
    assert len(ts) == 10 and ts == sorted(ts, reverse=True) and ts[0] > 900
    with pytest.raises(ValueError, match="ddim"):
        sample_loop(diffusion, model_fn, x_T, guidance=hook, sampler="ddim")

    # One step: the guided mean is the unguided one shifted by Σ_t·s(t)·g.
    t = torch.full((4,), 5)
    noise = torch.zeros_like(x_T)
    guided = ddpm_step(diffusion, model_fn(x_T, t), x_T, t, noise, guidance=hook)
    plain = ddpm_step(diffusion, model_fn(x_T, t), x_T, t, noise)
    variance = diffusion.p_mean_variance(model_fn(x_T, t), x_T, t).variance
    assert guided.guidance is not None and guided.guidance.abs().sum() > 0
    torch.testing.assert_close(guided.mean, plain.mean + variance * guided.guidance)


# ---- real networks of the project ---------------------------------------------------------


def test_adm_noisy_classifier_matches_adm_cond_fn() -> None:
    """Vanilla noisy-mode guidance is ADM's cond_fn: s·∇_x log softmax(f(x, t))[y]."""
    torch.manual_seed(0)
    net = create_adm_classifier(**TINY_ADM_CLASSIFIER_FLAGS)
    clf = GuidanceClassifier(net, input_mode="noisy")
    hook = make_guidance(clf, build_strategy("vanilla"), build_schedule("constant", 3.0), T)
    x = torch.randn(2, 1, 8, 8)
    t = torch.tensor([500, 500])
    y = torch.tensor([4, 7])
    got = hook.bind(y)(x, x, t)
    x_in = x.clone().requires_grad_(True)
    selected = torch.log_softmax(net(x_in, t), -1)[torch.arange(2), y]
    want = 3.0 * torch.autograd.grad(selected.sum(), x_in)[0]
    torch.testing.assert_close(got, want)
    assert hook.space == "x_t"


def test_resnet_with_softplus_in_x0_mode() -> None:
    torch.manual_seed(0)
    net = small_resnet(num_classes=10, in_channels=1, width=8, image_size=16)
    clf = GuidanceClassifier(swap_relu_for_softplus(net, 10.0), input_mode="x0", temperature=2.0)
    assert not any(isinstance(m, nn.ReLU) for m in net.modules())
    hook = make_guidance(clf, build_strategy("rkl"), build_schedule("constant", 1.0), T)
    x0 = torch.rand(3, 1, 16, 16) * 2 - 1
    g = hook.bind(torch.tensor([1, 2, 3]))(torch.randn_like(x0), x0, torch.full((3,), 900))
    assert g.shape == x0.shape and bool(torch.isfinite(g).all()) and g.abs().sum() > 0


class Wrapped(nn.Module):
    """Stands in for calguide.nets.classifiers.Classifier (duck-typed convention)."""

    def __init__(self, noise_aware: bool) -> None:
        super().__init__()
        self.noise_aware = noise_aware
        self.linear = _linear()

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def forward(self, x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        return self.linear(x)


@pytest.mark.parametrize(
    ("noise_aware", "kwargs", "match"),
    [
        (False, {"input_mode": "noisy"}, "needs a noise-aware classifier"),
        (True, {"input_mode": "x0"}, "needs an off-the-shelf classifier"),
        (False, {"normalization": "imagenet"}, "normalises and resizes its inputs itself"),
        (False, {"input_size": 32}, "normalises and resizes its inputs itself"),
    ],
)
def test_wrapped_classifier_convention(noise_aware: bool, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        GuidanceClassifier(Wrapped(noise_aware), **kwargs)
    GuidanceClassifier(Wrapped(noise_aware), input_mode="noisy" if noise_aware else "x0")
