"""calguide-miniature: the paper in miniature on the bundled digits models (``make run``).

    calguide-miniature                               # everything, into logs/make-run
    calguide-miniature --out /tmp/mini paths.artifacts=/tmp/art

No denoiser or classifier is trained from scratch: the bundled off-the-shelf models are used as
they are, the way ADM's checkpoints are on a cluster. Four stages, each with a progress line:

1. **estimate**: one guided sampling step and one fine-tuning step are timed on this machine
   and the whole run's length is predicted from them;
2. **calibration**: the bundled classifier is fine-tuned on x̂₀ twice with the same steps and
   data, with CE and with CE + the paper's Smooth ECE (``calguide-calibrate calibration=ce`` /
   ``smece``): the before/after calibration table;
3. **guidance**: the ``digits_miniature`` experiment's sweep (every strategy of the paper and
   unguided, on the unconditional and the class-conditional denoiser, several seeds; and the
   EluCD-style baseline with the CE- and the Smooth-ECE-fine-tuned classifier);
4. **table**: mean ± std over seeds, the verdict on each claim of the paper (stated rule, see
   :mod:`calguide.tools.claims`), the diagnostics figure and the sample grids.

Every stage reuses finished work (calibrated classifiers, finished sample folders), so a rerun
only prints the table again.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, open_dict

EXPERIMENT = "digits_miniature"  # the default of --experiment


def compose_job(config_name: str, overrides: Sequence[str], output_dir: Path) -> DictConfig:
    """The config Hydra would give a job of ``config_name`` (its run folder ``output_dir``)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    from calguide.config import conf_dir

    GlobalHydra.instance().clear()
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        cfg = compose(config_name, overrides=list(overrides), return_hydra_config=True)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
    return cfg


class Progress:
    def __init__(self, stages: int) -> None:
        self.stages, self.done, self.started = stages, 0, time.perf_counter()

    def stage(self, text: str) -> float:
        self.done += 1
        print(f"[{self.done}/{self.stages}] {text}", flush=True)
        return time.perf_counter()

    def finished(self, since: float, text: str = "") -> None:
        took = time.perf_counter() - since
        total = time.perf_counter() - self.started
        print(f"      done in {took:.0f} s{text} (run so far {total:.0f} s)", flush=True)


def experiment_settings(common: Sequence[str], experiment: str) -> dict:
    """The ``experiment`` section of ``conf/experiment/<experiment>.yaml``."""
    from omegaconf import OmegaConf

    cfg = compose_job("sample", [f"experiment={experiment}", *common], Path.cwd())
    return OmegaConf.to_container(cfg.experiment, resolve=False)  # type: ignore[return-value]


def sweep_jobs(common: Sequence[str], experiment: str) -> list[list[str]]:
    """Every sampling job's overrides: the experiment's sweeps (``experiment.sweeps``), each a
    cartesian product like Hydra's basic sweeper's."""
    import itertools

    jobs = []
    for sweep in experiment_settings(common, experiment)["sweeps"]:
        keys = list(sweep)
        values = [str(sweep[k]).split(",") for k in keys]
        for combo in itertools.product(*values):
            jobs.append([f"{k}={v.strip()}" for k, v in zip(keys, combo)])
    return jobs


def estimate(common: Sequence[str], jobs: list[list[str]], experiment: str) -> dict[str, float]:
    """Seconds per guided sampling step and per fine-tuning step on this machine, and the run's
    predicted length (the sampling steps of every job, two fine-tunes, a fixed overhead)."""
    import torch

    from calguide import assembly
    from calguide.config import checked

    cfg = compose_job("sample", [f"experiment={experiment}", *common, "guidance=js"], Path.cwd())
    run = checked(cfg)
    setup = assembly.sampling_setup(cfg)
    module = setup.module
    batch = int(run.sampling.batch_size)
    labels = torch.arange(batch) % setup.num_classes
    x = torch.randn(batch, *module.sample_shape)
    t = torch.full((batch,), module.diffusion.num_timesteps // 2)
    call, guidance = module.model_fn(labels), module.bound_guidance(labels)
    sampler = module.sampler

    def one_step() -> None:
        sampler.step(
            module.diffusion, call, x, t, torch.randn_like(x), None,
            guidance=guidance, clip_denoised=True,
        )  # fmt: skip

    one_step()  # warm-up
    started = time.perf_counter()
    for _ in range(3):
        one_step()
    step_s = (time.perf_counter() - started) / 3
    steps = module.diffusion.num_timesteps
    batches = len(jobs) * -(-int(run.sampling.num_samples) // batch)  # jobs share the size
    calib = compose_job(
        "calibrate", [*experiment_settings(common, experiment)["calibrate"], *common], Path.cwd()
    )
    fine_tune_steps = int(calib.trainer.max_steps)
    # A fine-tuning step: one denoiser forward (x̂₀) and a classifier forward/backward.
    fine_step_s = step_s * int(calib.data.batch_size) / batch
    sampling_s = batches * steps * step_s
    calibration_s = 2 * fine_tune_steps * fine_step_s * 1.5  # + its before/after evaluation
    overhead_s = 8.0 + 0.3 * len(jobs)
    return {
        "guided_step_s": step_s,
        "batch": batch,
        "sampling_s": sampling_s,
        "calibration_s": calibration_s,
        "total_s": sampling_s + calibration_s + overhead_s,
    }


def calibrate(common: Sequence[str], out: Path, experiment: str) -> dict[str, Path]:
    """The CE and Smooth-ECE fine-tunes (reused when their exports exist)."""
    from calguide.calibration.job import run_calibration

    settings = experiment_settings(common, experiment)
    made = {}
    for name in ("ce", "smece"):
        cfg = compose_job(
            "calibrate", [*settings["calibrate"], *common, f"calibration={name}"],
            out / "calibrate" / name,
        )  # fmt: skip
        output = Path(cfg.output)
        if not output.is_file():
            run_calibration(cfg)
        else:
            print(f"      {output} exists: reused")
        made[name] = output.with_suffix("") / "calibration.json"
    return made


def sample(common: Sequence[str], jobs: list[list[str]], out: Path, experiment: str) -> None:
    from calguide.sampling.job import run_sampling

    for i, job in enumerate(jobs):
        cfg = compose_job(
            "sample", [f"experiment={experiment}", *common, *job, "sampling.progress=false",
                       "trainer.enable_progress_bar=false"],
            out / "sample" / str(i),
        )  # fmt: skip
        started = time.perf_counter()
        record = run_sampling(cfg)
        fid = (record.get("metrics") or {}).get("fid")
        print(
            f"      {i + 1:2d}/{len(jobs)} {' '.join(job)}: FID {fid:.2f} "
            f"({time.perf_counter() - started:.1f} s)",
            flush=True,
        )


def report(out: Path, calibration: dict[str, Path]) -> str:
    """The calibration table, then the sampling table with the claims' verdicts."""
    from calguide.calibration.report import calibration_table
    from calguide.io import atomic_write_text
    from calguide.sampling.diagnostics import plot_diagnostics, read_diagnostics_csv
    from calguide.tools import aggregate

    parts = []
    for name, path in calibration.items():
        record = json.loads(path.read_text())
        parts.append(
            calibration_table(
                record["after"], record["before"],
                title=f"calibration: bundled digits ResNet fine-tuned on x̂₀ with {name}",
            )
        )  # fmt: skip
    code = aggregate.main(
        [str(out / "sample"), "--out", str(out), "--title", "make run: the paper in miniature"]
    )
    if code != 0:
        raise SystemExit(code)
    curves = {}
    for job in sorted((out / "sample").iterdir(), key=lambda p: int(p.name)):
        record = json.loads((job / "sampling.json").read_text())
        csv_path = record.get("diagnostics_csv")
        if csv_path and Path(csv_path).is_file():
            label = f"{record['config']['denoiser']['name']} {record['guidance']}"
            curves.setdefault(label, read_diagnostics_csv(csv_path))
    if curves:
        plot_diagnostics(curves, out / "diagnostics.png", title="digits: guidance diagnostics")
    text = "\n\n".join(parts) + "\n\n" + (out / "table.md").read_text()
    atomic_write_text(text, out / "report.md")
    return text


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="calguide-miniature", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("logs/make-run"))
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every job")
    parser.add_argument(
        "--experiment", default=EXPERIMENT, help="the conf/experiment/ option (sweeps, claims)"
    )
    args = parser.parse_args(argv)
    experiment = args.experiment
    out = args.out.resolve()
    common = list(args.overrides)
    progress = Progress(4)

    since = progress.stage("estimate: timing one guided step on this machine")
    jobs = sweep_jobs(common, experiment)
    guess = estimate(common, jobs, experiment)
    print(
        f"      one guided step at batch {guess['batch']}: {guess['guided_step_s'] * 1e3:.0f} ms;"
        f" expected: {guess['total_s'] / 60:.1f} min in all ({len(jobs)} sampling runs "
        f"{guess['sampling_s']:.0f} s, calibration {guess['calibration_s']:.0f} s)",
        flush=True,
    )
    progress.finished(since)

    since = progress.stage(
        "calibration: fine-tune the bundled classifier with CE and CE + Smooth ECE"
    )
    calibration = calibrate(common, out, experiment)
    progress.finished(since)

    since = progress.stage(f"guidance: {len(jobs)} sampling runs (finished ones are reused)")
    sample(common, jobs, out, experiment)
    progress.finished(since)

    since = progress.stage("table: mean ± std over seeds, verdicts on the paper's claims")
    text = report(out, calibration)
    progress.finished(since)
    print()
    print(text)
    print(f"report   : {out / 'report.md'}")
    print(f"diagnostics: {out / 'diagnostics.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
