"""Built artifacts in the content-addressed cache: a search's builds are not rebuilt by a later compile.

A build is a deterministic function of the float graph, the plan, the backend's Q/DQ style, the
calibration data, the target (its fingerprint: settings, tool versions, CPU) and the hwcompile
version; the key is the sha256 of those (``hwcompile.cache.content_key``). A hit copies the
artifact's files into the requested folder. Only the mixed-precision search uses it (it discards
the compiled graph and keeps the artifact); the final build of a compile always runs the passes,
since the report reads what they recorded on the compiled graph.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import weakref
from pathlib import Path

from .contract import Artifact
from .cache import array_digest, content_key, enabled, kind_dir

__all__ = ["build_key", "load_build", "save_build"]

_DIGESTS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _digest(obj, compute) -> str:
    try:
        if obj not in _DIGESTS:
            _DIGESTS[obj] = compute()
        return _DIGESTS[obj]
    except TypeError:   # not weak-referenceable
        return compute()


def build_key(graph, plan, style, calib, backend, target) -> str | None:
    """The key, or None when no cache is live (outside a compile, or ``--no-cache``)."""
    if not enabled():
        return None
    from . import __version__
    from .ir import to_bytes

    g = _digest(graph, lambda: hashlib.sha256(to_bytes(graph)).hexdigest())
    c = None if calib is None else _digest(calib, lambda: array_digest(calib.inputs))
    plan_data = {k: v for k, v in plan.to_dict().items() if k != "notes"}
    return content_key("hwcompile.build/1", __version__, backend.name, target.fingerprint(backend.versions()), g, c,
                       plan_data, dataclasses.asdict(style))


def _folder(key: str) -> Path:
    return kind_dir("builds") / key[:2] / key


def load_build(key: str | None, out_dir: Path, backend: str, target: str) -> Artifact | None:
    """The cached artifact copied into ``out_dir``, or None."""
    if not key or not enabled():
        return None
    src = _folder(key)
    try:
        meta = json.loads((src / "artifact.json").read_text())
        out_dir.mkdir(parents=True, exist_ok=True)
        for name in meta["copied"]:
            shutil.copyfile(src / name, out_dir / name)
    except (OSError, ValueError, KeyError):
        return None
    return Artifact(directory=out_dir, backend=backend, target=target, files=dict(meta["files"]),
                    info=dict(meta.get("info", {})))


def save_build(key: str | None, artifact: Artifact) -> None:
    """Store ``artifact``'s files under ``key`` (written in a temporary folder, renamed into place)."""
    if not key or not enabled():
        return
    dest = _folder(key)
    if dest.exists():
        return
    try:
        info = json.loads(json.dumps(artifact.info))
    except (TypeError, ValueError):
        return    # an artifact whose info is not plain data is not cached
    names = []
    for name in artifact.files.values():
        names.append(name)
        if (artifact.directory / f"{name}.data").is_file():
            names.append(f"{name}.data")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=dest.parent))
        for name in names:
            shutil.copyfile(artifact.directory / name, tmp / name)
        (tmp / "artifact.json").write_text(json.dumps({"files": artifact.files, "info": info, "copied": names}))
        try:
            os.rename(tmp, dest)
        except OSError:     # another process stored the same build first
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError:
        pass
