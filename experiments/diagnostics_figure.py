"""Side-by-side guidance diagnostics of several sampling runs (the paper's figures 1–3).

    python experiments/diagnostics_figure.py logs/sample/multiruns/<date> -o diagnostics.png

Reads every ``sampling.json`` below the given folders (Hydra run or multirun folders, or sample
output folders) and draws mean ‖g‖, mean p(y|x) and mean H(p) against the timestep, one curve
per run, labelled by guidance, scale and classifier temperature. Prints a small table of the
early (t ≥ 900) and late (t < 100) gradient norms so the collapse can be read as numbers.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from calguide.samples.diagnostics import plot_diagnostics, read_diagnostics_csv


def run_label(record: dict) -> str:
    """``js s=2 τ×0.5 [digits_resnet-x0-smece-s0]``: what the run ran (its run record)."""
    run = record["run"]
    guidance, classifier = run["guidance"], run.get("classifier")
    label = f"{guidance['name']} s={guidance['scale']:g}"
    multiplier = record["config"]["guidance"].get("temperature", 1.0)
    if multiplier != 1.0:
        label += f" τ×{multiplier:g}"
    if classifier:
        label += f" [{Path(classifier['file']).stem}]"
    return label


def collect(folders: list[Path]) -> dict[str, dict]:
    runs: dict[str, dict] = {}
    for folder in folders:
        for path in sorted(folder.rglob("sampling.json")):
            record = json.loads(path.read_text())
            csv_path = record.get("diagnostics_csv")
            if csv_path and Path(csv_path).is_file():
                runs[run_label(record)] = read_diagnostics_csv(csv_path)
    return runs


def band_mean(per_timestep: dict, low: int, high: int, key: str) -> float:
    values = [row[key] for t, row in per_timestep.items() if low <= t < high]
    return sum(values) / len(values) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("-o", "--output", type=Path, default=Path("diagnostics_comparison.png"))
    parser.add_argument("--title", default="guidance diagnostics")
    args = parser.parse_args()
    runs = collect(args.folders)
    if not runs:
        raise SystemExit(
            f"no sampling.json with diagnostics below {[str(f) for f in args.folders]}"
        )
    plot_diagnostics(runs, args.output, title=args.title)
    print("| run | ‖g‖ t≥900 | ‖g‖ 400≤t<600 | ‖g‖ t<100 | p_y t≥900 | H t≥900 |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, per_t in runs.items():
        print(
            f"| {name} | {band_mean(per_t, 900, 1000, 'grad_norm'):.3g} | "
            f"{band_mean(per_t, 400, 600, 'grad_norm'):.3g} | "
            f"{band_mean(per_t, 0, 100, 'grad_norm'):.3g} | "
            f"{band_mean(per_t, 900, 1000, 'p_y'):.3f} | "
            f"{band_mean(per_t, 900, 1000, 'entropy'):.3f} |"
        )
    print(f"figure: {args.output}")


if __name__ == "__main__":
    main()
