"""The persisted tactic timing cache: loaded into a builder config before a build, saved after it.

TensorRT times candidate kernels (tactics) for every layer while building; the timing cache keeps
those timings so a later build of the same layers on the same GPU and TensorRT version skips the
measurements. A cache from another TensorRT version does not deserialize, and one from another GPU
is refused by ``set_timing_cache(..., ignore_mismatch=False)``: either is replaced by an empty
cache, and ``attach`` says which of "loaded", "new" or "dropped (...)" happened.
"""
from __future__ import annotations

import os
from pathlib import Path

from .files import write_bytes_atomic

__all__ = ["attach", "save"]


def attach(config, path: str | os.PathLike | None) -> str:
    """Give ``config`` the cache stored at ``path`` (or an empty one); returns what happened."""
    if path is None:
        return "off"
    cache_file = Path(path)
    blob = cache_file.read_bytes() if cache_file.is_file() else b""
    if blob:
        cache = config.create_timing_cache(blob)
        if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
            return "loaded"
        state = "dropped (another TensorRT version or GPU)"
    else:
        state = "new"
    config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
    return state


def save(config, path: str | os.PathLike | None) -> None:
    """Write the config's timing cache (the loaded one plus this build's timings) to ``path`` atomically."""
    if path is not None:
        write_bytes_atomic(path, memoryview(config.get_timing_cache().serialize()).tobytes())
