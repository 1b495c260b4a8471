"""Peak memory and time of the metrics path at ImageNet scale, on random features.

``python experiments/memory_probe.py [--n 50000] [--ref 50000] [--dim 2048] ...``

Streams ``n`` random ``dim``-d feature vectors, batch by batch, through
:class:`~calguide.modules.metrics.GenerativeMetrics` (streaming :class:`FeatureStats`, the
kept precision/recall rows, the dedup tail), then computes FID and precision/recall (k=3)
against ``ref`` random reference features, and prints the peak resident set size
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``) and the wall time of each phase.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time

import torch

from calguide.metrics.fid import FeatureStats
from calguide.modules.metrics import GenerativeMetrics


def _peak_mib() -> float:
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / (1024.0 * 1024.0) if sys.platform == "darwin" else kib / 1024.0


class _RandomFeatures:
    """Stands in for a feature extractor: random features, one row per 'image'."""

    name = "random"

    def __init__(self, dim: int, seed: int) -> None:
        self.dim = dim
        self.gen = torch.Generator().manual_seed(seed)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return torch.randn(images.shape[0], self.dim, generator=self.gen).abs_()


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50_000, help="generated samples")
    parser.add_argument("--ref", type=int, default=50_000, help="reference feature rows")
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=500, help="predict batch size")
    parser.add_argument("--pr-batch", type=int, default=5000, help="distance block size")
    parser.add_argument("--pr-dtype", choices=("float16", "float32"), default="float16")
    parser.add_argument("--device", default="cpu", help="where distances are computed")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    base = _peak_mib()
    # Reference rows built chunk by chunk straight into their storage dtype, as
    # reference_features() / a cached reference file would hand them over.
    gen = torch.Generator().manual_seed(args.seed + 1)
    pr_dtype = getattr(torch, args.pr_dtype)
    ref_pr = torch.empty(args.ref, args.dim, dtype=pr_dtype)
    ref_stats = FeatureStats()
    for start in range(0, args.ref, args.batch):
        chunk = torch.randn(min(args.batch, args.ref - start), args.dim, generator=gen).abs_()
        ref_stats.update(chunk)
        ref_pr[start : start + chunk.shape[0]] = chunk
    reference = {"mean": ref_stats.mean, "cov": ref_stats.covariance, "features": ref_pr}
    del ref_stats
    t_ref = time.perf_counter()

    cb = GenerativeMetrics(
        _RandomFeatures(args.dim, args.seed),
        reference,
        max_pr_samples=max(args.n, args.ref),
        pr_features_dtype=pr_dtype,
        pr_batch_size=args.pr_batch,
    )
    dummy = torch.zeros(args.batch, 1, 1, 3, dtype=torch.uint8)  # images are not looked at
    for start in range(0, args.n, args.batch):
        b = min(args.batch, args.n - start)
        cb.update(
            {
                "images": dummy[:b],
                "labels": torch.zeros(b, dtype=torch.int64),
                "indices": torch.arange(start, start + b),
            }
        )
    t_stream = time.perf_counter()
    after_stream = _peak_mib()
    results = cb.compute(device=args.device)
    t_end = time.perf_counter()

    report = {
        "n": args.n,
        "ref": args.ref,
        "dim": args.dim,
        "pr_dtype": args.pr_dtype,
        "fid": results["fid"],
        "precision": results["precision"],
        "recall": results["recall"],
        "peak_rss_after_import_mib": base,
        "peak_rss_after_stream_mib": after_stream,
        "peak_rss_mib": _peak_mib(),
        "time_reference_s": t_ref - t0,
        "time_stream_s": t_stream - t_ref,
        "time_fid_pr_s": t_end - t_stream,
        "time_total_s": t_end - t0,
        "threads": torch.get_num_threads(),
    }
    for key, value in report.items():
        print(f"{key:>28}: {value:.4g}" if isinstance(value, float) else f"{key:>28}: {value}")
    return report


if __name__ == "__main__":
    main()
