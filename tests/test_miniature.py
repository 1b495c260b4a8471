"""A reduced ``make run`` (tests/conf/experiment/miniature_tiny.yaml) on the bundled models
reproduces committed numbers and verdicts: the same table on every machine, within a stated
tolerance, and the same verdict words.

The tolerance comes from a measurement (docs/make_run.md, "The same verdicts everywhere"):
every bundled weight multiplied by (1 + 1e-6·N(0,1)) (experiments/perturb_weights.py), a pessimistic
stand-in for another CPU's float arithmetic, moved each number by at most its
``measured_spread`` in ``tests/data/miniature_tiny_expected.json``; the test allows three times
that, and never less than the file's per-metric ``floors`` (one sample of 80 for the shares).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from calguide.commands.miniature import main as miniature_main

HERE = Path(__file__).resolve().parent
EXPECTED = HERE / "data" / "miniature_tiny_expected.json"


def reduced_run(tmp_path: Path, *extra: str) -> dict:
    out = tmp_path / "make-run"
    code = miniature_main(
        [
            "--out",
            str(out),
            "--experiment",
            "miniature_tiny",
            f"hydra.searchpath=[file://{HERE / 'conf'}]",
            f"paths.artifacts={tmp_path / 'artifacts'}",
            f"paths.log_dir={tmp_path / 'logs'}",
            *extra,
        ]
    )
    assert code == 0
    numbers: dict[str, float] = {}
    with open(out / "runs.csv") as handle:
        for row in csv.DictReader(handle):
            key = f"{row['denoiser.name']} {row['guidance.name']} seed{row['seed']}"
            for metric in ("fid", "precision", "recall", "class_acc", "kid"):
                if row.get(metric) not in (None, ""):
                    numbers[f"{key} {metric}"] = float(row[metric])
    for name in ("ce", "smece"):
        path = tmp_path / "artifacts" / "digits" / "classifiers" / f"digits_resnet-x0-{name}-s0"
        after = json.loads((path / "calibration.json").read_text())["after"]
        for bucket, values in after.items():
            numbers[f"calibration {name} {bucket} smece"] = float(values["smece"])
    for verdict in json.loads((out / "claims.json").read_text()):
        numbers[f"verdict {verdict['claim']}"] = verdict["verdict"]
    assert (out / "report.md").is_file() and (out / "diagnostics.png").is_file()
    return numbers


def test_reduced_make_run_reproduces_the_committed_numbers(tmp_path, capsys) -> None:
    expected = json.loads(EXPECTED.read_text())
    got = reduced_run(tmp_path)
    screen = capsys.readouterr()
    # A quiet main job: its stage lines, tables, verdicts and paths; Lightning's banners and
    # adverts, the jobs' per-run lines and progress bars are in the log file instead.
    for noise in ("💡", "GPU available", "TPU available", "calguide: metrics", "it/s]"):
        assert noise not in screen.out and noise not in screen.err, noise
    cpu_line = "sampling on the CPU; samples per row ×1 (80); on a CUDA GPU the default is ×10"
    for line in ("[1/4] estimate", "[4/4] table", "**What this run says", "log        :", cpu_line):
        assert line in screen.out, line
    log = (tmp_path / "make-run" / "make-run.log").read_text()
    assert "calguide: metrics" in log
    assert set(got) == set(expected["numbers"])
    for key, want in expected["numbers"].items():
        if key.startswith("verdict "):
            assert got[key] == want, key  # the words must not depend on the machine
            continue
        floor = expected["floors"][key.split()[-1]]
        tolerance = max(3 * expected["measured_spread"][key], floor)
        assert got[key] == pytest.approx(want, abs=tolerance), key


def test_the_gpu_sample_scale_runs_the_same_path_at_reduced_size(tmp_path, capsys) -> None:
    """``--scale-samples`` (×10 by default on a CUDA GPU) on a CPU at ×0.5: every row's samples
    scaled to whole blocks of 20 (80 -> 40), and the screen says so."""
    reduced_run(tmp_path, "--scale-samples", "0.5", "--device", "cpu")
    screen = capsys.readouterr().out
    assert "sampling on the CPU; samples per row ×0.5 (40)" in screen
    with open(tmp_path / "make-run" / "runs.csv") as handle:
        sizes = {row["num_samples"] for row in csv.DictReader(handle)}
    assert sizes == {"40"}
