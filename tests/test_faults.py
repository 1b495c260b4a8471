"""Fault injection: every bad input costs one line, and no crash, kill or full disk loses or
corrupts a run. Each case asserts the exact message or the byte-identical final file.

In-process cases run the console scripts' ``main()`` (the same error boundary as the installed
scripts); the cases that need a real process (kill -9, SIGTERM, two processes at once) are
marked ``slow``.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from test_sampling import sample_overrides, tiny_classifier, tiny_denoiser

from calguide.commands.evaluate import main as eval_main
from calguide.commands.sample import main as sample_main
from calguide.config import check
from calguide.errors import RunStateError
from calguide.io import atomic_write_report, folder_lock
from calguide.modules.denoiser import export_denoiser
from calguide.nets.classifiers import export_classifier


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fault_files")
    denoiser = export_denoiser(tiny_denoiser(), root / "denoiser.pt")
    classifier = root / "classifier.pt"
    export_classifier(tiny_classifier(), classifier, temperature=1.0)
    other = root / "other_classifier.pt"
    export_classifier(tiny_classifier(seed=1), other, temperature=1.0)
    return {"denoiser": denoiser, "classifier": classifier, "other": other, "root": root}


def run_cli(main, args: list[str], capsys) -> tuple[int, str]:
    """Exit status and stderr of a console script's ``main()`` run in this process."""
    argv = sys.argv
    sys.argv = ["calguide-test", *args]
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = int(exc.code or 0)
    finally:
        sys.argv = argv
    return code, capsys.readouterr().err


def sample_args(files, tmp_path: Path, out: Path, *extra: str) -> list[str]:
    return [
        *sample_overrides(files, out, *extra),
        f"paths.log_dir={tmp_path / 'logs'}",
        f"paths.artifacts={tmp_path / 'artifacts'}",
    ]


def one_error_line(code: int, err: str) -> str:
    """The single ``calguide: error:`` line of a refused command (and nothing else)."""
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("calguide: error: "), err
    assert "Traceback" not in err and "HYDRA_FULL_ERROR" not in err
    return lines[0]


# ------------------------------------------------------------------- bad files and values


def test_a_text_file_as_denoiser_is_one_line(files, tmp_path, capsys):
    code, err = run_cli(
        sample_main,
        sample_args(files, tmp_path, tmp_path / "o", "denoiser.checkpoint=/etc/passwd"),
        capsys,
    )
    line = one_error_line(code, err)
    assert line.startswith(
        "calguide: error: denoiser 'unet_tiny': /etc/passwd is not a readable PyTorch weights file"
    )
    assert line.endswith("expected a torch.save file of tensors (calguide export, ADM or "
                         "torchvision weights)")  # fmt: skip


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickle_that_runs_code_is_refused_and_runs_nothing(files, tmp_path, capsys):
    marker, evil = tmp_path / "code_ran", tmp_path / "evil.pt"
    torch.save({"format": "calguide-unet/1", "payload": _RunsCode(marker)}, evil)
    code, err = run_cli(
        sample_main, sample_args(files, tmp_path, tmp_path / "o", f"denoiser.checkpoint={evil}"),
        capsys,
    )  # fmt: skip
    line = one_error_line(code, err)
    assert line == (
        f"calguide: error: denoiser 'unet_tiny': {evil} is not a readable PyTorch weights file "
        "(it holds Python objects besides tensors; refused, no code was run); expected a "
        "torch.save file of tensors (calguide export, ADM or torchvision weights)"
    )
    assert not marker.exists()


def test_a_fixed_class_the_denoiser_does_not_have(files, tmp_path, capsys):
    args = sample_args(
        files, tmp_path, tmp_path / "o", "sampling.labels=fixed", "sampling.fixed_class=42"
    )
    line = one_error_line(*run_cli(sample_main, args, capsys))
    assert line == (
        "calguide: error: sampling.fixed_class=42: must be in [0, 10) (the denoiser's classes)"
    )
    assert not (tmp_path / "o").exists()  # refused before any folder was made


def test_a_truncated_classifier_export_is_one_line(files, tmp_path, capsys):
    broken = tmp_path / "broken.pt"
    broken.write_bytes(files["classifier"].read_bytes()[:2000])
    args = sample_args(files, tmp_path, tmp_path / "o", f"classifier.checkpoint={broken}")
    line = one_error_line(*run_cli(sample_main, args, capsys))
    assert f"guidance classifier 'digits_resnet': {broken} is not a readable PyTorch" in line


# ----------------------------------------------------------------------- calguide-eval files


def eval_args(files, tmp_path: Path, samples: Path) -> list[str]:
    return [
        "data.image_size=8",
        f"samples={samples}",
        f"output_dir={tmp_path / 'eval'}",
        f"metrics.evaluator={files['classifier']}",
        f"metrics.cache_dir={tmp_path / 'reference'}",
        f"paths.log_dir={tmp_path / 'logs'}",
    ]


def _npz(path: Path, images: np.ndarray, labels: np.ndarray | None = None) -> Path:
    arrays = {"arr_0": images} if labels is None else {"arr_0": images, "arr_1": labels}
    np.savez(path, **arrays)
    return path


def _garbage(path: Path) -> Path:
    path.write_bytes(os.urandom(300))
    return path


GREY = np.random.default_rng(0).integers(0, 256, (12, 8, 8, 1), dtype=np.uint8)
LABELS = np.arange(12) % 10


@pytest.mark.parametrize(
    ("name", "make", "expected"),
    [
        (
            "garbage",
            lambda p: _garbage(p),
            "is not a valid .npz (not a zip archive: garbage or truncated); expected ADM's "
            "layout: arr_0 "
            "N×H×W×C uint8 with C in {1, 3}, arr_1 N labels in [0, K)",
        ),
        (
            "no_channel_axis",
            lambda p: _npz(p, GREY[..., 0], LABELS),
            "arr_0 is uint8 of shape (12, 8, 8); expected N×H×W×C uint8 with C in {1, 3}",
        ),
        (
            "labels_out_of_range",
            lambda p: _npz(p, GREY, np.array([0, 1, 99, -3] * 3)),
            "arr_1 holds labels [-3, 99] outside [0, 10) (data.num_classes)",
        ),
        (
            "wrong_size",
            lambda p: _npz(p, np.zeros((12, 16, 16, 1), np.uint8), LABELS),
            "arr_0 holds 16×16 images; the reference statistics are of 8×8 images "
            "(metrics.reference, data.image_size)",
        ),
        (
            "rgb_for_a_grey_network",
            lambda p: _npz(p, np.repeat(GREY, 3, axis=-1), LABELS),
            "arr_0 has 3 channels; the evaluation network takes 1 (metrics.evaluator / "
            "data.channels)",
        ),
    ],
)
def test_bad_sample_files_for_eval(files, tmp_path, capsys, name, make, expected):
    samples = make(tmp_path / f"{name}.npz")
    line = one_error_line(*run_cli(eval_main, eval_args(files, tmp_path, samples), capsys))
    assert line == f"calguide: error: samples: {samples} {expected}"
    assert not (tmp_path / "eval" / "metrics.json").exists()


def test_a_truncated_sample_file_is_not_a_valid_npz(files, tmp_path, capsys):
    good = _npz(tmp_path / "good.npz", GREY, LABELS)
    cut = tmp_path / "cut.npz"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    line = one_error_line(*run_cli(eval_main, eval_args(files, tmp_path, cut), capsys))
    assert line.startswith(
        f"calguide: error: samples: {cut} is not a valid .npz (not a zip archive: garbage or "
        "truncated)"
    )


def test_a_corrupt_reference_cache_is_recomputed(files, tmp_path, capsys):
    samples = _npz(tmp_path / "s.npz", GREY, LABELS)
    code, _ = run_cli(eval_main, eval_args(files, tmp_path, samples), capsys)
    assert code == 0
    first = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    (cache,) = (tmp_path / "reference").glob("*.pt")
    cache.write_bytes(cache.read_bytes()[:100])
    with pytest.warns(UserWarning, match="ignoring unreadable reference cache"):
        code, _ = run_cli(eval_main, eval_args(files, tmp_path, samples), capsys)
    assert code == 0
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text()) == first


# ------------------------------------------------------------------------ run identity


def _run(compose_config, files, out: Path | None, *extra: str) -> dict:
    overrides = sample_overrides(files, out or Path("unused"), *extra)
    if out is None:
        overrides = [o for o in overrides if not o.startswith("sampling.out_dir=")]
    return sample_main.task(check(compose_config("sample", overrides)))


def test_a_replaced_classifier_starts_a_new_run_and_a_moved_folder_does_not(
    compose_config, files, tmp_path
):
    local = tmp_path / "a"
    local.mkdir()
    for key in ("denoiser", "classifier"):
        (local / files[key].name).write_bytes(files[key].read_bytes())
    mine = {"denoiser": local / "denoiser.pt", "classifier": local / "classifier.pt"}
    first = Path(_run(compose_config, mine, None, "guidance=js")["out_dir"])

    moved = tmp_path / "moved"
    local.rename(moved)
    mine = {"denoiser": moved / "denoiser.pt", "classifier": moved / "classifier.pt"}
    assert Path(_run(compose_config, mine, None, "guidance=js")["out_dir"]) == first

    # The classifier replaced in place (what a retraining does): a new run, never a resume.
    (moved / "classifier.pt").write_bytes(files["other"].read_bytes())
    second = Path(_run(compose_config, mine, None, "guidance=js")["out_dir"])
    assert second != first and second.parent == first.parent


def test_a_fixed_out_dir_of_other_inputs_is_refused(compose_config, files, tmp_path):
    out = tmp_path / "fixed"
    _run(compose_config, files, out, "guidance=js")
    other = {**files, "classifier": files["other"]}
    with pytest.raises(RunStateError) as info:
        _run(compose_config, other, out, "guidance=js")
    assert str(info.value) == (
        f"sampling.out_dir={out} holds samples of other inputs (classifier changed since it "
        "was started); delete it or choose another folder"
    )


# ------------------------------------------------------------------ self-healing and disk


@pytest.fixture(scope="module")
def reference_run(files, tmp_path_factory) -> bytes:
    """``samples.npz`` of an uninterrupted guided run (what every fault must reproduce)."""
    from calguide.config import compose_spec, release

    out = tmp_path_factory.mktemp("reference_run")
    overrides = [
        *sample_overrides(files, out / "run", "guidance=js"),
        f"paths.artifacts={out / 'artifacts'}",
        f"paths.log_dir={out / 'logs'}",
    ]
    sample_main.task(compose_spec("sample", overrides, output_dir=out / "hydra"))
    release()
    return (out / "run" / "samples.npz").read_bytes()


def test_a_truncated_shard_is_moved_aside_and_regenerated(
    compose_config, files, tmp_path, reference_run, capsys
):
    out = tmp_path / "run"
    _run(compose_config, files, out, "guidance=js")
    shard = sorted((out / "shards").glob("*.npz"))[1]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    (out / "samples.npz").unlink()
    capsys.readouterr()
    _run(compose_config, files, out, "guidance=js")
    printed = capsys.readouterr().out
    corrupt = out / "shards" / "corrupt" / shard.name
    assert (
        f"calguide: warning: shard {shard} does not load (File is not a zip file); moved to "
        f"{corrupt}, its samples are generated again"
    ) in printed
    assert corrupt.is_file() and shard.is_file()  # regenerated in place
    assert (out / "samples.npz").read_bytes() == reference_run


@pytest.mark.parametrize("fault", ["wrong_keys", "wrong_indices", "wrong_shape"])
def test_shards_that_do_not_fit_are_regenerated(
    compose_config, files, tmp_path, reference_run, fault
):
    from calguide.samples.writer import save_npz

    out = tmp_path / "run"
    _run(compose_config, files, out, "guidance=js")
    shard = sorted((out / "shards").glob("*.npz"))[0]
    with np.load(shard) as npz:
        arrays = {k: npz[k] for k in npz.files}
    if fault == "wrong_keys":
        del arrays["labels"]
    elif fault == "wrong_indices":
        arrays["indices"] = arrays["indices"] + 1
    else:
        arrays["images"] = np.zeros((len(arrays["indices"]), 16, 16, 1), np.uint8)
    save_npz(shard, **arrays)
    (out / "samples.npz").unlink()
    _run(compose_config, files, out, "guidance=js")
    assert len(list((out / "shards" / "corrupt").glob("*"))) == 1
    assert (out / "samples.npz").read_bytes() == reference_run


def test_a_full_disk_while_writing_a_shard(
    compose_config, files, tmp_path, reference_run, monkeypatch, capsys
):
    import calguide.samples.writer as writer

    real, calls = writer.save_npz, []

    def fails_second_time(path, **arrays):
        calls.append(path)
        if len(calls) == 2:
            with open(Path(path).with_name(".partial.npz.1.tmp"), "wb") as handle:
                handle.write(b"half")  # what a write cut short leaves (its temp file)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(path, **arrays)

    monkeypatch.setattr(writer, "save_npz", fails_second_time)
    out = tmp_path / "run"
    code, err = run_cli(
        sample_main, sample_args(files, tmp_path, out, "guidance=js"), capsys
    )  # fmt: skip
    line = one_error_line(code, err)
    second = out / "shards" / "00000004-00000007.npz"
    assert line == (
        f"calguide: error: could not write shard {second} (No space left on device); the "
        "shards written so far are kept: free the space (or fix the folder) and rerun the "
        "same command to resume"
    )
    assert [p.name for p in sorted((out / "shards").glob("*.npz"))] == ["00000000-00000003.npz"]
    monkeypatch.setattr(writer, "save_npz", real)
    _run(compose_config, files, out, "guidance=js")
    assert (out / "samples.npz").read_bytes() == reference_run
    assert not list((out / "shards").glob(".*.tmp"))


def test_a_finished_run_is_recognised_without_sampling(compose_config, files, tmp_path, capsys):
    out = tmp_path / "run"
    _run(compose_config, files, out, "guidance=js")
    for shard in (out / "shards").glob("*.npz"):
        shard.unlink()  # not read again: the completion record and samples.npz suffice
    capsys.readouterr()
    record = _run(compose_config, files, out, "guidance=js")
    assert f"calguide: {out} is finished (10 samples); nothing to sample" in capsys.readouterr().out
    assert record["num_samples"] == 10


def test_a_busy_run_folder_waits_then_stops_with_one_line(compose_config, files, tmp_path):
    out = tmp_path / "run"
    with folder_lock(out, wait_s=0, what="run folder"), pytest.raises(RunStateError) as info:
        _run(compose_config, files, out, "guidance=js", "sampling.lock_wait_s=0.3")
    assert str(info.value).startswith(f"run folder {out} is in use by pid {os.getpid()} on ")
    assert "waited 0.3 s (sampling.lock_wait_s)" in str(info.value)
    _run(compose_config, files, out, "guidance=js")  # free again: runs


# ------------------------------------------------------------------ real processes (slow)


def _script_args(files, tmp_path: Path, out: Path, *extra: str) -> list[str]:
    script = Path(sys.executable).with_name("calguide-sample")
    return [
        str(script),
        *sample_overrides(files, out, "guidance=js"),
        "sampling.num_samples=48",
        "sampling.batch_size=4",
        "sampling.snapshot_count=0",
        f"paths.log_dir={tmp_path / 'logs'}",
        f"paths.artifacts={tmp_path / 'artifacts'}",
        *extra,
    ]


def _uninterrupted(files, tmp_path: Path, *extra: str) -> bytes:
    out = tmp_path / "uninterrupted"
    subprocess.run(_script_args(files, tmp_path, out, *extra), check=True, capture_output=True)
    return (out / "samples.npz").read_bytes()


def _wait_for_shards(out: Path, count: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(list((out / "shards").glob("*.npz"))) >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"no {count} shards in {out} after {timeout} s")


@pytest.mark.slow
def test_kill_9_mid_run_then_rerun_gives_the_same_file(files, tmp_path):
    reference = _uninterrupted(files, tmp_path)
    out = tmp_path / "killed"
    for shards_before_kill in (1, 5):
        process = subprocess.Popen(
            _script_args(files, tmp_path, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        _wait_for_shards(out, shards_before_kill)
        process.kill()
        process.wait()
    subprocess.run(_script_args(files, tmp_path, out), check=True, capture_output=True)
    assert (out / "samples.npz").read_bytes() == reference


@pytest.mark.slow
def test_sigterm_stops_cleanly_and_the_rerun_resumes(files, tmp_path):
    reference = _uninterrupted(files, tmp_path)
    out = tmp_path / "preempted"
    process = subprocess.Popen(
        _script_args(files, tmp_path, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    _wait_for_shards(out, 2)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr[-2000:]
    assert "calguide: SIGTERM: stopped;" in stdout
    assert "rerun the same command to resume" in stdout
    assert not list((out / "shards").glob(".*.tmp"))
    subprocess.run(_script_args(files, tmp_path, out), check=True, capture_output=True)
    assert (out / "samples.npz").read_bytes() == reference


@pytest.mark.slow
def test_two_processes_on_one_run_folder(files, tmp_path):
    slower = "diffusion.respacing='200'"  # long enough for the second to start mid-run
    reference = _uninterrupted(files, tmp_path, slower)
    out = tmp_path / "shared"
    first = subprocess.Popen(
        _script_args(files, tmp_path, out, slower), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    _wait_for_shards(out, 1)
    second = subprocess.Popen(
        _script_args(files, tmp_path, out, slower), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    first.communicate(timeout=300)
    out_second, _ = second.communicate(timeout=300)
    assert first.returncode == 0 and second.returncode == 0
    assert "is in use by pid" in out_second and "waiting" in out_second
    assert f"calguide: {out} is finished (48 samples); nothing to sample" in out_second
    assert (out / "samples.npz").read_bytes() == reference
    with np.load(out / "samples.npz") as npz:
        assert len(npz["arr_0"]) == 48
    indices = np.concatenate(
        [np.load(p)["indices"] for p in sorted((out / "shards").glob("*.npz"))]
    )
    assert sorted(indices.tolist()) == list(range(48))  # no index missing or twice


def test_an_experiment_record_is_both_files_in_key_order(tmp_path, monkeypatch) -> None:
    out = tmp_path / "new" / "folder"
    atomic_write_report(out, "coverage", {"z": 1, "a": [0.5, 2]}, "| a | z |\n")
    assert sorted(p.name for p in out.iterdir()) == ["coverage.json", "coverage.md"]
    assert list(json.loads((out / "coverage.json").read_text())) == ["z", "a"]
    assert (out / "coverage.md").read_text() == "| a | z |\n"

    def full_disk(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full_disk)
    with pytest.raises(OSError):
        atomic_write_report(out, "coverage", {"z": 2}, "new\n")
    assert json.loads((out / "coverage.json").read_text()) == {"z": 1, "a": [0.5, 2]}
    assert sorted(p.name for p in out.iterdir()) == ["coverage.json", "coverage.md"]
