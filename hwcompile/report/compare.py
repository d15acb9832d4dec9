"""``hwcompile compare OLD NEW``: what changed between two output folders, and whether it regressed.

Compared: the plan (layers whose choice changed, counts per choice), every accuracy metric both
measured, the compiled median latency with its spread (IQR) and the artifact size. A
**regression** is, each with a tolerance: accuracy lower by more than ``max_accuracy_drop``
(points for top1/top5/spearman, dB for snr_db); latency slower by more than ``max_slowdown``
(relative) *and* by more than the larger of the two IQRs (a difference the spread cannot tell from
noise is not one); size larger by more than ``max_size_growth`` (relative).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .timings import read_output_json, read_report

__all__ = ["Tolerances", "compare"]


@dataclass(frozen=True)
class Tolerances:
    max_accuracy_drop: float = 0.0     # points (top1/top5/spearman) or dB (snr_db)
    max_slowdown: float = 0.05         # relative
    max_size_growth: float = 0.0       # relative


def _plan(folder: Path) -> dict[str, str]:
    from ..plan import PrecisionPlan

    plan = PrecisionPlan.from_dict(read_output_json(folder, "plan.json"))
    return {lid: c.candidate for lid, c in plan.layers.items()}


def compare(old: str | Path, new: str | Path, tol: Tolerances = Tolerances()) -> dict[str, Any]:
    """{plan, metrics, latency, size, regressions: [...], ok} (module docstring)."""
    old, new = Path(old), Path(new)
    a, b = read_report(old), read_report(new)
    pa, pb = _plan(old), _plan(new)
    changed = {lid: {"old": pa.get(lid, a.get("precision")), "new": pb.get(lid, b.get("precision"))}
               for lid in sorted(set(pa) | set(pb)) if pa.get(lid) != pb.get(lid)}
    count = lambda p: {c: list(p.values()).count(c) for c in sorted(set(p.values()))}
    out: dict[str, Any] = {"old": str(old), "new": str(new),
                           "plan": {"old_precision": a.get("precision"), "new_precision": b.get("precision"),
                                    "old_counts": count(pa), "new_counts": count(pb), "changed_layers": changed},
                           "metrics": {}, "regressions": []}
    ma, mb = (a.get("compiled") or {}).get("metrics") or {}, (b.get("compiled") or {}).get("metrics") or {}
    for k in sorted(set(ma) & set(mb)):
        scale = 1.0 if k == "snr_db" else 100.0
        delta = (mb[k] - ma[k]) * scale
        out["metrics"][k] = {"old": ma[k], "new": mb[k], "change": delta, "unit": "dB" if k == "snr_db" else "points"}
        if -delta > tol.max_accuracy_drop + 1e-12:
            out["regressions"].append(f"{k} fell by {-delta:.3f} {'dB' if k == 'snr_db' else 'points'} "
                                      f"(tolerance {tol.max_accuracy_drop})")
    ca, cb = a.get("compiled") or {}, b.get("compiled") or {}
    if ca.get("latency_ms") and cb.get("latency_ms"):
        ratio = cb["latency_ms"] / ca["latency_ms"]
        noise = max(ca.get("latency_ms_spread") or 0.0, cb.get("latency_ms_spread") or 0.0)
        out["latency"] = {"old_ms": ca["latency_ms"], "old_iqr_ms": ca.get("latency_ms_spread"),
                          "new_ms": cb["latency_ms"], "new_iqr_ms": cb.get("latency_ms_spread"), "ratio": ratio}
        if ratio > 1.0 + tol.max_slowdown and cb["latency_ms"] - ca["latency_ms"] > noise:
            out["regressions"].append(f"latency {ca['latency_ms']:.4g} -> {cb['latency_ms']:.4g} ms ({ratio:.3f}x, "
                                      f"beyond the {100 * tol.max_slowdown:.0f} % tolerance and the IQR {noise:.3g} ms)")
    if ca.get("size_bytes") and cb.get("size_bytes"):
        growth = cb["size_bytes"] / ca["size_bytes"] - 1.0
        out["size"] = {"old_bytes": ca["size_bytes"], "new_bytes": cb["size_bytes"], "growth": growth}
        if growth > tol.max_size_growth + 1e-12:
            out["regressions"].append(f"size {ca['size_bytes']:,} -> {cb['size_bytes']:,} bytes (+{100 * growth:.1f} %)")
    out["ok"] = not out["regressions"]
    return out
