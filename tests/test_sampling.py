"""Sampling: labels, per-sample noise, batch/resume/device invariance, shards, the CLI job."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import tiny_denoiser_module

from calguide.commands.sample import main as sample_main
from calguide.config import check
from calguide.diffusion import GaussianDiffusion
from calguide.guidance import (
    GuidanceClassifier,
    build_schedule,
    build_strategy,
    make_guidance,
)
from calguide.modules.denoiser import DenoiserModule, export_denoiser
from calguide.modules.sampling import SamplingModule
from calguide.nets.classifiers import build_classifier, export_classifier
from calguide.samples.labels import LabelDataModule, chunk_ranges, sample_labels
from calguide.samples.noise import PerSampleNoise, sample_seed
from calguide.samples.writer import diagnostics_arrays, merge_shards, save_npz


def tiny_denoiser(seed: int = 0) -> DenoiserModule:
    torch.manual_seed(seed)
    module = tiny_denoiser_module()
    # Random but non-zero output convs, so the denoiser is not the zero function.
    with torch.no_grad():
        for p in module.ema.out.parameters():
            p.normal_(0, 0.05)
    return module


def tiny_classifier(seed: int = 0):
    torch.manual_seed(seed)
    return build_classifier(
        "small_resnet", {"in_channels": 1, "image_size": 8, "num_classes": 10, "width": 32}
    ).eval()


def export_tiny_pair(root: Path) -> dict[str, Path]:
    """The tiny denoiser and classifier as calguide exports in ``root`` (what a run loads)."""
    denoiser = export_denoiser(tiny_denoiser(), root / "denoiser.pt")
    classifier = root / "classifier.pt"
    export_classifier(tiny_classifier(), classifier, temperature=1.0)
    return {"denoiser": denoiser, "classifier": classifier}


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> dict[str, Path]:
    return export_tiny_pair(tmp_path_factory.mktemp("sampling_artifacts"))


def module_for(strategy: str, scale: float = 2.0, **kwargs) -> SamplingModule:
    chain = GaussianDiffusion.from_config(steps=1000, learn_sigma=True, respacing="8")
    guidance = make_guidance(
        GuidanceClassifier(tiny_classifier(), input_mode="x0"),
        build_strategy(strategy),
        build_schedule("constant", scale),
        1000,
    )
    return SamplingModule(
        tiny_denoiser().ema,
        chain,
        sample_shape=(1, 8, 8),
        class_cond=True,
        guidance=guidance,
        progress=False,
        **kwargs,
    )


def run_batches(module: SamplingModule, labels: torch.Tensor, batch_size: int) -> np.ndarray:
    images = []
    for start, end in chunk_ranges(len(labels), batch_size):
        batch = {"indices": torch.arange(start, end), "labels": labels[start:end]}
        with torch.inference_mode():
            images.append(module.predict_step(batch)["images"].numpy())
    return np.concatenate(images)


def assert_images_match(a: np.ndarray, b: np.ndarray) -> None:
    """Equal uint8 arrays, up to ±1 level on under 0.1% of pixels (floating-point batch effects)."""
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    assert diff.max() <= 1, diff.max()
    assert (diff > 0).mean() < 1e-3


# --------------------------------------------------------------------------- pure pieces


def test_label_protocols():
    random = sample_labels(1000, 10, "random", seed=3)
    assert torch.equal(random, sample_labels(1000, 10, "random", seed=3))
    assert not torch.equal(random, sample_labels(1000, 10, "random", seed=4))
    assert set(random.tolist()) == set(range(10))
    assert sample_labels(12, 5, "balanced").tolist() == [0, 1, 2, 3, 4] * 2 + [0, 1]
    assert set(sample_labels(7, 5, "fixed", fixed_class=3).tolist()) == {3}
    with pytest.raises(ValueError, match="sampling.labels"):
        sample_labels(3, 3, "weird")
    with pytest.raises(ValueError, match="sampling.fixed_class"):
        sample_labels(3, 3, "fixed", fixed_class=3)


def test_chunks_skip_done_and_split_across_ranks_without_gaps():
    dm = LabelDataModule(10, 3, batch_size=3, done=lambda: {0, 1, 2, 4})
    assert dm.pending_chunks() == [(3, 6), (6, 9), (9, 10)]
    ranks = [dm.pending_chunks(rank, 2) for rank in range(2)]
    assert ranks == [[(3, 6), (9, 10)], [(6, 9)]]
    covered = sorted(i for chunks in ranks for s, e in chunks for i in range(s, e))
    assert covered == list(range(3, 10))


def test_per_sample_noise_does_not_depend_on_the_batch():
    whole = PerSampleNoise(7, range(6), (1, 4, 4))
    first, second = whole.draw(), whole.draw()
    part = PerSampleNoise(7, [4, 5], (1, 4, 4))
    torch.testing.assert_close(part.draw(), first[4:])
    torch.testing.assert_close(part.draw(), second[4:])
    # Every (seed, index) pair gets its own seed: all pairwise different (a chained != would
    # never compare the first value with the third).
    pairs = [(seed, index) for seed in range(3) for index in range(50)]
    seeds = [sample_seed(seed, index) for seed, index in pairs]
    assert len(set(seeds)) == len(pairs)
    assert sample_seed(0, 1) != sample_seed(0, 2) and sample_seed(0, 1) != sample_seed(1, 0)
    assert sample_seed(3, 17) == sample_seed(3, 17)


def test_merge_pools_diagnostics_across_shards_of_the_same_timesteps(tmp_path):
    """Two shards over the same timesteps: n adds up and each mean is the n-weighted mean."""
    for first, n, p_y in ((0, 2, 0.2), (2, 6, 0.6)):
        indices = np.arange(first, first + (2 if first == 0 else 6))
        per_t = {
            t: {"n": n, "grad_norm": 1.0 * t, "p_y": p_y, "entropy": 0.5, "scale": 2.0}
            for t in (999, 500)
        }
        save_npz(
            tmp_path / f"{indices.min():08d}-{indices.max():08d}.npz",
            images=np.zeros((len(indices), 8, 8, 1), np.uint8),
            labels=indices % 3,
            indices=indices,
            **diagnostics_arrays(per_t),
        )
    merged = merge_shards(tmp_path, 8)
    assert merged["labels"].tolist() == [i % 3 for i in range(8)]
    pooled = merged["diagnostics"]
    assert sorted(pooled) == [500, 999]
    for t in (500, 999):
        assert pooled[t]["n"] == 8
        assert pooled[t]["p_y"] == pytest.approx((2 * 0.2 + 6 * 0.6) / 8)
        assert pooled[t]["grad_norm"] == pytest.approx(float(t))


# --------------------------------------------------------------------------- invariances


@pytest.mark.parametrize("strategy", ["none", "vanilla", "js", "rkl", "entropy"])
def test_batch_size_does_not_change_samples(strategy):
    labels = sample_labels(8, 10, "random", seed=0)
    module = module_for(strategy)
    assert_images_match(run_batches(module, labels, 8), run_batches(module, labels, 3))


def test_tilted_depends_on_the_batch_by_design():
    labels = sample_labels(8, 10, "random", seed=0)
    module = module_for("tilted", scale=200.0)
    a, b = run_batches(module, labels, 8), run_batches(module, labels, 2)
    assert np.abs(a.astype(int) - b.astype(int)).max() > 1


def test_guidance_changes_samples_and_records_diagnostics():
    labels = sample_labels(4, 10, "balanced")
    batch = {"indices": torch.arange(4), "labels": labels}
    guided_module, plain_module = module_for("vanilla", scale=50.0), module_for("none")
    with torch.inference_mode():
        guided = guided_module.predict_step(batch)
        plain = plain_module.predict_step(batch)
    assert not np.array_equal(guided["images"].numpy(), plain["images"].numpy())
    chain_t = module_for("none").diffusion.timestep_map.tolist()
    assert sorted(guided["diagnostics"]) == sorted(chain_t)
    assert plain["diagnostics"] == {}


def test_snapshots_of_tracked_samples():
    module = module_for("vanilla", snapshot_timesteps=(999,), snapshot_count=2)
    chain_t = module.diffusion.timestep_map.tolist()
    module.snapshot_timesteps = {chain_t[-1], chain_t[0]}
    with torch.inference_mode():
        out = module.predict_step({"indices": torch.arange(4), "labels": torch.arange(4)})
    assert set(out["snapshots"]) == {chain_t[-1], chain_t[0]}
    assert out["snapshots"][chain_t[-1]]["pred_x0"].shape == (2, 1, 8, 8)
    assert out["snapshot_indices"].tolist() == [0, 1]


def test_merge_reports_gaps(tmp_path):
    save_npz(
        tmp_path / "00000000-00000001.npz",
        images=np.zeros((2, 8, 8, 1), np.uint8),
        labels=np.array([0, 1]),
        indices=np.array([0, 1]),
        diag_t=np.array([], np.int64),
        diag_n=np.array([]),
        **{f"diag_{k}": np.array([]) for k in ("grad_norm", "p_y", "entropy", "scale")},
    )
    assert merge_shards(tmp_path, 2)["images"].shape == (2, 8, 8, 1)
    with pytest.raises(RuntimeError, match="1 of 3 samples missing"):
        merge_shards(tmp_path, 3)


# --------------------------------------------------------------------------- the job


def sample_overrides(artifacts, out_dir: Path, *extra: str) -> list[str]:
    return [
        "data.image_size=8",
        f"denoiser.checkpoint={artifacts['denoiser']}",
        f"classifier.checkpoint={artifacts['classifier']}",
        "classifier.params.width=32",
        "diffusion.respacing='6'",
        "sampling.num_samples=10",
        "sampling.batch_size=4",
        "sampling.progress=false",
        "sampling.snapshot_count=2",
        "sampling.snapshot_timesteps=[999]",
        "trainer.enable_progress_bar=false",
        f"sampling.out_dir={out_dir}",
        "metrics=none",
        *extra,
    ]


def domain_metrics(artifacts, tmp_path: Path) -> list[str]:
    """Overrides for metrics=domain with the tiny classifier as the evaluation network."""
    return [
        "metrics=domain",
        f"metrics.evaluator={artifacts['classifier']}",
        f"metrics.cache_dir={tmp_path / 'reference'}",
    ]


def test_sample_job_writes_adm_npz_and_resumes(compose_config, artifacts, tmp_path):
    out = tmp_path / "run"
    cfg = compose_config(
        "sample",
        sample_overrides(artifacts, out, "guidance=js", *domain_metrics(artifacts, tmp_path)),
    )
    record = sample_main.task(check(cfg))
    with np.load(out / "samples.npz") as npz:
        images, labels = npz["arr_0"], npz["arr_1"]
    assert images.shape == (10, 8, 8, 1) and images.dtype == np.uint8
    assert labels.tolist() == [i % 10 for i in range(10)]
    for name in ("grid.png", "diagnostics.csv", "diagnostics.png", "config.yaml"):
        assert (out / name).is_file(), name
    assert record["num_samples"] == 10
    first_metrics = json.loads((out / "metrics.json").read_text())
    assert set(first_metrics) >= {"fid", "precision", "recall", "class_acc"}
    assert np.isfinite(first_metrics["fid"]) and 0 <= first_metrics["class_acc"] <= 1
    assert list((tmp_path / "reference").glob("*.pt"))  # reference statistics cached

    # Lose some shards (as a kill would) and leave a stray temp file: the rerun redoes exactly
    # the missing chunks and merges to the same arrays.
    shards = sorted((out / "shards").glob("*.npz"))
    assert len(shards) == 3  # three shards over the same timesteps: diagnostics pool across them
    first_bytes = (out / "samples.npz").read_bytes()
    first_diagnostics = (out / "diagnostics.csv").read_text()
    shards[1].unlink()
    (out / "shards" / ".00000004-00000007.npz.123.tmp").write_bytes(b"partial")
    (out / "samples.npz").unlink()
    sample_main.task(check(cfg))
    with np.load(out / "samples.npz") as npz:
        np.testing.assert_array_equal(npz["arr_0"], images)
        np.testing.assert_array_equal(npz["arr_1"], labels)
    assert (out / "samples.npz").read_bytes() == first_bytes
    assert (out / "diagnostics.csv").read_text() == first_diagnostics
    assert len(list((out / "shards").glob("*.npz"))) == 3
    assert not list((out / "shards").glob(".*.tmp"))
    # Metrics after a resume cover all samples, as if uninterrupted.
    resumed_metrics = json.loads((out / "metrics.json").read_text())
    for key in ("fid", "precision", "recall", "class_acc"):
        assert resumed_metrics[key] == pytest.approx(first_metrics[key], rel=1e-4, abs=1e-6)


def test_default_out_dir_is_keyed_by_config(compose_config, artifacts, tmp_path):
    from calguide.jobs.sample import input_identity
    from calguide.jobs.sample import output_dir as output_dir_of

    def output_dir(cfg, batch_dependent):
        spec = check(cfg)
        return output_dir_of(spec, batch_dependent, input_identity(spec))

    base = sample_overrides(artifacts, tmp_path, "sampling.out_dir=null")
    a = output_dir(compose_config("sample", [*base, "guidance.scale=1"]), False)
    b = output_dir(compose_config("sample", [*base, "guidance.scale=2"]), False)
    c = output_dir(
        compose_config("sample", [*base, "guidance.scale=1", "sampling.batch_size=2"]), False
    )
    assert a != b and a == c
    assert "js" not in a.name and "vanilla-s1" in a.name


def test_sample_config_validates_guidance(compose_config, artifacts, tmp_path):
    from calguide.config import ConfigError, check

    cfg = compose_config(
        "sample", [*sample_overrides(artifacts, tmp_path), "+guidance.params.bogus=1"]
    )
    with pytest.raises(ConfigError, match="bogus"):
        check(cfg)


def run_sample_cli(args: list[str], env_extra: dict[str, str] | None = None):
    # The installed console script: Lightning's DDP launcher re-runs the same command per rank.
    script = Path(sys.executable).parent / "calguide-sample"
    env = {**os.environ, "WANDB_MODE": "offline", **(env_extra or {})}
    return subprocess.run(
        [str(script), *args], capture_output=True, text=True, timeout=600, env=env
    )


@pytest.mark.slow
def test_two_process_ddp_equals_one_process(artifacts, tmp_path):
    common = [
        a
        for a in sample_overrides(
            artifacts,
            tmp_path,
            "guidance=vanilla",
            *domain_metrics(artifacts, tmp_path),
        )
        if not a.startswith("sampling.out_dir")
    ] + [f"paths.log_dir={tmp_path}/logs"]
    one = run_sample_cli([*common, f"sampling.out_dir={tmp_path}/one"])
    assert one.returncode == 0, one.stderr[-3000:]
    two = run_sample_cli(
        [
            *common,
            f"sampling.out_dir={tmp_path}/two",
            "trainer=ddp",
            "trainer.devices=2",
            "trainer.accelerator=cpu",
        ]
    )
    assert two.returncode == 0, two.stderr[-3000:]
    with (
        np.load(tmp_path / "one" / "samples.npz") as a,
        np.load(tmp_path / "two" / "samples.npz") as b,
    ):
        assert_images_match(a["arr_0"], b["arr_0"])
        np.testing.assert_array_equal(a["arr_1"], b["arr_1"])
    # The metrics gathered over two ranks equal the single-process ones.
    m1 = json.loads((tmp_path / "one" / "metrics.json").read_text())
    m2 = json.loads((tmp_path / "two" / "metrics.json").read_text())
    for key in ("fid", "precision", "recall", "class_acc"):
        assert m2[key] == pytest.approx(m1[key], rel=1e-4, abs=1e-6)


def test_eval_entry_matches_the_sampling_metrics(compose_config, artifacts, tmp_path):
    from calguide.commands.evaluate import main as eval_main

    out = tmp_path / "run"
    metrics = domain_metrics(artifacts, tmp_path)
    sample_main.task(check(compose_config("sample", sample_overrides(artifacts, out, *metrics))))
    streamed = json.loads((out / "metrics.json").read_text())
    cfg = compose_config(
        "eval",
        [
            "data.image_size=8",
            f"samples={out / 'samples.npz'}",
            f"output_dir={tmp_path / 'e'}",
            *metrics,
        ],
    )
    results = eval_main.task(check(cfg))
    for key in ("fid", "precision", "recall", "class_acc"):
        assert results[key] == pytest.approx(streamed[key], rel=1e-4, abs=1e-6)


# --------------------------------------------------------------------------- fast paths


class CountingDenoiser(torch.nn.Module):
    """Wraps a denoiser; records whether each forward ran with gradients enabled."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net
        self.calls: list[bool] = []

    def forward(self, x, t, y=None):
        self.calls.append(torch.is_grad_enabled())
        return self.net(x, t, y)


def test_x0_guidance_reuses_the_step_forward_without_gradients():
    """x0-mode guidance takes x̂₀ from the step's own denoiser forward: one forward per step,
    under no_grad (no graph through the denoiser)."""
    module = module_for("vanilla")
    counting = CountingDenoiser(module.denoiser)
    module.denoiser = counting
    module._forward = [counting]
    run_batches(module, torch.arange(4) % 10, 4)
    assert len(counting.calls) == module.diffusion.num_timesteps
    assert not any(counting.calls)


def test_through_denoiser_adds_exactly_one_forward_with_gradients():
    """The x̂₀ that through_denoiser guidance differentiates comes from the module's own
    denoiser call (the same path as the step's forward: autocast, channels_last, compile)."""
    chain = GaussianDiffusion.from_config(steps=1000, learn_sigma=True, respacing="8")
    counting = CountingDenoiser(tiny_denoiser().ema.requires_grad_(False))
    labels = torch.arange(4) % 10
    guidance = make_guidance(
        GuidanceClassifier(tiny_classifier(), input_mode="x0", through_denoiser=True),
        build_strategy("vanilla"),
        build_schedule("constant", 2.0),
        1000,
    )
    module = SamplingModule(
        counting, chain, sample_shape=(1, 8, 8), class_cond=True, guidance=guidance, progress=False
    )
    run_batches(module, labels, 4)
    steps = chain.num_timesteps
    assert len(counting.calls) == 2 * steps and sum(counting.calls) == steps
    # x̂₀ at base timesteps from a respaced chain equals the base chain's own x̂₀, exactly.
    base = GaussianDiffusion.from_config(steps=1000, learn_sigma=True)
    x_t, t_model = torch.randn(4, 1, 8, 8), chain.model_timesteps(torch.full((4,), 5))
    out = torch.randn(4, 2, 8, 8)
    eps, _ = base.split_output(out, x_t)
    assert torch.equal(
        chain.x0_at_model_timesteps(out, x_t, t_model),
        base.predict_x0_from_eps(x_t, t_model, eps),
    )


def test_channels_last_gives_the_same_samples():
    labels = torch.arange(6) % 10
    plain = run_batches(module_for("js"), labels, 6)
    fast = run_batches(module_for("js", channels_last=True), labels, 6)
    assert_images_match(plain, fast)


@pytest.mark.slow
def test_compiled_denoiser_gives_the_same_samples():
    """sampling.compile compiles the denoiser and the classifier: the same samples."""
    labels = torch.arange(4) % 10
    plain = run_batches(module_for("vanilla"), labels, 4)
    module = module_for("vanilla", compile=True)
    assert module.guidance.classifier.compiled
    fast = run_batches(module, labels, 4)
    assert_images_match(plain, fast)


@pytest.mark.slow
def test_compiled_classifier_gives_the_same_gradient_in_fp32():
    """The compiled classifier's forward + input-gradient backward equals the plain one's."""
    x0 = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    grads = []
    for compiled in (False, True):
        classifier = GuidanceClassifier(tiny_classifier(), input_mode="x0")
        if compiled:
            classifier.compile_net()
        inp = x0.clone().requires_grad_(True)
        logits = classifier(inp)
        (grad,) = torch.autograd.grad(logits.log_softmax(1)[:, 3].sum(), inp)
        grads.append((logits.detach(), grad))
    torch.testing.assert_close(grads[1][0], grads[0][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grads[1][1], grads[0][1], rtol=1e-5, atol=1e-6)


def test_precision_switch_reaches_the_classifier_and_refuses_typos():
    module = module_for("vanilla", precision="bf16")
    labels = torch.arange(2)
    assert module.bound_guidance(labels).amp_dtype == torch.bfloat16
    assert module_for("vanilla").bound_guidance(labels).amp_dtype is None
    with pytest.raises(ValueError, match="sampling.precision"):
        module_for("vanilla", precision="bf17")
    with pytest.raises(ValueError, match="channels_last"):
        SamplingModule(
            tiny_denoiser().ema,
            GaussianDiffusion.from_config(respacing="8"),
            sample_shape=(2,),
            class_cond=False,
            as_images=False,
            channels_last=True,
        )


@pytest.mark.parametrize("diffusion", ["dpmpp", "dpmpp_sde"])
@pytest.mark.parametrize("guidance", ["vanilla", "tilted", "js"])
def test_the_few_step_solvers_carry_every_strategy_and_elucds_schedule(
    compose_config, artifacts, tmp_path, diffusion, guidance
):
    """diffusion=dpmpp(_sde) through the sampling job, with EluCD's score and additive
    schedule (which DDIM refuses) and a batch-level strategy: finite samples on the grid."""
    out = tmp_path / f"{diffusion}-{guidance}"
    cfg = compose_config(
        "sample",
        sample_overrides(
            artifacts, out, "score=elucd", f"guidance={guidance}", f"diffusion={diffusion}",
            "diffusion.respacing='5'",
        ),
    )  # fmt: skip
    assert cfg.diffusion.sampler.startswith("dpmpp_2m")
    record = sample_main.task(check(cfg))
    with np.load(out / "samples.npz") as npz:
        images = npz["arr_0"]
    assert images.shape == (10, 8, 8, 1) and images.dtype == np.uint8
    assert 0 < images.mean() < 255 and record["num_samples"] == 10
    assert (out / "grid.png").is_file() and (out / "diagnostics.csv").is_file()
