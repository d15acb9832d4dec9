"""``manifest.json``: what an output folder was built from, and the sha256 of every file in it.

``inputs`` names each input with its sha256: the model and its external-data files, the
calibration and evaluation data, the effective configuration (``config.json``), the target file
and a pinned latency table; ``tools`` the versions of hwcompile and every tool the build used;
``target`` the target's name and fingerprint (device, settings, CPU model, tool versions).
``files`` maps every other file of the folder to its sha256. ``verify`` re-hashes them and, where
an input is still at its recorded path, says whether it changed.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..cache import array_digest, file_digest
from ..errors import ConfigError
from ..atomic import write_text_atomic

__all__ = ["FORMAT", "input_entry", "model_entry", "write_manifest", "verify"]

FORMAT = "hwcompile.manifest/1"


def input_entry(spec: Any) -> dict | None:
    """{path, sha256} of a file input, {source, sha256} of an in-memory Dataset, None when absent."""
    if spec is None:
        return None
    if hasattr(spec, "inputs"):   # a Dataset given through the API
        arrays = dict(spec.inputs)
        if getattr(spec, "labels", None) is not None:
            arrays["__labels__"] = spec.labels
        return {"source": getattr(spec, "source", "") or "<in memory>", "sha256": array_digest(arrays)}
    p = Path(spec)
    return {"path": str(p), "sha256": file_digest(p)} if p.is_file() else {"path": str(p), "sha256": None}


def model_entry(path: Path) -> dict:
    """The model file and every external-data file its initializers point to."""
    entry = input_entry(path) or {}
    try:
        import onnx

        proto = onnx.load(str(path), load_external_data=False)
        locations = sorted({kv.value for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL
                            for kv in t.external_data if kv.key == "location"})
    except Exception:  # the importer has already checked the model; a failure here only loses detail
        locations = []
    entry["external_data"] = {loc: file_digest(path.parent / loc) if (path.parent / loc).is_file() else None
                              for loc in locations}
    return entry


def write_manifest(out: Path, *, inputs: dict, tools: dict, target: dict) -> dict:
    files = {str(p.relative_to(out)): file_digest(p) for p in sorted(out.rglob("*"))
             if p.is_file() and p.name != "manifest.json"}
    manifest = {"format": FORMAT, "inputs": inputs, "tools": tools, "target": target, "files": files}
    write_text_atomic(out / "manifest.json", json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def verify(out: str | Path) -> dict:
    """Re-hash an output folder against its manifest: {ok, files: {name: ok|changed|missing},
    extra: [...], inputs: {name: same|changed|not found}}; ``ok`` covers the files only."""
    out = Path(out)
    from .timings import read_output_json

    path = out / "manifest.json"
    manifest = read_output_json(out, "manifest.json")
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise ConfigError("manifest.json has no 'files' table", where=str(path))
    files = {}
    for name, digest in sorted(manifest["files"].items()):
        p = out / name
        files[name] = "missing" if not p.is_file() else ("ok" if file_digest(p) == digest else "changed")
    present = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and p.name != "manifest.json"}
    extra = sorted(present - set(manifest["files"]))
    inputs = {}
    for name, entry in sorted((manifest.get("inputs") or {}).items()):
        if isinstance(entry, dict) and entry.get("path") and entry.get("sha256"):
            p = Path(entry["path"])
            inputs[name] = "not found" if not p.is_file() else ("same" if file_digest(p) == entry["sha256"]
                                                               else "changed")
    ok = all(v == "ok" for v in files.values()) and not extra
    return {"folder": str(out), "ok": ok, "files": files, "extra": extra, "inputs": inputs}
