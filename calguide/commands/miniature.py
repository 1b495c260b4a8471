"""calguide-miniature: the paper in miniature on the bundled digits models (``make run``).

    calguide-miniature                               # everything, into logs/make-run
    calguide-miniature --out /tmp/mini paths.artifacts=/tmp/art

No denoiser or classifier is trained from scratch: the bundled off-the-shelf models are used as
they are, the way ADM's checkpoints are on a cluster. Four stages, each with a progress line:

1. **estimate**: one guided sampling step and one fine-tuning step are timed on this machine
   and the whole run's length is predicted from them;
2. **calibration**: the bundled classifier is fine-tuned on x̂₀ with the same steps and data,
   with CE and with CE + the paper's Smooth ECE (``calguide-calibrate calibration=ce`` /
   ``smece``), once per fine-tuning seed (``experiment.calibrate_seeds``): the before/after
   calibration table, and the independent trainings the calibration claims are judged over;
3. **guidance**: the ``digits_miniature`` experiment's sweeps (every strategy of the paper and
   unguided on the class-conditional denoiser, EluCD and unguided on the unconditional one, at
   the scales tuned on seeds no verdict uses; and EluCD with each fine-tuned classifier);
4. **table**: per row the metrics with intervals, the verdict on each claim of the paper (a
   rule with a stated error rate, see :mod:`calguide.verdicts`), the diagnostics figure
   and the sample grids.

Every stage reuses finished work (calibrated classifiers, finished sample folders), so a rerun
only prints the table again.

On a CUDA GPU the run samples there (exact fp32) and scales every row's samples by
``--scale-samples`` (``auto``: ×10 on a GPU, so 4,800 per row and intervals about 3× narrower;
×1 on a CPU); the screen says which. Rows stay whole blocks of the verdicts' block size.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from calguide.config import RunSpec

EXPERIMENT = "digits_miniature"  # the default of --experiment
# The estimate times one guided step: measured runs took 0.9–1.3 × its prediction
# (docs/measured.md), so it is printed as that range.
ESTIMATE_RANGE = (0.9, 1.3)
GPU_SAMPLE_SCALE = 10  # --scale-samples auto on a CUDA GPU: 480 -> 4,800 samples per row


def sample_scale(choice: str, cuda: bool) -> float:
    """The factor on every row's samples: ``auto`` is ×10 on a CUDA GPU and ×1 on a CPU."""
    if choice == "auto":
        return float(GPU_SAMPLE_SCALE if cuda else 1)
    try:
        factor = float(choice)
    except ValueError:
        factor = -1.0
    if not factor > 0:
        raise SystemExit(f"calguide-miniature: --scale-samples {choice!r}: 'auto' or a number > 0")
    return factor


def scaled_jobs(
    common: Sequence[str], jobs: list[list[str]], experiment: str, factor: float
) -> list[list[str]]:
    """Each job with ``sampling.num_samples`` × factor, rounded to whole blocks of the
    verdicts' block size (at least one block)."""
    if factor == 1.0:
        return jobs
    settings = experiment_settings(common, experiment)
    block = int((settings.get("verdicts") or {}).get("block_size") or 20)
    out = []
    for job, n in zip(jobs, row_sizes(common, jobs, experiment), strict=True):
        scaled = max(block, round(n * factor / block) * block)
        out.append([o for o in job if not o.startswith("sampling.num_samples=")]
                   + [f"sampling.num_samples={scaled}"])  # fmt: skip
    return out


def row_sizes(common: Sequence[str], jobs: list[list[str]], experiment: str) -> list[int]:
    """Each job's samples: its own ``sampling.num_samples`` or the experiment's."""
    default_n = job_spec("sample", [f"experiment={experiment}", *common], Path.cwd())
    default_n = default_n.sampling.num_samples
    return [int(dict(o.split("=", 1) for o in job).get("sampling.num_samples", default_n))
            for job in jobs]  # fmt: skip


def device_words(cuda: bool) -> str:
    import torch

    return f"{torch.cuda.get_device_name(0)} (CUDA, fp32)" if cuda else "the CPU"


def job_spec(config_name: str, overrides: Sequence[str], output_dir: Path) -> RunSpec:
    """The checked spec of a job of ``config_name`` whose run folder is ``output_dir``."""
    from calguide.config import compose_spec, release

    try:
        return compose_spec(config_name, overrides, output_dir=output_dir)
    finally:
        release()


# Lightning's and PyTorch's notes that say nothing about this run: into the log file, not onto
# the screen (every other warning stays visible).
ROUTINE_WARNINGS = (
    "module(s) in eval mode",
    "isinstance(treespec, LeafSpec)",
    "Couldn't infer the batch indices",
    "does not have many workers",
    "sampler has shuffling enabled",
    "`self.log()` but the `self.trainer` reference",
    "You defined a `validation_step` but have no `val_dataloader`",
)


@contextlib.contextmanager
def quiet(log: Path) -> Iterator[None]:
    """The jobs' own output (Lightning's banners and adverts, calguide's per-run lines,
    progress bars, routine warnings) goes to ``log``; the stage lines stay on the screen."""
    import logging
    import warnings

    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", buffering=1) as handle:
        handler = logging.StreamHandler(handle)
        names = ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning")
        saved = {}
        for name in names:
            logger = logging.getLogger(name)
            saved[name] = (logger.handlers[:], logger.propagate)
            logger.handlers = [handler]
            logger.propagate = False
        shown = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            text = warnings.formatwarning(message, category, filename, lineno, line)
            routine = any(key in str(message) for key in ROUTINE_WARNINGS)
            (handle if routine else sys.__stderr__).write(text)

        warnings.showwarning = show
        try:
            with contextlib.redirect_stdout(handle), contextlib.redirect_stderr(handle):
                yield
        finally:
            warnings.showwarning = shown
            for name, (handlers, propagate) in saved.items():
                logger = logging.getLogger(name)
                logger.handlers, logger.propagate = handlers, propagate


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
    return dict(job_spec("sample", [f"experiment={experiment}", *common], Path.cwd()).experiment)


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


def estimate(
    common: Sequence[str], jobs: list[list[str]], experiment: str, cuda: bool = False
) -> dict[str, float]:
    """Seconds per guided sampling step and per fine-tuning step on this machine (on its GPU
    when ``cuda``), and the run's predicted length (the sampling steps of every job, two
    fine-tunes, a fixed overhead)."""
    import torch

    from calguide import assembly

    spec = job_spec("sample", [f"experiment={experiment}", *common, "guidance=js"], Path.cwd())
    setup = assembly.sampling_setup(spec)
    device = torch.device("cuda" if cuda else "cpu")
    module = setup.module.to(device)
    batch = spec.sampling.batch_size
    labels = (torch.arange(batch) % setup.num_classes).to(device)
    x = torch.randn(batch, *module.sample_shape, device=device)
    t = torch.full((batch,), module.diffusion.num_timesteps // 2, device=device)
    call, guidance = module.model_fn(labels), module.bound_guidance(labels)
    sampler = module.sampler

    def one_step() -> None:
        sampler.step(
            module.diffusion, call, x, t, torch.randn_like(x), None,
            guidance=guidance, clip_denoised=True,
        )  # fmt: skip
        if cuda:
            torch.cuda.synchronize()

    one_step()  # warm-up
    started = time.perf_counter()
    for _ in range(3):
        one_step()
    step_s = (time.perf_counter() - started) / 3
    steps = module.diffusion.num_timesteps
    default_n = spec.sampling.num_samples
    sizes = [
        int(dict(o.split("=", 1) for o in job).get("sampling.num_samples", default_n))
        for job in jobs
    ]
    batches = sum(-(-n // batch) for n in sizes)
    settings = experiment_settings(common, experiment)
    calib = job_spec("calibrate", [*settings["calibrate"], *common], Path.cwd())
    fine_tune_steps = int(calib.trainer["max_steps"])
    fine_tunes = 2 * len(settings.get("calibrate_seeds") or [0])
    # A fine-tuning step: one denoiser forward (x̂₀) and a classifier forward/backward.
    fine_step_s = step_s * int(calib.data.batch_size) / batch
    sampling_s = batches * steps * step_s
    calibration_s = fine_tunes * fine_tune_steps * fine_step_s * 1.5  # + its evaluation
    overhead_s = 8.0 + 0.6 * len(jobs)
    return {
        "guided_step_s": step_s,
        "sample_s": steps * step_s / batch,  # one guided sample, the whole chain
        "batch": batch,
        "sampling_s": sampling_s,
        "calibration_s": calibration_s,
        "total_s": sampling_s + calibration_s + overhead_s,
    }


def calibrate(common: Sequence[str], out: Path, experiment: str) -> dict[str, Path]:
    """The CE and Smooth-ECE fine-tunes, one per fine-tuning seed (reused when their exports
    exist): {"<loss> seed <k>": its calibration.json}."""
    from calguide.jobs.calibrate import run_calibration

    settings = experiment_settings(common, experiment)
    made = {}
    for seed in settings.get("calibrate_seeds") or [0]:
        for name in ("ce", "smece"):
            spec = job_spec(
                "calibrate",
                [*settings["calibrate"], *common, f"calibration={name}", f"seed={seed}",
                 "trainer.enable_progress_bar=false"],
                out / "calibrate" / f"{name}-s{seed}",
            )  # fmt: skip
            output = Path(spec.output)
            started = time.perf_counter()
            if not output.is_file():
                with quiet(out / "make-run.log"):
                    run_calibration(spec)
                took = f"{time.perf_counter() - started:.0f} s"
            else:
                took = "reused"
            print(f"      {name} fine-tune, seed {seed}: {output.name} ({took})", flush=True)
            made[f"{name} seed {seed}"] = output.with_suffix("") / "calibration.json"
    return made


def sample(common: Sequence[str], jobs: list[list[str]], out: Path, experiment: str) -> None:
    from calguide.jobs.sample import run_sampling

    for i, job in enumerate(jobs):
        spec = job_spec(
            "sample", [f"experiment={experiment}", *common, *job, "sampling.progress=false",
                       "trainer.enable_progress_bar=false"],
            out / "sample" / str(i),
        )  # fmt: skip
        started = time.perf_counter()
        with quiet(out / "make-run.log"):
            record = run_sampling(spec)
        fid = (record.get("metrics") or {}).get("fid")
        print(
            f"      {i + 1:2d}/{len(jobs)} {' '.join(job)}: FID {fid:.2f} "
            f"({time.perf_counter() - started:.1f} s)",
            flush=True,
        )


def calibration_summary(calibration: dict[str, Path]) -> str:
    """One table for every fine-tune: held-out smECE per noise bucket, before (the bundled
    classifier) and after each fine-tune."""
    records = {name: json.loads(path.read_text()) for name, path in calibration.items()}
    first = next(iter(records.values()))
    buckets = list(first["after"])
    lines = [
        "**calibration: the bundled digits ResNet fine-tuned on x̂₀ (held-out smECE per "
        "noise bucket; accuracy in brackets)**",
        "",
        "| classifier | " + " | ".join(buckets) + " |",
        "| :-- | " + " | ".join("--:" for _ in buckets) + " |",
    ]

    def cells(results: dict) -> str:
        return " | ".join(f"{results[b]['smece']:.3f} ({results[b]['acc']:.3f})" for b in buckets)

    lines.append(f"| bundled (before) | {cells(first['before'])} |")
    for name, record in records.items():
        lines.append(f"| {name.replace('smece', 'Smooth ECE').replace('ce ', 'CE ')} | "
                     f"{cells(record['after'])} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def report(
    out: Path,
    calibration: dict[str, Path],
    jobs: int,
    sample_s: float | None = None,
    claims_file: Path | None = None,
) -> str:
    """The calibration table, then the sampling table with the claims' verdicts, from this
    run's ``jobs`` sampling folders (``out/sample/0..jobs−1``; a folder left by an earlier
    configuration with more jobs is not read)."""
    from calguide.commands import aggregate
    from calguide.io import atomic_write_text
    from calguide.samples.diagnostics import plot_diagnostics, read_diagnostics_csv

    parts = [calibration_summary(calibration)] if calibration else []
    extra = ["--sample-cost", f"{sample_s:.6g}"] if sample_s else []
    if claims_file is not None:
        extra += ["--claims", str(claims_file)]
    folders = [str(out / "sample" / str(i)) for i in range(jobs)]
    with quiet(out / "make-run.log"):
        code = aggregate.main(
            [*folders, "--out", str(out), "--title", "make run: the paper in miniature", *extra]
        )
    if code != 0:
        raise SystemExit(code)
    curves = {}
    for i in range(jobs):
        record = json.loads((out / "sample" / str(i) / "sampling.json").read_text())
        csv_path = record.get("diagnostics_csv")
        if csv_path and Path(csv_path).is_file():
            run = record["run"]
            label = f"{run['denoiser']['name']} {run['guidance']['name']}"
            curves.setdefault(label, read_diagnostics_csv(csv_path))
    if curves:
        plot_diagnostics(curves, out / "diagnostics.png", title="digits: guidance diagnostics")
    text = "\n\n".join(parts) + "\n\n" + (out / "table.md").read_text()
    atomic_write_text(text, out / "report.md")
    return text


def tuning_note(settings: dict) -> str:
    """Where the guidance scales come from, and which denoiser no scale helps."""
    tuning = settings.get("tuning") or {}
    scales = tuning.get("scales") or {}
    if not scales:
        return ""
    lines = [
        f"**Guidance scales** (chosen on tuning seed {tuning.get('seed')}, which no verdict "
        "uses; rule and table: docs/tuning/miniature_scales.md):"
    ]
    for denoiser, scale in scales.items():
        if scale is None:
            lines.append(
                f"- {denoiser}: no scale of EluCD's recipe lowers FID against unguided "
                "sampling, so the paper's strategy claims are not judged on it (they would "
                "compare strategies in a regime where guidance only hurts); only its recipe "
                "scale 1 against unguided sampling is"
            )
        else:
            lines.append(f"- {denoiser}: scale {scale:g}")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="calguide-miniature", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("logs/make-run"))
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every job")
    parser.add_argument(
        "--experiment", default=EXPERIMENT, help="the conf/experiment/ option (sweeps, claims)"
    )
    parser.add_argument(
        "--scale-samples", default="auto",
        help="factor on every row's samples: auto (×10 on a CUDA GPU, ×1 on a CPU) or a number",
    )  # fmt: skip
    parser.add_argument(
        "--device", choices=("auto", "cpu"), default="auto",
        help="auto: sample on a CUDA GPU when there is one (exact fp32); cpu: never",
    )  # fmt: skip
    args = parser.parse_args(argv)
    import torch

    from calguide.io import atomic_write_text

    experiment = args.experiment
    out = args.out.resolve()
    common = list(args.overrides)
    cuda = args.device == "auto" and torch.cuda.is_available()
    if cuda and not any(o.startswith("trainer") for o in common):
        common = ["trainer=gpu", "trainer.precision=32-true", *common]
    factor = sample_scale(args.scale_samples, cuda)
    progress = Progress(4)

    log = out / "make-run.log"
    since = progress.stage("estimate: timing one guided step on this machine")
    jobs = scaled_jobs(common, sweep_jobs(common, experiment), experiment, factor)
    sizes = sorted(set(row_sizes(common, jobs, experiment)), reverse=True)
    print(
        f"      sampling on {device_words(cuda)}; samples per row ×{factor:g} "
        f"({', '.join(f'{n:,}' for n in sizes)})"
        + ("" if cuda else f"; on a CUDA GPU the default is ×{GPU_SAMPLE_SCALE}"),
        flush=True,
    )
    with quiet(log):
        guess = estimate(common, jobs, experiment, cuda)
    low, high = ESTIMATE_RANGE
    print(
        f"      one guided step at batch {guess['batch']}: {guess['guided_step_s'] * 1e3:.0f} ms;"
        f" expected: {low * guess['total_s'] / 60:.1f}–{high * guess['total_s'] / 60:.1f} min "
        f"({len(jobs)} sampling runs ~{guess['sampling_s']:.0f} s, fine-tunes "
        f"~{guess['calibration_s']:.0f} s); the jobs' own output goes to {log}",
        flush=True,
    )
    progress.finished(since)

    since = progress.stage(
        "calibration: fine-tune the bundled classifier with CE and CE + Smooth ECE, per seed"
    )
    calibration = calibrate(common, out, experiment)
    progress.finished(since)

    since = progress.stage(f"guidance: {len(jobs)} sampling runs (finished ones are reused)")
    sample(common, jobs, out, experiment)
    progress.finished(since)

    since = progress.stage("table: intervals per row, verdicts on the paper's claims")
    text = report(out, calibration, len(jobs), sample_s=guess["sample_s"])
    note = tuning_note(experiment_settings(common, experiment))
    if note:
        text += "\n" + note
        atomic_write_text((out / "report.md").read_text() + "\n" + note, out / "report.md")
    progress.finished(since)
    print()
    print(text)
    print(f"report     : {out / 'report.md'}")
    print(f"table      : {out / 'table.md'} (and table.csv, runs.csv, claims.json)")
    print(f"diagnostics: {out / 'diagnostics.png'}")
    print(f"grids      : {out / 'sample'}/<run>/sampling.json names each run's grid.png")
    print(f"log        : {log}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
