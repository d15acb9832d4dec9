"""Timing statistics: median and spread of repeated runs, the one place they are computed.

``Timing`` is what every profile reports: the median per-run latency, the interquartile range as
its spread, the 10th/90th percentiles, and how it was measured. ``summarize`` turns samples into
one; ``time_runs`` measures a callable; ``iqr`` is the spread of any list of figures.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import numpy as np

__all__ = ["Timing", "summarize", "time_runs", "iqr"]


@dataclass
class Timing:
    latency_ms: float
    latency_ms_spread: float       # interquartile range of the per-run latencies
    p10_ms: float
    p90_ms: float
    repeats: int
    warmup: int
    threads: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def iqr(values: Sequence[float]) -> float:
    q1, q3 = np.percentile(values, [25, 75])
    return float(q3 - q1)


def summarize(samples_ms: Sequence[float], *, warmup: int, threads: int) -> Timing:
    """Median, interquartile spread and 10th/90th percentiles of per-run latencies (ms)."""
    q = np.percentile(samples_ms, [10, 25, 75, 90])
    return Timing(latency_ms=float(statistics.median(samples_ms)), latency_ms_spread=float(q[2] - q[1]),
                  p10_ms=float(q[0]), p90_ms=float(q[3]), repeats=len(samples_ms), warmup=warmup, threads=threads)


def time_runs(run: Callable[[], Any], *, repeats: int, warmup: int, threads: int,
              progress: Callable[[int], None] | None = None) -> Timing:
    """Warm up, then time ``repeats`` runs with ``time.perf_counter``."""
    for _ in range(warmup):
        run()
    samples = []
    for i in range(repeats):
        t0 = time.perf_counter()
        run()
        samples.append((time.perf_counter() - t0) * 1e3)
        if progress:
            progress(i)
    return summarize(samples, warmup=warmup, threads=threads)
