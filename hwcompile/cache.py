"""Content-addressed caches under one root: the key is what a result depends on, never a name.

``cache_root()`` is ``$HWCOMPILE_CACHE_DIR`` (an empty value counts as unset), else
``$XDG_CACHE_HOME/hwcompile``, else the platform's user cache directory (``platformdirs``:
``~/.cache/hwcompile`` on Linux, ``~/Library/Caches/hwcompile`` on macOS, ``%LOCALAPPDATA%``
on Windows). Every kind of result has its own folder (``kind_dir``): ``calibration``,
``sensitivity``, ``timings``, ``outputs``, ``latency``, and the backends' own (``tvm`` tuning
records, ``tensorrt`` timing caches).

``content_key(...)`` is the sha256 of a canonical JSON (sorted keys, no whitespace, floats as
``repr``) of everything a result depends on: input hashes, settings, tool versions, the target
fingerprint and the hwcompile version. ``Store`` keeps JSON or ``.npz`` values (never pickle) at
``<root>/<kind>/<key[:2]>/<key>.<ext>``. Writes go to a temporary file in the same folder and are
renamed into place, so two processes writing the same key both leave a complete file (the last
rename wins, and both wrote the same content); an unreadable file reads as a miss.

Stores are live only inside ``scope()``: a compile opens one (``scope(False)`` for ``--no-cache``),
so library calls outside a compile (tests, ``debug``, benchmarks calling passes directly) never
read a result cached by another run. Outside a scope, or in ``scope(False)``, a store misses every
read and writes nothing. (Backends' own folders from ``kind_dir`` are not affected.)
"""
from __future__ import annotations

import contextlib
import contextvars
import hashlib
import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

__all__ = ["cache_root", "kind_dir", "content_key", "array_digest", "file_digest", "Store", "enabled",
           "scope", "info", "clear"]

_ENABLED: contextvars.ContextVar[bool] = contextvars.ContextVar("hwcompile_cache_enabled", default=False)


def cache_root() -> Path:
    """The cache root (module docstring): ``$HWCOMPILE_CACHE_DIR``, ``$XDG_CACHE_HOME/hwcompile`` or the
    platform's user cache directory."""
    env = os.environ.get("HWCOMPILE_CACHE_DIR", "").strip()
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    if xdg:
        return Path(xdg).expanduser() / "hwcompile"
    import platformdirs

    return Path(platformdirs.user_cache_dir("hwcompile", appauthor=False))


def kind_dir(kind: str) -> Path:
    """``<cache root>/<kind>``: where one kind of result (or a backend's own cache files) lives."""
    if not kind or "/" in kind or kind.startswith("."):
        raise ValueError(f"bad cache kind {kind!r}")
    return cache_root() / kind


def enabled() -> bool:
    """True inside ``scope()`` (module docstring)."""
    return _ENABLED.get()


@contextlib.contextmanager
def scope(on: bool = True) -> Iterator[None]:
    """Within the block stores read and write when ``on``, and miss and write nothing otherwise."""
    token = _ENABLED.set(bool(on))
    try:
        yield
    finally:
        _ENABLED.reset(token)


def _canonical(o: Any):
    if isinstance(o, Mapping):
        return {str(k): _canonical(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_canonical(v) for v in o]
    if isinstance(o, (set, frozenset)):
        return sorted(_canonical(v) for v in o)
    if isinstance(o, float):
        return repr(o)           # exact, and nan/inf are valid keys
    if isinstance(o, np.generic):
        return _canonical(o.item())
    if isinstance(o, Path):
        return str(o)
    if o is None or isinstance(o, (bool, int, str)):
        return o
    raise TypeError(f"cannot key on {type(o).__name__}")


def content_key(*parts: Any) -> str:
    """sha256 (hex) of the canonical JSON of ``parts``."""
    text = json.dumps(_canonical(list(parts)), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def array_digest(arrays: Mapping[str, np.ndarray]) -> str:
    """sha256 of named arrays: names, dtypes, shapes and bytes."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def file_digest(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class Store:
    """One kind of cached result: ``get``/``put`` JSON, ``get_arrays``/``put_arrays`` npz (no pickle)."""

    def __init__(self, kind: str, root: Path | None = None):
        self.kind = kind
        self.dir = (Path(root) / kind) if root is not None else kind_dir(kind)

    def path(self, key: str, ext: str) -> Path:
        return self.dir / key[:2] / f"{key}.{ext}"

    def get(self, key: str) -> Any | None:
        if not enabled():
            return None
        try:
            return json.loads(self.path(key, "json").read_text())
        except (OSError, ValueError):
            return None

    def put(self, key: str, value: Any) -> None:
        if enabled():
            self._write(self.path(key, "json"), (json.dumps(value, default=_plain) + "\n").encode())

    def get_arrays(self, key: str) -> dict[str, np.ndarray] | None:
        if not enabled():
            return None
        try:
            with np.load(self.path(key, "npz"), allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except (OSError, ValueError, KeyError, EOFError):
            return None

    def put_arrays(self, key: str, arrays: Mapping[str, np.ndarray]) -> None:
        if enabled():
            buf = io.BytesIO()
            np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
            self._write(self.path(key, "npz"), buf.getvalue())

    def _write(self, path: Path, data: bytes) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except OSError:  # a read-only or full cache must not fail the compile
            pass


def _plain(o: Any):
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"not JSON: {type(o).__name__}")


def info() -> dict:
    """The root and, per kind folder, how many files and bytes it holds."""
    root = cache_root()
    kinds = {}
    if root.is_dir():
        for d in sorted(p for p in root.iterdir() if p.is_dir()):
            files = [p for p in d.rglob("*") if p.is_file()]
            kinds[d.name] = {"files": len(files), "bytes": sum(p.stat().st_size for p in files)}
    return {"root": str(root), "kinds": kinds, "files": sum(k["files"] for k in kinds.values()),
            "bytes": sum(k["bytes"] for k in kinds.values())}


def clear(kind: str | None = None) -> dict:
    """Remove one kind's folder (or every folder under the root); returns what was removed."""
    before = info()
    root = cache_root()
    targets = [kind_dir(kind)] if kind else ([p for p in root.iterdir() if p.is_dir()] if root.is_dir() else [])
    for d in targets:
        shutil.rmtree(d, ignore_errors=True)
    removed = {k: v for k, v in before["kinds"].items() if kind is None or k == kind}
    return {"root": str(root), "removed": removed, "files": sum(v["files"] for v in removed.values()),
            "bytes": sum(v["bytes"] for v in removed.values())}
