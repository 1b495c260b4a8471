"""kill -9 a guided ``calguide-sample`` run at random moments; every rerun must finish to the
uninterrupted run's ``samples.npz``, byte for byte.

    python experiments/kill_resume.py --out logs/kill_resume            # 20 kills, 256 samples
    python experiments/kill_resume.py --kills 5 --samples 64            # quicker

Random-weight 8×8 networks (made here, seeded) keep it CPU-fast: what is tested is the run
folder, not the pictures. The uninterrupted run gives the reference file and the run's length
T; each trial starts the same command in a fresh folder, kills it (SIGKILL) after a uniform
random delay in [0, T], reruns the same command to completion and compares the bytes. Writes
``kill_resume.json`` and ``kill_resume.md`` (one row per trial: delay, shards on disk at the
kill, whether the merged file existed, identical or not) to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

FLAGS = dict(
    image_size=8,
    in_channels=1,
    num_classes=10,
    class_cond=True,
    learn_sigma=True,
    num_channels=32,
    num_res_blocks=1,
    channel_mult="1,2",
    attention_resolutions="4",
)


def make_networks(folder: Path) -> tuple[Path, Path]:
    import torch

    from calguide.modules.denoiser import DenoiserModule, export_denoiser
    from calguide.nets.classifiers import build_classifier, export_classifier

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    module = DenoiserModule(
        flags=FLAGS,
        diffusion={"steps": 1000, "schedule": "linear", "sigma_small": False},
        optim={"lr": 1e-3, "weight_decay": 0.0, "warmup_steps": 10, "ema_decay": 0.9},
    )
    denoiser = export_denoiser(module, folder / "denoiser.pt")
    classifier = folder / "classifier.pt"
    params = {"in_channels": 1, "num_classes": 10, "width": 32, "image_size": 8}
    export_classifier(build_classifier("small_resnet", params), classifier)
    return denoiser, classifier


def command(denoiser: Path, classifier: Path, out: Path, logs: Path, samples: int) -> list[str]:
    return [
        str(Path(sys.executable).with_name("calguide-sample")),
        "data.image_size=8",
        f"denoiser.checkpoint={denoiser}",
        f"classifier.checkpoint={classifier}",
        "classifier.params.width=32",
        "guidance=js",
        "diffusion.respacing='20'",
        f"sampling.num_samples={samples}",
        "sampling.batch_size=16",
        "sampling.snapshot_count=0",
        "sampling.progress=false",
        "trainer.enable_progress_bar=false",
        "metrics=none",
        f"sampling.out_dir={out}",
        f"paths.log_dir={logs}",
        f"paths.artifacts={logs / 'artifacts'}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("logs/kill_resume"))
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    work = args.out.resolve()
    denoiser, classifier = make_networks(work / "networks")
    logs = work / "logs"

    started = time.perf_counter()
    reference_dir = work / "uninterrupted"
    subprocess.run(
        command(denoiser, classifier, reference_dir, logs, args.samples),
        check=True,
        capture_output=True,
    )
    length = time.perf_counter() - started
    reference = (reference_dir / "samples.npz").read_bytes()
    print(f"uninterrupted run: {length:.1f} s, samples.npz {len(reference)} bytes")

    rng = random.Random(args.seed)
    trials = []
    for trial in range(args.kills):
        out = work / f"trial{trial:02d}"
        delay = rng.uniform(0.0, length)
        process = subprocess.Popen(
            command(denoiser, classifier, out, logs, args.samples),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(delay)
        finished_first = process.poll() is not None
        process.kill()  # SIGKILL: no handler runs
        process.wait()
        shards = len(list((out / "shards").glob("*.npz"))) if out.exists() else 0
        merged = (out / "samples.npz").exists()
        rerun = subprocess.run(
            command(denoiser, classifier, out, logs, args.samples), capture_output=True, text=True
        )
        identical = rerun.returncode == 0 and (out / "samples.npz").read_bytes() == reference
        trials.append(
            {
                "trial": trial,
                "kill_after_s": round(delay, 2),
                "shards_at_kill": shards,
                "merged_at_kill": merged,
                "had_finished": finished_first,
                "rerun_rc": rerun.returncode,
                "identical": identical,
            }
        )
        print(json.dumps(trials[-1]))

    ok = all(t["identical"] for t in trials)
    summary = {
        "samples": args.samples,
        "uninterrupted_s": round(length, 1),
        "kills": len(trials),
        "all_identical": ok,
        "trials": trials,
    }
    (work / "kill_resume.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = [
        f"kill -9 at {len(trials)} random moments of a {args.samples}-sample run "
        f"(uninterrupted: {length:.1f} s); every rerun identical: **{ok}**",
        "",
        "| trial | kill after (s) | shards at kill | merged at kill | rerun rc | identical |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for t in trials:
        lines.append(
            f"| {t['trial']} | {t['kill_after_s']} | {t['shards_at_kill']} | "
            f"{t['merged_at_kill']} | {t['rerun_rc']} | {t['identical']} |"
        )
    (work / "kill_resume.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
