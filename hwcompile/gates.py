"""Release gates: fail a compile (exit code 3) on an accuracy drop, a slowdown or a size.

``--fail-if-accuracy-drop X``: the accuracy metric of the report (``top1``/``top5``/``spearman``:
X in points, 1.0 = one percentage point, as ``--max-accuracy-drop``; ``snr_db``: X is the allowed
relative RMS output error in percent, i.e. the compiled SNR must be >= -20 log10(X/100) dB).
``--fail-if-slower-than R``: compiled median latency / reference median latency > R, the
reference being this compile's FP32 baseline, or the compiled latency of ``--baseline
OLD/report.json`` (an earlier release). ``--fail-if-larger-than BYTES``: compiled artifact size.
Every gate is reported with its measured value, whether it passed or not.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError, HwcompileError

__all__ = ["Gates", "GateFailed", "check", "accuracy_drop"]


class GateFailed(HwcompileError):
    """A release gate failed (exit code 3); the output folder is still written."""

    exit_code = 3


@dataclass(frozen=True)
class Gates:
    fail_if_accuracy_drop: float | None = None
    fail_if_slower_than: float | None = None
    fail_if_larger_than: int | None = None
    baseline: str | Path | None = None      # OLD/report.json (or its folder) for --fail-if-slower-than

    def validate(self) -> None:
        for name in ("fail_if_accuracy_drop", "fail_if_slower_than", "fail_if_larger_than"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0 or not math.isfinite(v)):
                raise ConfigError(f"must be a number >= 0, got {v!r}", where=f"--{name.replace('_', '-')}")
        if self.fail_if_slower_than is not None and self.fail_if_slower_than <= 0:
            raise ConfigError("must be > 0", where="--fail-if-slower-than")
        if self.baseline is not None and not Path(self.baseline).exists():
            raise ConfigError("baseline report not found", where=f"--baseline {self.baseline}")

    @property
    def any(self) -> bool:
        return any(v is not None for v in (self.fail_if_accuracy_drop, self.fail_if_slower_than,
                                           self.fail_if_larger_than))


def accuracy_drop(metric: str, base: float | None, new: float | None) -> float | None:
    """The drop in the gate's units (module docstring): points, or the relative RMS error in % for snr_db."""
    if new is None:
        return None
    if metric == "snr_db":
        return 100.0 * 10 ** (-new / 20.0)
    return None if base is None else 100.0 * (base - new)


def check(gates: Gates, report: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per gate asked for: {gate, limit, value, passed, detail}."""
    rows = []
    compiled = report.get("compiled") or {}
    base = report.get("baseline") or {}
    if gates.fail_if_accuracy_drop is not None:
        metric = report.get("accuracy_metric") or next(
            (m for m in ("top1", "spearman", "top5", "snr_db") if m in compiled.get("metrics", {})), None)
        if metric is None:
            raise ConfigError("no accuracy was measured", where="--fail-if-accuracy-drop",
                              hint="give --eval data (with --labels for top1)")
        drop = accuracy_drop(metric, (base.get("metrics") or {}).get(metric), compiled.get("metrics", {}).get(metric))
        if drop is None:
            raise ConfigError(f"no FP32 {metric} to compare with", where="--fail-if-accuracy-drop")
        rows.append({"gate": "fail_if_accuracy_drop", "metric": metric, "limit": gates.fail_if_accuracy_drop,
                     "value": drop, "passed": drop <= gates.fail_if_accuracy_drop + 1e-12,
                     "detail": f"{metric} drop {drop:.3f} (limit {gates.fail_if_accuracy_drop})"})
    if gates.fail_if_slower_than is not None:
        if gates.baseline is not None:
            from .report.timings import read_report

            ref = (read_report(gates.baseline).get("compiled") or {}).get("latency_ms")
            what = f"the compiled latency of {gates.baseline}"
        else:
            ref, what = base.get("latency_ms"), "this compile's FP32 baseline"
        if not ref or compiled.get("latency_ms") is None:
            raise ConfigError(f"no reference latency ({what})", where="--fail-if-slower-than")
        ratio = compiled["latency_ms"] / ref
        rows.append({"gate": "fail_if_slower_than", "limit": gates.fail_if_slower_than, "value": ratio,
                     "reference_ms": ref, "passed": ratio <= gates.fail_if_slower_than,
                     "detail": f"{compiled['latency_ms']:.4g} ms = {ratio:.3f}x {what} ({ref:.4g} ms; "
                               f"limit {gates.fail_if_slower_than}x)"})
    if gates.fail_if_larger_than is not None:
        size = compiled.get("size_bytes")
        rows.append({"gate": "fail_if_larger_than", "limit": gates.fail_if_larger_than, "value": size,
                     "passed": size is not None and size <= gates.fail_if_larger_than,
                     "detail": f"{size:,} bytes (limit {int(gates.fail_if_larger_than):,})"})
    return rows
