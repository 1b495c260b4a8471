"""Benchmark support shared by experiments/bench.py and experiments/gpu_check.py: timing
helpers (:mod:`.timing`) and the random-weight pairs they time (:mod:`.pairs`)."""
