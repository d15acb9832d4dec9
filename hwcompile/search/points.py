"""Measured points of the mixed-precision search: one built and measured plan each."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Point", "summary"]


@dataclass
class Point:
    """A plan the search built and measured: its assignment, metrics, size and latency.

    ``latency_ms``/``latency_ms_spread`` are on the FP32 reference's scale (``ratio_to_fp32`` times
    the FP32 latency, see ``search.timing``); ``latency_ms_raw`` is the plan's own median."""

    source: str                               # 'uniform:<candidate>', 'iteration 2', 'sweep 1', ...
    assignment: dict[str, str]                # layer id -> candidate name
    metrics: dict[str, float]
    size_bytes: int
    latency_ms_raw: float
    latency_ms_raw_spread: float
    rounds: int
    ratio_to_fp32: float | None = None
    ratio_iqr: float | None = None
    latency_ms: float = 0.0
    latency_ms_spread: float = 0.0
    name: str | None = None                   # the candidate of a uniform point
    predicted: dict[str, Any] | None = None   # the solver's prediction, made before measuring
    mixed_points_in_fit: int = 0              # mixed plans the corrections had seen when it was predicted
    latency_ms_at_measurement: float | None = None

    @property
    def uniform(self) -> bool:
        return self.source.startswith("uniform:")

    def rescale(self, ref_ms: float | None) -> None:
        """Put ``latency_ms`` on the FP32 reference's current scale (its own median without one)."""
        if self.ratio_to_fp32 is None or ref_ms is None:
            self.latency_ms, self.latency_ms_spread = self.latency_ms_raw, self.latency_ms_raw_spread
        else:
            self.latency_ms, self.latency_ms_spread = self.ratio_to_fp32 * ref_ms, self.ratio_iqr * ref_ms

    def record(self) -> dict[str, Any]:
        """What reports show of a measured plan."""
        out = {"source": self.source, "latency_ms": self.latency_ms, "latency_ms_spread": self.latency_ms_spread,
               "latency_ms_raw": self.latency_ms_raw, "ratio_to_fp32": self.ratio_to_fp32,
               "size_bytes": self.size_bytes, "metrics": self.metrics, "plan_summary": summary(self.assignment),
               "assignment": dict(self.assignment)}
        if self.predicted is not None:
            out["predicted_latency_ms"] = self.predicted["predicted_latency_ms"]
        return out


def summary(assignment: dict[str, str]) -> dict[str, int]:
    """Candidate name -> number of layers taking it."""
    out: dict[str, int] = {}
    for c in assignment.values():
        out[c] = out.get(c, 0) + 1
    return dict(sorted(out.items()))
