"""Versions of hwcompile and every tool a build used: part of every report and cache key."""
from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version

__all__ = ["tool_versions"]

_PACKAGES = ("onnx", "onnx-ir", "onnxruntime", "numpy", "scipy")


def tool_versions(backend=None) -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in _PACKAGES:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    if backend is not None:
        out.update(backend.versions())
    return out
