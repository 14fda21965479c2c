"""Shared helpers for the benchmarks: timing, percentiles, peak memory, the JSON result line."""

from __future__ import annotations

import json
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

# Benchmarks run as plain scripts (python bench/NAME.py) from a checkout.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def time_calls(function: Callable[[], object], iterations: int, warmup: int = 200) -> dict[str, float]:
    """Call ``function`` repeatedly; return mean, p50 and p99 in microseconds."""
    for _ in range(warmup):
        function()
    samples = []
    clock = time.perf_counter_ns
    for _ in range(iterations):
        start = clock()
        function()
        samples.append(clock() - start)
    samples.sort()
    return {
        "mean_us": statistics.fmean(samples) / 1000,
        "p50_us": samples[len(samples) // 2] / 1000,
        "p99_us": samples[min(len(samples) - 1, int(len(samples) * 0.99))] / 1000,
    }


def record_durations(obj: object, method: str) -> list[float]:
    """Wrap ``obj.method`` so each call's duration (seconds) is appended to the returned list."""
    durations: list[float] = []
    original = getattr(obj, method)

    def timed(*args, **kwargs):
        began = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            durations.append(time.perf_counter() - began)

    setattr(obj, method, timed)
    return durations


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def report(name: str, result: dict[str, object]) -> None:
    """Print the human summary, then the result as one JSON object on the last line."""
    print(json.dumps({"bench": name, **result}, sort_keys=False))


def percentile(samples: list[float], q: float) -> float:
    """The q-quantile (0..1) of the samples, nearest rank; NaN when there are none."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] if ordered else float("nan")
