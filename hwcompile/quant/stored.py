"""Calibration statistics in the content-addressed cache (``hwcompile.cache``), as ``.npz``.

The key is what the statistics depend on: the float graph's serialized bytes, the calibration
samples used (their digest, after the ``limit``), the histogram bins, whether Hessians are
collected (GPTQ), the hwcompile and onnxruntime versions and the CPU that ran the activations.
The observer settings are not part of it: every observer reads the same statistics.
Histograms, channel means and Hessians are arrays; the per-tensor scalars are one JSON string
stored as a 0-d unicode array (loaded with ``allow_pickle=False``).
"""
from __future__ import annotations

import json

import numpy as np

from ..cache import Store, array_digest, content_key, enabled

__all__ = ["calibration_key", "load_calibration", "save_calibration"]

_FORMAT = "hwcompile.calibration/1"


def calibration_key(graph, data, settings, limit: int | None) -> str | None:
    """The cache key, or None when no cache is live (outside a compile, or ``--no-cache``)."""
    if not enabled():
        return None
    import hashlib
    import platform
    from importlib.metadata import version

    from ..version import __version__
    from ..ir import to_bytes
    from ..targets import cpu_model

    sample = data.take(limit) if limit is not None else data
    tools = {p: version(p) for p in ("onnxruntime", "onnx", "numpy")}
    return content_key(_FORMAT, __version__, tools, platform.machine(), cpu_model(),
                       hashlib.sha256(to_bytes(graph)).hexdigest(), array_digest(sample.inputs),
                       settings.histogram_bins, settings.compensation == "gptq", limit)


def save_calibration(key: str, cal) -> None:
    names = sorted(cal.stats)
    meta = {"format": _FORMAT, "tensors": [
        {"name": n, "bins": s.bins, "count": s.count, "min": s.min, "max": s.max, "exponent": s.exponent}
        for n, s in ((n, cal.stats[n]) for n in names)],
        "means": sorted(cal.channel_means), "hessians": sorted(cal.hessians)}
    arrays = {"meta": np.array(json.dumps(meta))}
    arrays.update({f"h{i}": cal.stats[n].hist for i, n in enumerate(names)})
    arrays.update({f"m{i}": cal.channel_means[n] for i, n in enumerate(meta["means"])})
    arrays.update({f"H{i}": cal.hessians[n] for i, n in enumerate(meta["hessians"])})
    Store("calibration").put_arrays(key, arrays)


def load_calibration(key: str):
    """(stats, channel means, Hessians) stored under ``key``, or None (a miss, or a file of another format)."""
    from .observers import TensorStats

    z = Store("calibration").get_arrays(key)
    if z is None or "meta" not in z:
        return None
    try:
        meta = json.loads(str(z["meta"]))
        if meta.get("format") != _FORMAT:
            return None
        stats = {t["name"]: TensorStats(bins=t["bins"], name=t["name"], count=t["count"], min=t["min"], max=t["max"],
                                        exponent=t["exponent"], hist=z[f"h{i}"])
                 for i, t in enumerate(meta["tensors"])}
        means = {n: z[f"m{i}"] for i, n in enumerate(meta["means"])}
        hessians = {n: z[f"H{i}"] for i, n in enumerate(meta["hessians"])}
    except (KeyError, ValueError, TypeError):
        return None
    return stats, means, hessians
