"""``[backend_settings]`` of a TensorRT target, parsed closed and typed.

Every key is a field of ``TensorRTSettings``; an unknown key, a value of the wrong type (``"false"``
for a boolean, ``2.5`` for an integer) or out of range is refused with a ConfigError naming the
target file and the field. ``compute_capabilities`` is enforced when an engine is built: the
GPU's capability must be listed (an engine only runs on the GPU generation that built it).
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...contract import BackendSettings
from ...errors import ConfigError
from ...targets import Target

__all__ = ["TensorRTSettings", "Shape", "ShapeProfile"]

Shape = tuple[int, ...]
ShapeProfile = tuple[Shape, Shape, Shape]   # (min, opt, max)

_CAPABILITY = re.compile(r"^\d+\.\d+$")


@dataclass(frozen=True)
class TensorRTSettings(BackendSettings):
    """What the engine build is told; defaults are TensorRT's own where it has one."""

    compute_capabilities: tuple[str, ...] = ()   # e.g. ("8.0", "8.6"); empty: any GPU
    workspace_mb: int = 2048                     # builder workspace memory pool (MiB)
    sparse_weights: bool = True                  # BuilderFlag.SPARSE_WEIGHTS where the plan made layers 2:4
    timing_cache: str | None = "timing.cache"    # file name under <cache root>/tensorrt; None: no cache
    max_batch: int = 1                           # a dynamic batch axis gets the profile (1, 1, max_batch)
    profiles: dict[str, ShapeProfile] = field(default_factory=dict)  # input -> (min, opt, max) shapes

    @classmethod
    def from_target(cls, target: Target) -> "TensorRTSettings":
        s: dict[str, Any] = dict(target.settings)
        where = f"{target.path or target.name} [backend_settings]"
        known = [f.name for f in dataclasses.fields(cls)]
        extra = sorted(set(s) - set(known))
        if extra:
            raise ConfigError(f"unknown TensorRT settings {extra}", where=where, hint=f"allowed: {known}")
        out: dict[str, Any] = {}
        if "compute_capabilities" in s:
            caps = s["compute_capabilities"]
            if not isinstance(caps, list) or not all(isinstance(c, str) and _CAPABILITY.match(c) for c in caps):
                raise ConfigError(f"must be a list of \"major.minor\" strings such as [\"8.0\", \"8.6\"], got {caps!r}",
                                  where=f"{where} compute_capabilities")
            out["compute_capabilities"] = tuple(caps)
        for key, low in (("workspace_mb", 1), ("max_batch", 1)):
            if key in s:
                v = s[key]
                if isinstance(v, bool) or not isinstance(v, int) or v < low:
                    raise ConfigError(f"must be an integer >= {low}, got {v!r}", where=f"{where} {key}")
                out[key] = v
        if "sparse_weights" in s:
            if not isinstance(s["sparse_weights"], bool):
                raise ConfigError(f"must be true or false, got {s['sparse_weights']!r}",
                                  where=f"{where} sparse_weights")
            out["sparse_weights"] = s["sparse_weights"]
        if "timing_cache" in s:
            name = s["timing_cache"]
            if name is not False and (not isinstance(name, str) or not name or name != Path(name).name
                                      or name in (".", "..")):
                raise ConfigError(f"must be a plain file name (or false for no cache), got {name!r}",
                                  where=f"{where} timing_cache")
            out["timing_cache"] = name or None
        if "profiles" in s:
            out["profiles"] = _profiles(s["profiles"], f"{where} profiles")
        return cls(**out)

    def timing_cache_path(self) -> Path | None:
        """``<cache root>/tensorrt/<timing_cache>`` (``hwcompile.cache.kind_dir``), or None without a cache."""
        if not self.timing_cache:
            return None
        from ...cache import kind_dir

        return kind_dir("tensorrt") / self.timing_cache

    def check_gpu(self, capability: str) -> str | None:
        """Why an engine must not be built on a GPU of ``capability`` for this target, or None."""
        if self.compute_capabilities and capability not in self.compute_capabilities:
            return (f"the GPU has compute capability {capability}, not one of this target's "
                    f"compute_capabilities {list(self.compute_capabilities)}")
        return None


def _profiles(value: Any, where: str) -> dict[str, ShapeProfile]:
    if not isinstance(value, dict):
        raise ConfigError(f"must be a table of input = [[min], [opt], [max]], got {value!r}", where=where)
    out = {}
    for name, shapes in value.items():
        ok = (isinstance(shapes, list) and len(shapes) == 3 and all(
            isinstance(s, list) and s and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in s)
            for s in shapes))
        if not ok:
            raise ConfigError(f"must be three shapes [[min], [opt], [max]] of positive integers, got {shapes!r}",
                              where=f"{where}.{name}")
        out[name] = tuple(tuple(s) for s in shapes)
    return out  # type: ignore[return-value]
