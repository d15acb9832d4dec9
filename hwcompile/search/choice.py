"""What the search must meet and which measured plan it returns.

Objective: with ``--max-accuracy-drop``, or without any budget, minimize latency under an
accuracy floor (and any budgets); with only ``--latency-budget`` / ``--size-budget``, minimize
output noise under the budgets. The drop is in points of the metric for top1/top5 (1.0 = one
percentage point) and, for the snr metric, a relative RMS output error in percent, i.e. the floor
``SNR >= -20 log10(drop / 100)`` (1 % -> 40 dB). Default without budgets: top1/top5 drop <= 1 point
when the evaluation data has labels, else output SNR >= 30 dB.

The MILP predicts SNR, not top1, so a top1 drop is mapped to an SNR floor calibrated on measured
builds, assuming top1 does not fall as SNR rises: 0.5 dB above the highest measured SNR of any
build that broke the drop, or, while none did, the lowest measured SNR of the builds that kept it.

Choice: the best measured plan meeting every constraint and at least ``min_plan_gain`` faster than
the FP32 build (a plan within measurement noise of FP32 is not worth its risk); FP32, with the
reason, if none is.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import ConfigError
from .points import Point

__all__ = ["Criteria", "DEFAULT_TOP1_DROP", "DEFAULT_MIN_SNR_DB"]

DEFAULT_TOP1_DROP = 1.0     # points of top1/top5 when labels exist
DEFAULT_MIN_SNR_DB = 30.0   # otherwise
_MARGIN_DB = 0.5


@dataclass(frozen=True)
class Criteria:
    metric: str                       # 'top1' | 'top5' | 'spearman' | 'snr_db'
    objective: str                    # 'latency' | 'damage'
    drop: float | None                # allowed drop in points of the metric (labelled metrics)
    snr_floor: float                  # dB, for the snr metric
    latency_budget_ms: float | None
    size_budget_bytes: float | None
    min_plan_gain: float

    @classmethod
    def from_options(cls, options, metric: str, min_plan_gain: float) -> "Criteria":
        lat = getattr(options, "latency_budget_ms", None)
        size_mb = getattr(options, "size_budget_mb", None)
        size = None if size_mb is None else size_mb * 1e6
        drop = getattr(options, "max_accuracy_drop", None)
        if drop is not None and drop < 0:
            raise ConfigError("the allowed accuracy drop must be >= 0", where="--max-accuracy-drop")
        objective = "latency" if drop is not None or (lat is None and size is None) else "damage"
        floor = (DEFAULT_MIN_SNR_DB if drop is None else
                 (200.0 if drop <= 0 else min(200.0, -20.0 * math.log10(drop / 100.0))))
        return cls(metric=metric, objective=objective,
                   drop=drop if drop is not None else (DEFAULT_TOP1_DROP if metric != "snr_db" else None),
                   snr_floor=floor, latency_budget_ms=lat, size_budget_bytes=size, min_plan_gain=min_plan_gain)

    @property
    def accuracy_constrained(self) -> bool:
        return self.objective == "latency"

    def accuracy_ok(self, p: Point, fp32: Point | None) -> bool:
        if self.metric == "snr_db":
            return p.metrics.get("snr_db", 200.0) >= self.snr_floor - 1e-9
        base = fp32.metrics.get(self.metric) if fp32 else None
        val = p.metrics.get(self.metric)
        return base is None or val is None or 100.0 * (base - val) <= self.drop + 1e-9

    def budget_ok(self, p: Point) -> bool:
        return (self.latency_budget_ms is None or p.latency_ms <= self.latency_budget_ms) and \
               (self.size_budget_bytes is None or p.size_bytes <= self.size_budget_bytes)

    def snr_floor_db(self, points: list[Point], fp32: Point | None) -> float | None:
        """The SNR floor the solver must keep (module docstring), or None without an accuracy constraint."""
        if not self.accuracy_constrained:
            return None
        if self.metric == "snr_db":
            return self.snr_floor
        bad = [p.metrics["snr_db"] for p in points if not self.accuracy_ok(p, fp32)]
        good = [p.metrics["snr_db"] for p in points if self.accuracy_ok(p, fp32)]
        if bad:
            return min(200.0, max(bad) + _MARGIN_DB)
        return min(good) if good else None

    def best(self, points: list[Point], fp32: Point | None) -> tuple[Point | None, str | None]:
        """(best valid point, why FP32 was chosen instead) - module docstring."""
        if fp32 is None:
            return None, "FP32 was not measured"
        limit = fp32.latency_ms * (1.0 - self.min_plan_gain)
        ok_acc = [p for p in points if (p is fp32 or p.latency_ms <= limit)
                  and (not self.accuracy_constrained or self.accuracy_ok(p, fp32))]
        valid = [p for p in ok_acc if self.budget_ok(p)]
        if self.objective == "latency":
            key = lambda p: (p.latency_ms, -p.metrics.get("snr_db", 200.0))
        else:
            key = lambda p: (-p.metrics.get(self.metric, 0.0), -p.metrics.get("snr_db", 200.0), p.latency_ms)
        if valid:
            best = min(valid, key=key)
            near = [p for p in points if p is not fp32 and limit < p.latency_ms < fp32.latency_ms and self.budget_ok(p)]
            if best is fp32 and near:
                return fp32, (f"{len(near)} measured plan(s) beat FP32 by less than "
                              f"{100 * self.min_plan_gain:.0f} %, within measurement noise")
            return best, None
        if ok_acc and min(ok_acc, key=lambda p: p.latency_ms) is not fp32:
            p = min(ok_acc, key=lambda p: p.latency_ms)
            return p, "no measured plan met the budget; chose the fastest one that keeps the accuracy"
        return fp32, (f"no measured plan was {100 * self.min_plan_gain:.0f} % faster than FP32 "
                      "while meeting every constraint")
