"""Built artifacts in the content-addressed cache: a search's builds are not rebuilt by a later compile.

A build is a deterministic function of the float graph, the plan, the backend's Q/DQ style, the
calibration data, the target (its fingerprint: settings, tool versions, CPU) and the hwcompile
version; the key is the sha256 of those (``hwcompile.cache.content_key``). A hit copies the
artifact's files into the requested folder. The mixed-precision search keeps only the artifact;
the final build of a compile also needs the compiled graph (the report reads its ops and what the
passes recorded in ``meta``), so its entry also holds the graph (``graph.onnx``, our exporter's
bytes, re-imported without normalizing) and its ``meta`` as JSON; a build whose ``meta`` does not
round-trip through JSON is not cached.
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


def build_key(graph, plan, style, calib, backend, target, with_graph: bool = False) -> str | None:
    """The key, or None when no cache is live (outside a compile, or ``--no-cache``)."""
    if not enabled():
        return None
    from .version import __version__
    from .ir import to_bytes

    g = _digest(graph, lambda: hashlib.sha256(to_bytes(graph)).hexdigest())
    c = None if calib is None else _digest(calib, lambda: array_digest(calib.inputs))
    plan_data = {k: v for k, v in plan.to_dict().items() if k != "notes"}
    return content_key("hwcompile.build/1", __version__, backend.name, target.fingerprint(backend.versions()), g, c,
                       plan_data, dataclasses.asdict(style), with_graph)


def _folder(key: str) -> Path:
    return kind_dir("builds") / key[:2] / key


def load_build(key: str | None, out_dir: Path, backend: str, target: str, with_graph: bool = False):
    """(compiled graph or None, the cached artifact copied into ``out_dir``), or None on a miss."""
    if not key or not enabled():
        return None
    src = _folder(key)
    try:
        meta = json.loads((src / "artifact.json").read_text())
        graph = _load_graph(src, meta["graph_meta"]) if with_graph else None
        out_dir.mkdir(parents=True, exist_ok=True)
        for name in meta["copied"]:
            shutil.copyfile(src / name, out_dir / name)
    except (OSError, ValueError, KeyError):
        return None
    return graph, Artifact(directory=out_dir, backend=backend, target=target, files=dict(meta["files"]),
                           info=dict(meta.get("info", {})))


def _load_graph(src: Path, meta: dict):
    import onnx

    from .contract import PrecisionPlan
    from .ir import from_proto

    g = from_proto(onnx.ModelProto.FromString((src / "graph.onnx").read_bytes()), normalize=False)
    g.meta.update({k: PrecisionPlan.from_dict(v["plan"]) if isinstance(v, dict) and set(v) == {"plan"} else v
                   for k, v in meta.items()})
    return g


def _graph_meta(graph) -> dict | None:
    from .contract import PrecisionPlan

    meta = {k: {"plan": v.to_dict()} if isinstance(v, PrecisionPlan) else v for k, v in graph.meta.items()}
    try:
        return meta if json.loads(json.dumps(meta)) == meta else None
    except (TypeError, ValueError):
        return None


def save_build(key: str | None, artifact: Artifact, graph=None) -> None:
    """Store ``artifact``'s files (and ``graph`` with its meta, when given) under ``key``, written in a
    temporary folder and renamed into place."""
    if not key or not enabled():
        return
    dest = _folder(key)
    if dest.exists():
        return
    graph_meta = _graph_meta(graph) if graph is not None else {}
    try:
        info = json.loads(json.dumps(artifact.info))
    except (TypeError, ValueError):
        return    # an artifact whose info is not plain data is not cached
    if graph_meta is None:
        return    # nor a compiled graph whose meta does not round-trip
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
        if graph is not None:
            from .ir import to_bytes

            (tmp / "graph.onnx").write_bytes(to_bytes(graph))
        (tmp / "artifact.json").write_text(json.dumps({"files": artifact.files, "info": info, "copied": names,
                                                       "graph_meta": graph_meta}))
        try:
            os.rename(tmp, dest)
        except OSError:     # another process stored the same build first
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError:
        pass
