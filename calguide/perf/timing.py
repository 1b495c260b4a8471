"""Timing on noisy machines: one call with the GPU's queue drained, medians after warm-up, and
round-robin medians so that drift hits every contender alike; the machine, in words."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable

import torch


def timed_call(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds for one call, with the GPU's queue drained before and after."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def median_time(fn: Callable[[], object], repeats: int, warmup: int, device: torch.device) -> float:
    for _ in range(warmup):
        fn()
    return statistics.median(timed_call(fn, device) for _ in range(repeats))


def interleaved_medians(
    fns: dict[str, Callable[[], object]], repeats: int, warmup: int, device: torch.device
) -> dict[str, float]:
    """Median time of each function, timed round-robin so that machine drift (other load,
    clock changes) hits every entry alike instead of whichever ran first."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(timed_call(fn, device))
    return {name: statistics.median(values) for name, values in times.items()}


def machine(device: torch.device) -> str:
    cpu = platform.processor() or platform.machine()
    text = f"{platform.system()} {cpu}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
    text += f"{torch.get_num_threads()} threads"
    if device.type == "cuda":
        text += f", {torch.cuda.get_device_name(device)}"
    return text
