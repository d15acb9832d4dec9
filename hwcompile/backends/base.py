"""The backend registry, and a target opened with its backend and checked against its capabilities.

The interface itself (``Backend``, ``Artifact``, ``Profile``, ``Capabilities``, ``QDQStyle``,
``BackendSettings``) lives in ``hwcompile.contract`` and is re-exported here. Backends are found
through the ``hwcompile.backends`` entry-point group, so a third party can add one by installing
a package.
"""
from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import entry_points

from ..contract import (Artifact, Backend, BackendSettings, Capabilities, Feeds, Profile, QDQStyle, Runner,
                        Timing, time_runs)
from ..errors import ConfigError
from ..targets import Target, load_target

__all__ = ["QDQStyle", "Artifact", "Timing", "Profile", "Backend", "BackendSettings", "Capabilities", "Runner",
           "Feeds", "get_backend", "backend_names", "time_runs", "OpenTarget", "open_target", "check_target"]

_BUILTIN = {"onnxruntime": ("onnxruntime", "OnnxRuntimeBackend"), "tensorrt": ("tensorrt", "TensorRTBackend"),
            "tvm": ("tvm", "TVMBackend")}


def backend_names() -> list[str]:
    return sorted({ep.name for ep in entry_points(group="hwcompile.backends")} | set(_BUILTIN))


def get_backend(name: str) -> Backend:
    for ep in entry_points(group="hwcompile.backends"):
        if ep.name == name:
            return ep.load()()
    if name in _BUILTIN:  # running from a source tree without an installed entry point
        import importlib

        mod, cls = _BUILTIN[name]
        return getattr(importlib.import_module(f"hwcompile.backends.{mod}"), cls)()
    raise ConfigError(f"unknown backend {name!r}", where="target.backend", hint=f"installed: {backend_names()}")


@dataclass(frozen=True)
class OpenTarget:
    """A loaded target, its backend and what that backend can do for it."""

    target: Target
    backend: Backend
    capabilities: Capabilities


def check_target(target: Target, caps: Capabilities) -> None:
    """ConfigError naming the file and field when the target lists what its backend cannot do."""
    where = target.path or target.name
    extra = [p for p in target.precisions if p not in caps.precisions]
    if extra:
        raise ConfigError(f"the {caps.backend} backend offers no precision {extra}", where=f"{where} precisions",
                          hint=f"it offers {list(caps.precisions)}")
    extra = [s for s in target.sparsity if s != "dense" and s not in caps.sparsity]
    if extra:
        raise ConfigError(f"the {caps.backend} backend cannot lower sparsity {extra}", where=f"{where} sparsity",
                          hint=f"it lowers {['dense', *caps.sparsity]}")


def open_target(name_or_path: str | Target) -> OpenTarget:
    """Load a target (a name or a ``.toml`` path), its backend, its checked settings and capabilities."""
    target = name_or_path if isinstance(name_or_path, Target) else load_target(name_or_path)
    backend = get_backend(target.backend)
    caps = backend.capabilities(target)
    check_target(target, caps)
    return OpenTarget(target, backend, caps)
