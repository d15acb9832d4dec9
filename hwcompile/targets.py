"""Targets: device profiles as data (``targets/*.toml``), one file per device.

A target names its backend, the precisions and sparsity patterns it supports, and backend
settings (onnxruntime session options, TVM target JSON and RPC key, TensorRT compute capability).
Adding a device is adding a file. ``--target`` takes a name from the bundled folder (or from
``$HWCOMPILE_TARGETS``) or a path to a ``.toml`` file.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .contract.capabilities import sparsity_family
from .contract.plan import CANDIDATES, QuantSettings
from .errors import ConfigError

__all__ = ["Target", "load_target", "list_targets", "targets_dirs", "cpu_model"]

_REQUIRED = ("name", "backend")


@dataclass(frozen=True)
class Target:
    name: str
    backend: str
    description: str = ""
    precisions: tuple[str, ...] = ("fp32",)
    sparsity: tuple[str, ...] = ("dense",)
    settings: dict[str, Any] = field(default_factory=dict)
    quant: dict[str, Any] = field(default_factory=dict)   # the device's defaults for QuantSettings fields
    path: str = ""

    def supports_precision(self, precision: str) -> bool:
        return precision in self.precisions or precision in ("mixed",)

    def supports_sparsity(self, sparsity: str) -> bool:
        return sparsity == "dense" or sparsity_family(sparsity) in self.sparsity

    def fingerprint(self, tool_versions: dict[str, str]) -> str:
        """A content hash of the device, its settings and the tools: the key of latency caches."""
        data = {
            "target": self.name, "backend": self.backend, "settings": self.settings,
            "tools": tool_versions, "machine": platform.machine(), "cpu": cpu_model(),
            "cores": os.cpu_count(),
        }
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def targets_dirs() -> list[Path]:
    dirs = []
    env = os.environ.get("HWCOMPILE_TARGETS")
    if env:
        dirs.extend(Path(p) for p in env.split(os.pathsep) if p)
    here = Path(__file__).resolve().parent
    dirs.extend([here / "targets", here.parent / "targets"])
    seen, out = set(), []
    for d in dirs:
        r = d.resolve()
        if r not in seen and r.is_dir():
            seen.add(r)
            out.append(r)
    return out


def list_targets() -> list[Target]:
    found: dict[str, Target] = {}
    for d in targets_dirs():
        for f in sorted(d.glob("*.toml")):
            t = _read(f)
            found.setdefault(t.name, t)
    return sorted(found.values(), key=lambda t: t.name)


def load_target(name_or_path: str) -> Target:
    p = Path(name_or_path)
    if p.suffix == ".toml" or os.sep in name_or_path:
        if not p.is_file():
            raise ConfigError("target file not found", where=str(p))
        return _read(p)
    for t in list_targets():
        if t.name == name_or_path:
            return t
    names = ", ".join(t.name for t in list_targets())
    raise ConfigError(f"unknown target {name_or_path!r}", where="--target", hint=f"known targets: {names}")


def _read(path: Path) -> Target:
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"invalid TOML: {e}", where=str(path)) from None
    for key in _REQUIRED:
        if not isinstance(data.get(key), str) or not data[key]:
            raise ConfigError(f"missing or empty key '{key}'", where=f"{path}")
    settings = data.get("backend_settings", {})
    if not isinstance(settings, dict):
        raise ConfigError("'backend_settings' must be a table", where=f"{path}")
    quant = data.get("quant", {})
    if not isinstance(quant, dict):
        raise ConfigError("'quant' must be a table", where=f"{path}")
    _check_quant(quant, path)
    _check_list(data, "precisions", path, allowed=tuple(CANDIDATES))
    _check_list(data, "sparsity", path, allowed=("dense", "2:4", "N:M", "unstructured", "channels"))
    known = {"name", "backend", "description", "precisions", "sparsity", "backend_settings", "quant"}
    extra = set(data) - known
    if extra:
        raise ConfigError(f"unknown keys {sorted(extra)}", where=str(path), hint=f"allowed: {sorted(known)}")
    return Target(name=data["name"], backend=data["backend"], description=data.get("description", ""),
                  precisions=tuple(data.get("precisions", ["fp32"])), sparsity=tuple(data.get("sparsity", ["dense"])),
                  settings=settings, quant=quant, path=str(path))


def _check_list(data: dict, key: str, path: Path, allowed: tuple[str, ...]) -> None:
    """``key`` is absent or a list of strings from ``allowed``."""
    value = data.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError("must be a list of strings", where=f"{path} {key}")
    unknown = [v for v in value if v not in allowed]
    if unknown:
        raise ConfigError(f"unknown {key} {unknown}", where=f"{path} {key}", hint=f"known: {list(allowed)}")


def _check_quant(quant: dict[str, Any], path: Path) -> None:
    """``[quant]`` holds QuantSettings fields with valid values (checked by building one)."""
    import dataclasses

    fields = {f.name for f in dataclasses.fields(QuantSettings)}
    unknown = sorted(set(quant) - fields)
    if unknown:
        raise ConfigError(f"unknown keys {unknown}", where=f"{path} [quant]", hint=f"allowed: {sorted(fields)}")
    try:
        QuantSettings(**quant)
    except ConfigError as e:
        raise ConfigError(e.message, where=f"{path} [quant].{e.where}") from None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
