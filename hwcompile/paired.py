"""Paired speed-up of a build against its FP32 baseline, with the uncertainty of the rounds.

The two runners alternate round by round (order flipped every round), each round timing a few
calls of each and keeping their medians, so drift on the machine (another process, frequency
changes) hits both sides of a round alike. The speed-up of a round is ``baseline / build``; the
result is the median over rounds with a bootstrap 95 % interval of that median (fixed seed), and
``resolved``: "faster" / "slower" when the interval excludes 1, else "tie". A ratio of two
separately measured medians has no such interval: identical builds measured apart differed by
up to 1.8x on a loaded host.
"""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import numpy as np

__all__ = ["paired_speedup", "slower_note"]


def paired_speedup(run_baseline: Callable[[], Any], run_build: Callable[[], Any], *, rounds: int = 10,
                   runs: int = 5, warmup: int = 3, resamples: int = 2000) -> dict:
    for _ in range(warmup):
        run_baseline()
        run_build()
    base, build = [], []
    for r in range(rounds):
        pair = ((base, run_baseline), (build, run_build))
        for out, fn in (pair if r % 2 == 0 else pair[::-1]):
            xs = []
            for _ in range(runs):
                t0 = time.perf_counter()
                fn()
                xs.append((time.perf_counter() - t0) * 1e3)
            out.append(statistics.median(xs))
    return speedup_from_rounds(base, build, resamples=resamples)


def speedup_from_rounds(base: list[float], build: list[float], *, resamples: int = 2000) -> dict:
    """Median per-round ``base/build`` with a bootstrap 95 % interval (see the module docstring)."""
    r = np.asarray(base, dtype=float) / np.asarray(build, dtype=float)
    rng = np.random.default_rng(0)
    meds = np.median(r[rng.integers(0, len(r), size=(resamples, len(r)))], axis=1)
    lo, hi = (float(x) for x in np.percentile(meds, [2.5, 97.5]))
    return {"speedup_median": float(np.median(r)), "ci95": [lo, hi], "rounds": len(r),
            "resolved": "faster" if lo > 1.0 else ("slower" if hi < 1.0 else "tie")}


def slower_note(paired: dict, precision: str) -> str | None:
    """The warning for a build that measured slower than FP32 (None when it did not)."""
    if paired.get("resolved") != "slower":
        return None
    lo, hi = paired["ci95"]
    return (f"the {precision} build is SLOWER than FP32 on this target: speed-up {paired['speedup_median']:.2f}x "
            f"(95 % interval {lo:.2f}-{hi:.2f}x over {paired['rounds']} paired rounds); try --precision mixed, "
            "which keeps a layer in a format only where it measures faster")
