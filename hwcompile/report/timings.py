"""The report's measured times live apart from the rest, so ``report.json`` is reproducible.

``report.json`` is a function of the inputs, the configuration, the tool versions, the target
and the latency table (``latency.json``): the same inputs give the same bytes. What the final
measurement of the baseline and the compiled build found (end-to-end latency and its spread,
per-layer and per-kernel times, the speed-up) and how long the compile took go to
``timings.json``. ``split`` separates a full report, ``merge`` puts an output folder's two
files back together (what ``compare`` and the gates read).
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

__all__ = ["FORMAT", "split", "merge", "read_report", "read_output_json"]

FORMAT = "hwcompile.timings/1"
_RUN_KEYS = ("latency_ms", "latency_ms_spread", "timing")
_TOP_KEYS = ("speedup", "speedup_paired", "slower_than_fp32", "unmapped_kernels_ms", "kernels", "seconds",
             "measurements", "baseline_layers_ms", "gates")


def split(report: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(report without measured times, the times) from a full report (module docstring)."""
    stable = copy.deepcopy(report)
    times: dict[str, Any] = {"format": FORMAT}
    for run in ("baseline", "compiled"):
        part = stable.get(run)
        if isinstance(part, dict):
            times[run] = {k: part.pop(k) for k in _RUN_KEYS if k in part}
    for k in _TOP_KEYS:
        if k in stable:
            times[k] = stable.pop(k)
    layers = {}
    for lid, entry in (stable.get("layers") or {}).items():
        if isinstance(entry, dict) and "latency_ms" in entry:
            layers[lid] = entry.pop("latency_ms")
    times["layers_ms"] = layers
    return stable, times


def merge(stable: dict[str, Any], times: dict[str, Any] | None) -> dict[str, Any]:
    """The full report again (``split``'s inverse)."""
    full = copy.deepcopy(stable)
    if not times:
        return full
    for run in ("baseline", "compiled"):
        if isinstance(full.get(run), dict):
            full[run].update(times.get(run) or {})
    for k in _TOP_KEYS:
        if k in times:
            full[k] = times[k]
    for lid, ms in (times.get("layers_ms") or {}).items():
        full.setdefault("layers", {}).setdefault(lid, {"op": "?", "params": 0, "flops": 0})["latency_ms"] = ms
    return full


def read_report(path: str | Path) -> dict[str, Any]:
    """The full report of an output folder (or of a ``report.json`` path with ``timings.json`` beside it)."""
    p = Path(path)
    folder = p if p.is_dir() else p.parent
    stable = read_output_json(folder, "report.json" if p.is_dir() else p.name)
    times = read_output_json(folder, "timings.json") if (folder / "timings.json").is_file() else None
    return merge(stable, times)


def read_output_json(folder: Path, name: str) -> Any:
    """``folder/name`` parsed; a ConfigError saying the folder is not an hwcompile output when it is missing."""
    from ..errors import ConfigError

    p = Path(folder) / name
    try:
        return json.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"no {name}: not an hwcompile output folder", where=str(folder)) from None
    except (OSError, ValueError) as e:
        raise ConfigError(f"not valid JSON: {e}", where=str(p)) from None
