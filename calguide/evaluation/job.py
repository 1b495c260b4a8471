"""The evaluation job behind ``calguide-eval``: FID, precision, recall, class accuracy of an
ADM-layout ``.npz`` of samples."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from calguide import assembly
from calguide.config import ConfigError
from calguide.metrics.evaluate import evaluate_samples


def run_evaluation(cfg: DictConfig) -> dict:
    path = Path(cfg.samples)
    if not path.is_file():
        raise FileNotFoundError(f"samples: no file at {path} (expected an ADM-layout .npz)")
    with np.load(path) as npz:
        if "arr_0" not in npz:
            raise ConfigError(f"samples: {path} has no 'arr_0' (keys: {sorted(npz.files)})")
        images = npz["arr_0"]
        labels = npz["arr_1"] if "arr_1" in npz else np.zeros(len(images), dtype=np.int64)
    out_dir = Path(cfg.output_dir) if cfg.output_dir else path.parent
    callback = assembly.metrics_callback(cfg, out_dir)
    if callback is None:
        raise ConfigError("metrics=none: calguide-eval needs metrics=domain or metrics=inception")
    results = evaluate_samples(callback, images, labels, output_dir=out_dir)
    print(json.dumps(results, indent=2))
    print(f"calguide: metrics -> {out_dir / 'metrics.json'}")
    return results
