"""Table recipes: every experiment and every sweep point composes, validates and names its files;
ImageNet tables stop at once listing what is missing; W&B conventions."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from calguide.assembly.machine import run_group, run_tags
from calguide.assembly.requirements import check_required_files, required_files
from calguide.commands import preflight
from calguide.config import check, conf_dir

EXPERIMENTS = sorted(p.stem for p in (conf_dir() / "experiment").glob("*.yaml"))
IMAGENET = [e for e in EXPERIMENTS if e.startswith("imagenet128")]
DIGITS = [e for e in EXPERIMENTS if e.startswith("digits")]


def test_every_table_has_a_recipe():
    for table in ("baselines", "calibration", "strategies", "scale_sweep"):
        assert f"digits_{table}" in EXPERIMENTS
    # The paper's three tables (PAPER.md §7) and the sweeps the paper does not publish.
    for table in ("calibration", "sampling", "main", "alpha_eps_sweep", "scale_sweep"):
        assert f"imagenet128_{table}" in EXPERIMENTS


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_sweep_point_composes_and_validates(compose_config, experiment):
    base = compose_config("sample", [f"experiment={experiment}"])
    assert base.experiment.table == experiment
    assert base.experiment.rows, "experiment.rows tells the aggregation what a row is"
    jobs = preflight.sweep_combinations(base)
    assert len(jobs) >= 2
    if experiment in DIGITS:  # every value of every swept key at least once (not the product)
        params = base.hydra.sweeper.params
        values = {k: str(v).split(",") for k, v in params.items()}
        width = max(len(v) for v in values.values())
        jobs = [[f"{k}={v[i % len(v)]}" for k, v in values.items()] for i in range(width)]
    for job in jobs:
        cfg = compose_config("sample", [f"experiment={experiment}", *job])
        check(cfg)
        job_keys = [k for k in cfg if k != "hydra"]
        OmegaConf.to_container(OmegaConf.masked_copy(cfg, job_keys), resolve=True)
        for key in str(cfg.experiment.rows).split(","):
            assert OmegaConf.select(cfg, key) is not None or key == "experiment.row", key


@pytest.mark.parametrize("experiment", IMAGENET)
def test_imagenet_tables_follow_adm_protocol(compose_config, experiment):
    cfg = compose_config("sample", [f"experiment={experiment}"])
    assert cfg.denoiser.name == "adm128" and cfg.diffusion.respacing == "250"
    assert cfg.diffusion.sampler == "ddpm"
    # 50K for the main table, 10K for the paper's ablations and our sweeps (PAPER.md §6).
    want = 50_000 if experiment == "imagenet128_main" else 10_000
    assert cfg.sampling.num_samples == want and cfg.sampling.labels == "random"
    assert cfg.metrics.kind == "inception"
    assert cfg.metrics.reference.endswith("VIRTUAL_imagenet128_labeled.npz")


def test_imagenet_rows_use_published_weights_and_elucds_convention(compose_config):
    adm_g = compose_config("sample", ["experiment=imagenet128_main", "row=adm_g128"])
    assert adm_g.classifier.checkpoint.endswith("128x128_classifier.pt")
    assert adm_g.guidance.name == "vanilla" and adm_g.guidance.scale == 0.5
    assert dict(adm_g.guidance.params) == {"tau1": 1.0, "delta": 1.0}
    assert adm_g.guidance.schedule == "constant"
    assert adm_g.denoiser.checkpoint.endswith("128x128_diffusion.pt")
    for row, weights in (
        ("elucd_resnet101", "resnet101-cd907fc2.pth"),
        ("js_resnet101", "resnet101-cd907fc2.pth"),
        ("elucd_resnet50", "resnet50-11ad3fa6.pth"),
    ):
        cfg = compose_config("sample", ["experiment=imagenet128_main", f"row={row}"])
        assert cfg.classifier.checkpoint.endswith(weights), row  # IMAGENET1K_V2
        assert cfg.classifier.normalize == "none" and cfg.classifier.input_size is None
        assert cfg.classifier.softplus_beta == 3.0
        assert (cfg.guidance.params.tau1, cfg.guidance.params.delta) == (1.0, 0.5)
        assert cfg.guidance.schedule == "elucd" and cfg.guidance.schedule_params.gamma == 0.3
        assert cfg.guidance.scale == 1.0
    sampling = compose_config("sample", ["experiment=imagenet128_sampling", "guidance=tilted"])
    assert sampling.guidance.params.t == -0.2 and sampling.guidance.params.delta == 0.5
    assert sampling.classifier.name == "resnet50" and sampling.guidance.schedule == "elucd"
    # ImageNet-normalised input stays an option.
    norm = compose_config(
        "sample",
        ["classifier=resnet101", "classifier.normalize=imagenet", "classifier.input_size=224"],
    )
    check(norm)


def test_digits_tables_cover_both_denoisers_and_three_seeds(compose_config):
    for experiment in ("digits_baselines", "digits_calibration", "digits_strategies"):
        params = compose_config("sample", [f"experiment={experiment}"]).hydra.sweeper.params
        assert params["denoiser"] == "unet_tiny,unet_tiny_uncond"
        assert params["seed"] == "0,1,2"


@pytest.mark.parametrize("experiment", IMAGENET)
def test_imagenet_preflight_stops_listing_every_missing_file(experiment, tmp_path, capsys):
    empty = tmp_path / "nothing"
    code = preflight.main(
        [
            experiment,
            f"paths.adm_dir={empty}",
            f"paths.torchvision_dir={empty}",
            f"paths.artifacts={tmp_path}",
            f"paths.log_dir={tmp_path}",
        ]
    )
    out, err = capsys.readouterr()
    assert code == 2 and "missing" in err
    assert f"command: calguide-sample --multirun experiment={experiment}" in out
    assert "[MISSING]" in out and "128x128_diffusion.pt" in out


def test_imagenet_main_preflight_names_all_official_files(tmp_path, capsys):
    preflight.main(
        ["imagenet128_main", f"paths.adm_dir={tmp_path}", f"paths.torchvision_dir={tmp_path}"]
    )
    out = capsys.readouterr().out
    for name in (
        "128x128_diffusion.pt",
        "128x128_classifier.pt",
        "resnet50-11ad3fa6.pth",
        "resnet101-cd907fc2.pth",
        "VIRTUAL_imagenet128_labeled.npz",
    ):
        assert name in out


def test_preflight_passes_when_files_exist(compose_config, tmp_path, capsys):
    art = tmp_path / "artifacts"
    cfg = compose_config("sample", [f"paths.artifacts={art}", "experiment=digits_scale_sweep"])
    for _, path in required_files(check(cfg)):
        if path.is_file():  # a bundled model: it exists already (and must not be overwritten)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    assert preflight.main(["digits_scale_sweep", f"paths.artifacts={art}"]) == 0
    assert "[MISSING]" not in capsys.readouterr().out


def test_sampling_job_fails_first_with_the_whole_list(compose_config, tmp_path):
    none = tmp_path / "none"
    cfg = compose_config(
        "sample",
        [
            f"paths.artifacts={none}",
            "guidance=js",
            "classifier=digits_smece",  # made by make calibrate: not bundled
            f"denoiser.checkpoint={none}/digits/unet_tiny/denoiser.pt",
            f"metrics.evaluator={none}/digits/classifiers/digits_eval-clean-ce-s1.pt",
        ],
    )
    with pytest.raises(FileNotFoundError) as err:
        check_required_files(check(cfg))
    message = str(err.value)
    assert message.startswith("3 required file(s) missing")
    assert "denoiser.pt" in message and "digits_resnet-x0-smece-s0.pt" in message
    assert "digits_eval-clean-ce-s1.pt" in message


def test_unguided_runs_need_no_classifier(compose_config):
    cfg = compose_config("sample", ["guidance=none", "metrics=none"])
    assert [what for what, _ in required_files(check(cfg))] == [
        "denoiser 'unet_tiny' (denoiser.checkpoint)"
    ]


def test_wandb_group_and_tags(compose_config):
    spec = check(compose_config("sample", ["experiment=digits_strategies", "guidance=js"]))
    assert run_group(spec) == "digits_strategies"
    tags = run_tags(spec)
    for tag in (
        "task:sample",
        "dataset:digits",
        "denoiser:unet_tiny",
        "strategy:js",
        "divergence:js",
        "classifier:digits_smece",
        "table:digits_strategies",
    ):
        assert tag in tags
    plain = check(compose_config("sample", ["guidance=none"]))
    assert run_group(plain) == "sample"
    assert not any(t.startswith(("classifier:", "divergence:")) for t in run_tags(plain))


def test_wandb_logger_gets_conventions_offline(compose_config, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    from calguide.assembly import loggers

    cfg = compose_config("sample", ["logger=wandb", "experiment=digits_strategies", "guidance=js"])
    (logger,) = loggers(check(cfg), {"sampler": "ddpm"})
    run = logger.experiment
    assert run.group == "digits_strategies"
    assert "divergence:js" in run.tags
    assert run.config["guidance"]["name"] == "js"
    assert run.config["run"] == {"sampler": "ddpm"}  # the run's record of what it ran
    run.finish()


def test_miniature_scales_are_the_tuning_runs_choice(compose_config):
    """conf/experiment/digits_miniature.yaml copies the scales that
    experiments/tune_miniature_scale.py chose (docs/tuning/miniature_scales.json)."""
    import json
    from pathlib import Path

    tuned = json.loads(
        (Path(__file__).parents[1] / "docs/tuning/miniature_scales.json").read_text()
    )
    cfg = compose_config("sample", ["experiment=digits_miniature"])
    recorded = cfg.experiment.tuning
    assert recorded.seed == tuned["seed"] and recorded.seed not in {0, *range(1, 3)}
    chosen = {den: entry["scale"] for den, entry in tuned["denoisers"].items()}
    assert dict(recorded.scales) == chosen
    for sweep in cfg.experiment.sweeps:
        scale = chosen[sweep["denoiser"]]
        want = 1.0 if scale is None else scale  # no scale helps: EluCD's recipe
        assert float(sweep["guidance.scale"]) == want, sweep
        assert int(sweep["seed"]) != tuned["seed"]  # verdicts never use the tuning seed


@pytest.mark.parametrize("experiment", [e for e in EXPERIMENTS if e != "digits_miniature"])
def test_claims_name_rows_of_their_table(compose_config, experiment):
    """Every claim of a recipe selects rows that its sweep makes."""
    base = compose_config("sample", [f"experiment={experiment}"])
    claims = base.experiment.get("claims") or []
    if not claims:
        return
    rows = []
    for job in preflight.sweep_combinations(base):
        cfg = compose_config("sample", [f"experiment={experiment}", *job])
        rows.append(OmegaConf.to_container(cfg, resolve=False))
    for claim in claims:
        for side in ("better", "than"):
            selector = claim[side].items()
            hits = [
                r
                for r in rows
                if all(str(OmegaConf.select(OmegaConf.create(r), k)) == str(v) for k, v in selector)
            ]
            assert len(hits) == 1, (claim["id"], side, len(hits))
