"""Sensitivity tables in the content-addressed cache (``hwcompile.cache``), as JSON.

The key is what the table depends on: the float graph's bytes, the scored calibration samples
(their digest), the candidates asked for, the quantization settings, the backend and the
target's fingerprint (device, settings, CPU, the backend's tool versions), the onnxruntime
version and the hwcompile version.
"""
from __future__ import annotations

import dataclasses

from ..cache import Store, array_digest, content_key, enabled

__all__ = ["sensitivity_key", "load_sensitivity", "save_sensitivity"]

_FORMAT = "hwcompile.sensitivity/1"


def sensitivity_key(graph, target, backend, data, candidates, quant) -> str | None:
    """The cache key, or None when no cache is live (outside a compile, or ``--no-cache``)."""
    if not enabled():
        return None
    import hashlib
    from importlib.metadata import version

    from ..version import __version__
    from ..ir import to_bytes

    return content_key(_FORMAT, __version__, version("onnxruntime"), backend.name,
                       target.fingerprint(backend.versions()), hashlib.sha256(to_bytes(graph)).hexdigest(),
                       array_digest(data.inputs), sorted(candidates) if candidates else None,
                       dataclasses.asdict(quant) if quant is not None else None)


def save_sensitivity(key: str | None, table) -> None:
    if key:
        Store("sensitivity").put(key, {"format": _FORMAT, **table.to_dict()})


def load_sensitivity(key: str | None) -> dict | None:
    """The stored table as its ``to_dict()`` (rows, samples, candidates, skipped), or None."""
    d = Store("sensitivity").get(key) if key else None
    if not isinstance(d, dict) or d.get("format") != _FORMAT or not isinstance(d.get("rows"), list):
        return None
    return d
