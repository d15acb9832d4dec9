"""End-to-end latency of a plan measured against the FP32 build, in alternating rounds.

The machine may be shared, so the plan and the FP32 reference are profiled alternately for
``rounds`` rounds; the plan's latency is the median per-round ratio plan/FP32 times the FP32
latency (the median of every FP32 round of the whole search). Load that comes and goes slows both
alike and cancels in the ratio; every measured point is on that one scale, refreshed as FP32
rounds accumulate.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ..contract import Artifact, Backend, iqr

__all__ = ["PairedTimer"]


class PairedTimer:
    """Times artifacts against ``reference`` (set once the FP32 build exists)."""

    def __init__(self, backend: Backend, target, feeds: Mapping[str, np.ndarray], *, rounds: int, repeats: int,
                 warmup: int):
        self.backend, self.target, self.feeds = backend, target, feeds
        self.rounds = max(1, rounds)
        self.repeats, self.warmup = max(1, repeats // self.rounds), max(1, warmup // self.rounds)
        self.reference: Artifact | None = None
        self.reference_rounds: list[float] = []    # the FP32 build's per-round medians over the whole search

    def _run(self, art: Artifact) -> float:
        return self.backend.profile(art, self.target, self.feeds, repeats=self.repeats, warmup=self.warmup,
                                    per_layer=False).timing.latency_ms

    def time(self, art: Artifact) -> dict[str, Any]:
        """``latency_ms_raw``, ``latency_ms_raw_spread``, ``ratio_to_fp32``, ``ratio_iqr``, ``rounds``."""
        ref, own, ratios = self.reference, [], []
        for _ in range(self.rounds):
            t = self._run(art)
            own.append(t)
            if ref is not None:
                r = t if art is ref else self._run(ref)
                self.reference_rounds.append(r)
                ratios.append(t / r)
        return {"latency_ms_raw": float(np.median(own)), "latency_ms_raw_spread": iqr(own),
                "ratio_to_fp32": float(np.median(ratios)) if ratios else None,
                "ratio_iqr": iqr(ratios) if ratios else None, "rounds": self.rounds}

    def reference_ms(self) -> float | None:
        return float(np.median(self.reference_rounds)) if self.reference_rounds else None
