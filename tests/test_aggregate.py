"""calguide-aggregate (calguide.commands.aggregate, calguide.tables) on hand-written multirun
folders: grouping, stats, tables, plots."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import pytest

from calguide.commands import aggregate
from calguide.tables import plots, render
from calguide.tables import records as rec
from calguide.tables import summary as summ

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ROWS = list(summ.DEFAULT_ROWS)
METRICS = list(summ.DEFAULT_METRICS)

# (guidance, scale) → base FID; each seed adds 2·seed, so every group has mean base+2, std 2.
BASE_FID = {("vanilla", 1.0): 10.0, ("vanilla", 2.0): 8.0, ("js", 1.0): 7.0, ("js", 2.0): 5.0}


def sampling_json(
    guidance: str,
    scale: float,
    seed: int,
    metrics: dict | None,
    classifier: str = "resnet101",
    denoiser: str = "adm128",
    table: str | None = "imagenet128_strategies",
    smece: float | None = 0.03,
) -> dict:
    config = {
        "seed": seed,
        "task_name": "sample",
        "data": {"name": "imagenet128", "image_size": 128},
        "denoiser": {"name": denoiser, "checkpoint": f"/a/{denoiser}.pt"},
        "classifier": {"name": classifier, "checkpoint": f"/a/{classifier}.pt"},
        "guidance": {"name": guidance, "scale": scale, "temperature": 1.0, "params": {}},
        "diffusion": {"respacing": "250"},
        "sampling": {"num_samples": 100, "snapshot_timesteps": [900, 0]},
    }
    if table:
        config["experiment"] = {"table": table, "row": f"{guidance}"}
    run = {  # what calguide-sample records of what it ran (calguide.jobs.records)
        "sampler": "ddpm",
        "respacing": "250",
        "steps": 250,
        "network_evaluations": 250,
        "guidance": {"name": guidance, "scale": scale, "schedule": "constant", "params": {}},
        "denoiser": {"name": denoiser, "file": f"/a/{denoiser}.pt"},
        "classifier": None if guidance == "none" else {"name": classifier, "temperature": 1.0},
        "device": "cpu",
        "samples": 100,
        "seed": seed,
    }
    record = {
        "samples": f"/a/samples/{guidance}-{scale}-{seed}/samples.npz",
        "num_samples": 100,
        "run": run,
        "out_dir": f"/a/samples/{guidance}-{scale}-{seed}",
        "classifier_smece": smece,
        "config": config,
    }
    if metrics is not None:
        record["metrics"] = {**metrics, "num_samples": 100, "extractor": "domain:x"}
    return record


def write_run(folder: Path, data: dict | str) -> Path:
    (folder / ".hydra").mkdir(parents=True)
    text = data if isinstance(data, str) else json.dumps(data, indent=2)
    (folder / "sampling.json").write_text(text)
    return folder


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """cond/: 2 strategies × 2 scales × 3 seeds (+ an unfinished job); uncond/: none × 2 seeds."""
    root = tmp_path / "digits_strategies"
    job = 0
    for (guidance, scale), base in BASE_FID.items():
        for seed in range(3):
            metrics = {
                "fid": base + 2 * seed,
                "precision": 0.6 + 0.1 * seed,
                "recall": 0.5,
                "class_acc": 0.9,
            }
            if (guidance, scale) == ("js", 2.0) and seed == 2:
                metrics["precision"] = None  # one run without precision: n = 2 for that cell
            write_run(root / "cond" / str(job), sampling_json(guidance, scale, seed, metrics))
            job += 1
    (root / "cond" / str(job) / ".hydra").mkdir(parents=True)  # started, never finished
    for seed in range(2):
        metrics = {"fid": 20.0 + seed, "precision": 0.5, "recall": 0.7, "class_acc": None}
        data = sampling_json("none", 0.0, seed, metrics, smece=None)
        write_run(root / "uncond" / str(seed), data)
    return root


def by_key(summary: list[dict], guidance: str, scale: float) -> dict:
    (entry,) = [
        e for e in summary if e["guidance.name"] == guidance and e["guidance.scale"] == scale
    ]
    return entry


def test_collect_runs_flattens_config_and_metrics(sweep):
    records = rec.collect_runs([sweep])
    assert len(records) == 14
    first = records[0]
    assert first["run_dir"] == str(sweep / "cond" / "0")
    assert first["guidance.name"] == "vanilla"
    assert first["guidance.scale"] == 1.0
    assert first["classifier.name"] == "resnet101"
    assert first["denoiser.name"] == "adm128"
    assert first["data.image_size"] == 128
    assert first["seed"] == 0
    assert first["fid"] == 10.0
    assert first["classifier_smece"] == 0.03
    assert first["experiment.table"] == "imagenet128_strategies"
    # the metrics' own num_samples does not overwrite a config key and stays reachable
    assert first["num_samples"] == 100 and first["sampling.num_samples"] == 100
    # unguided runs: the classifier is unused, so it is not part of the row
    none = [r for r in records if r["guidance.name"] == "none"]
    assert len(none) == 2 and all(r["classifier.name"] is None for r in none)
    # natural order of Hydra's numbered job folders (2 before 10)
    cond_dirs = [Path(r["run_dir"]).name for r in records[:12]]
    assert cond_dirs == [str(i) for i in range(12)]


def test_unfinished_runs_are_skipped_and_named(sweep):
    assert rec.unfinished_runs([sweep]) == [sweep / "cond" / "12"]
    assert all(r["run_dir"] != str(sweep / "cond" / "12") for r in rec.collect_runs([sweep]))


def test_identical_copies_count_once(sweep, tmp_path):
    """calguide-sample writes the same sampling.json in the Hydra folder and the sample folder."""
    copy = tmp_path / "digits_strategies" / "artifacts" / "samples" / "x"
    copy.mkdir(parents=True)
    (copy / "sampling.json").write_bytes((sweep / "cond" / "0" / "sampling.json").read_bytes())
    assert len(rec.collect_runs([sweep])) == 14


def test_repeated_runs(sweep, tmp_path):
    assert rec.repeated_runs(rec.collect_runs([sweep])) == []
    again = sweep / "rerun" / "0"  # the same config sampled again: same out_dir, other config
    data = json.loads((sweep / "cond" / "1" / "sampling.json").read_text())
    data["config"]["task_name"] = "rerun"
    write_run(again, data)
    assert rec.repeated_runs(rec.collect_runs([sweep])) == [[str(sweep / "cond" / "1"), str(again)]]


def test_summarize_statistics(sweep):
    summary = summ.summarize(rec.collect_runs([sweep]), ROWS, METRICS)
    assert len(summary) == 5
    vanilla1 = by_key(summary, "vanilla", 1.0)
    assert vanilla1["n"] == 3 and vanilla1["seeds"] == [0, 1, 2]
    assert vanilla1["fid_mean"] == pytest.approx(12.0)  # 10, 12, 14
    assert vanilla1["fid_std"] == pytest.approx(2.0)  # sample std, ddof=1
    assert vanilla1["fid_n"] == 3
    assert vanilla1["precision_mean"] == pytest.approx(0.7)
    assert vanilla1["precision_std"] == pytest.approx(0.1)
    assert vanilla1["recall_std"] == pytest.approx(0.0)
    assert vanilla1["classifier_smece_mean"] == pytest.approx(0.03)

    js2 = by_key(summary, "js", 2.0)
    assert js2["fid_mean"] == pytest.approx(7.0)
    assert js2["precision_n"] == 2  # the null value is not counted
    assert js2["precision_mean"] == pytest.approx(0.65)
    assert js2["precision_std"] == pytest.approx(statistics.stdev([0.6, 0.7]))

    none = by_key(summary, "none", 0.0)
    assert none["n"] == 2 and none["fid_mean"] == pytest.approx(20.5)
    assert none["fid_std"] == pytest.approx(0.5**0.5)
    assert none["class_acc_mean"] is None and none["class_acc_n"] == 0
    assert none["classifier_smece_n"] == 0


def test_summarize_order_and_grouping_keys(sweep):
    summary = summ.summarize(rec.collect_runs([sweep]), ROWS, METRICS)
    order = [(e["guidance.name"], e["guidance.scale"]) for e in summary]
    assert order == [("none", 0.0), ("vanilla", 1.0), ("vanilla", 2.0), ("js", 1.0), ("js", 2.0)]
    assert list(summary[0])[: len(ROWS) + 1] == [*ROWS, "n"]
    # fewer row keys: the scales are pooled
    pooled = summ.summarize(rec.collect_runs([sweep]), ["guidance.name"], ["fid"])
    assert [(e["guidance.name"], e["n"]) for e in pooled] == [
        ("none", 2),
        ("vanilla", 6),
        ("js", 6),
    ]
    vanilla = pooled[1]
    assert vanilla["fid_mean"] == pytest.approx(statistics.fmean([10, 12, 14, 8, 10, 12]))


def test_summarize_single_run_has_no_std(sweep):
    one = [r for r in rec.collect_runs([sweep]) if r["seed"] == 0]
    summary = summ.summarize(one, ROWS, ["fid"])
    assert all(e["n"] == 1 and e["fid_std"] is None for e in summary)
    assert "±" not in render.metric_cell(summary[1], "fid")


def test_numeric_strings_sort_numerically():
    records = [{"diffusion.respacing": v, "fid": 1.0} for v in ("250", "1000", "50")]
    summary = summ.summarize(records, ["diffusion.respacing"], ["fid"])
    assert [e["diffusion.respacing"] for e in summary] == ["50", "250", "1000"]


def test_unknown_row_key_is_an_error(sweep):
    with pytest.raises(rec.AggregateError, match=r"guidance\.scal.*guidance\.scale"):
        summ.summarize(rec.collect_runs([sweep]), ["guidance.scal"], ["fid"])


def test_markdown_table_cells_and_published_column(sweep):
    summary = summ.summarize(rec.collect_runs([sweep]), ROWS, METRICS)
    published = [
        {"match": {"guidance.name": "js", "classifier.name": "resnet101", "guidance.scale": 2},
         "fid": 2.13, "source": "paper A"},
        {"match": {"guidance.name": "tv"}, "fid": 9.99, "source": "paper B"},
    ]  # fmt: skip
    text = render.markdown_table(summary, ROWS, METRICS, published=published, title="strategies")
    lines = text.splitlines()
    assert lines[0] == "### strategies"
    header = lines[2]
    assert header.startswith("| row | guidance | scale | classifier | denoiser | n | FID |")
    assert "published FID" in header and "published precision" not in header
    rows = {line.split(" | ")[2] + "/" + line.split(" | ")[1]: line for line in lines[4:9]}
    assert set(rows) == {"0/none", "1/vanilla", "2/vanilla", "1/js", "2/js"}
    js2 = rows["2/js"].strip("| ").split(" | ")
    assert js2[5] == "3"  # n
    assert js2[6] == "7.00 ± 2.00"
    assert js2[7] == "0.650 ± 0.071 (n=2)"
    assert js2[-1] == "2.13 [1]"
    for key in ("0/none", "1/vanilla", "2/vanilla", "1/js"):
        assert rows[key].strip("| ").split(" | ")[-1] == "—"
    none = rows["0/none"].strip("| ").split(" | ")
    assert none[3] == "—"  # no classifier for unguided sampling
    assert none[6] == "20.50 ± 0.71"
    assert "[1] paper A" in text and "paper B" not in text


def test_markdown_table_leaves_out_empty_metrics_and_published(sweep):
    records = rec.collect_runs([sweep])
    for r in records:
        r["precision"] = None
    summary = summ.summarize(records, ROWS, METRICS)
    text = render.markdown_table(summary, ROWS, METRICS)
    header = text.splitlines()[0]
    assert "precision" not in header and "FID" in header and "recall" in header
    assert "published" not in text.lower()


def test_published_yaml_matches_by_config_values():
    main = summ.load_published(summ.DEFAULT_PUBLISHED, "imagenet128_main")
    sampling = summ.load_published(summ.DEFAULT_PUBLISHED, "imagenet128_sampling")
    calibration = summ.load_published(summ.DEFAULT_PUBLISHED, "imagenet128_calibration")
    assert summ.load_published(summ.DEFAULT_PUBLISHED, "digits_strategies") == []

    def row(**values):
        entry = dict.fromkeys([*ROWS, "experiment.row"])
        entry.update({k.replace("__", "."): v for k, v in values.items()})
        return entry

    admg = row(guidance__name="vanilla", classifier__name="adm_noisy128", guidance__scale=0.5)
    assert (lambda e: (e["fid"], e["precision"], e["recall"]))(
        summ.match_published(admg, main)
    ) == (
        2.97,
        0.78,
        0.59,
    )
    admg["guidance.scale"] = 1.0
    assert summ.match_published(admg, main) is None
    elucd = row(guidance__name="vanilla", classifier__name="resnet101", guidance__scale=1.0)
    assert summ.match_published(elucd, main)["fid"] == 2.19
    elucd["classifier.name"] = "resnet50"
    assert summ.match_published(elucd, main)["fid"] == 2.37
    assert summ.match_published(elucd, sampling)["fid"] == 5.34
    published = {"fkl": 2.17, "rkl": 2.14, "js": 2.13}
    for name, fid in published.items():
        entry = summ.match_published(row(guidance__name=name, classifier__name="resnet101"), main)
        assert entry["fid"] == fid and "2511.05844" in entry["source"]
    hellinger = summ.match_published(
        row(guidance__name="hellinger", classifier__name="resnet101"), main
    )
    assert (hellinger["precision"], hellinger["recall"]) == (0.80, 0.58) and "fid" not in hellinger
    tilted = summ.match_published(
        row(guidance__name="tilted", classifier__name="resnet50"), sampling
    )
    assert tilted["fid"] == 5.28 and "t = −0.2" in tilted["source"]
    smece = row(experiment__row="ADM-G, fine-tuned (CE + Smooth ECE)")
    assert summ.match_published(smece, calibration)["fid"] == 5.94
    assert (
        summ.match_published(row(guidance__name="js", classifier__name="resnet101"), sampling)
        is None
    )


def test_csv_files(sweep, tmp_path):
    records = rec.collect_runs([sweep])
    summary = summ.summarize(records, ROWS, METRICS)
    render.to_csv(summary, tmp_path / "table.csv")
    render.runs_csv(records, tmp_path / "runs.csv")
    with open(tmp_path / "table.csv") as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == 5
    for metric in METRICS:
        assert {f"{metric}_mean", f"{metric}_std", f"{metric}_n"} <= set(table[0])
    assert list(table[0])[:5] == [*ROWS, "n"]
    vanilla1 = table[1]
    assert (vanilla1["guidance.name"], vanilla1["guidance.scale"]) == ("vanilla", "1.0")
    assert float(vanilla1["fid_mean"]) == pytest.approx(12.0)
    assert float(vanilla1["fid_std"]) == pytest.approx(2.0)
    assert json.loads(vanilla1["seeds"]) == [0, 1, 2]
    assert table[0]["class_acc_mean"] == ""  # None → empty
    with open(tmp_path / "runs.csv") as handle:
        runs = list(csv.DictReader(handle))
    assert len(runs) == 14
    assert next(iter(runs[0])) == "run_dir"
    assert {"fid", "precision", "seed", "guidance.name", "sampling.snapshot_timesteps"} <= set(
        runs[0]
    )
    assert json.loads(runs[0]["sampling.snapshot_timesteps"]) == [900, 0]
    assert float(runs[1]["fid"]) == 12.0


def test_plots_are_png(sweep, tmp_path):
    summary = summ.summarize(rec.collect_runs([sweep]), ROWS, METRICS)
    fid = plots.plot_fid_vs_scale(summary, tmp_path / "plots" / "fid.png", title="t")
    pr = plots.plot_precision_recall(summary, tmp_path / "plots" / "pr.png")
    for path in (fid, pr):
        assert path is not None and path.read_bytes()[:8] == PNG_MAGIC
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["fid.png", "pr.png"]


def test_plots_skipped_without_metrics(tmp_path):
    records = [
        {"guidance.name": g, "guidance.scale": s, "seed": 0, "fid": None, "precision": None}
        for g in ("vanilla", "js")
        for s in (1.0, 2.0)
    ]
    summary = summ.summarize(records, ["guidance.name", "guidance.scale"], ["fid", "precision"])
    assert plots.plot_fid_vs_scale(summary, tmp_path / "fid.png") is None
    assert plots.plot_precision_recall(summary, tmp_path / "pr.png") is None
    # FID but no scale among the row keys: nothing to put on the x axis
    for r in records:
        r["fid"] = 3.0
    pooled = summ.summarize(records, ["guidance.name"], ["fid"])
    assert plots.plot_fid_vs_scale(pooled, tmp_path / "fid.png") is None
    assert list(tmp_path.iterdir()) == []


def test_empty_folder_is_an_error(tmp_path):
    empty = tmp_path / "nothing_here"
    (empty / "0" / ".hydra").mkdir(parents=True)
    with pytest.raises(rec.AggregateError, match="no sampling.json") as err:
        rec.collect_runs([empty])
    assert str(empty) in str(err.value) and "1 unfinished" in str(err.value)


def test_malformed_json_names_the_file(tmp_path):
    write_run(tmp_path / "0", '{"samples": "x", ')
    with pytest.raises(rec.AggregateError, match="cannot read as JSON") as err:
        rec.collect_runs([tmp_path])
    assert str(tmp_path / "0" / "sampling.json") in str(err.value)


def test_main_end_to_end(sweep, tmp_path, capsys):
    published = tmp_path / "published.yaml"
    published.write_text(
        "imagenet128_strategies:\n"
        "  - match: {guidance.name: js, classifier.name: resnet101, guidance.scale: 1}\n"
        "    fid: 2.13\n    precision: 0.8\n    source: the paper\n"
        "other:\n  - match: {guidance.name: js}\n    fid: 1.0\n    source: not this one\n"
    )
    out = tmp_path / "out"
    code = aggregate.main(
        [
            str(sweep / "cond"),
            str(sweep / "uncond"),
            "--out",
            str(out),
            "--published",
            str(published),
        ]
    )
    assert code == 0
    expected = ["fid_vs_scale.png", "precision_recall.png", "runs.csv", "table.csv", "table.md"]
    assert sorted(p.name for p in out.iterdir()) == expected
    for name in ("fid_vs_scale.png", "precision_recall.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
    captured = capsys.readouterr()
    table = (out / "table.md").read_text()
    assert table.startswith("### imagenet128_strategies\n")  # experiment.table of the runs
    assert "| published FID | published precision |" in table
    assert "2.13 [1]" in table and "0.800 [1]" in table and "[1] the paper" in table
    assert "not this one" not in table
    assert table in captured.out
    for name in expected:
        assert f"wrote {out / name}" in captured.out
    warnings = captured.err.splitlines()
    assert any("1 unfinished run" in w and str(sweep / "cond" / "12") in w for w in warnings)
    assert all(w.startswith("aggregate: warning: ") for w in warnings)


def test_main_options_and_errors(sweep, tmp_path, capsys):
    code = aggregate.main(
        [str(sweep), "--rows", "guidance.name", "--metrics", "fid,density", "--title", "T"]
    )
    assert code == 0
    table = (sweep / "table.md").read_text()  # --out defaults to the first folder
    assert table.startswith("### T\n")
    assert "| row | guidance | n | FID |" in table and "density" not in table
    assert "published" not in table  # the repository's YAML has no 2×2 rows that match
    err = capsys.readouterr().err
    assert "no values for density" in err
    assert "same samples" not in err  # pooled scales repeat seeds, not runs

    empty = tmp_path / "empty"
    empty.mkdir()
    assert aggregate.main([str(empty)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("aggregate: error: no sampling.json found below") and str(empty) in err
    assert len(err.splitlines()) == 1
