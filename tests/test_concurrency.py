"""Two compiles at once (same model, different folders, one shared HWCOMPILE_CACHE_DIR) give what one
compile at a time gives: the same deployable model and plan, and a cache whose every entry is
complete and readable."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _compile(out: Path, cache: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "hwcompile.cli", "compile", "--out", str(out), "--precision", "int8",
           "--repeats", "3"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HWCOMPILE_CACHE_DIR": str(cache)}
    return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait(p: subprocess.Popen) -> None:
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err


def _result(out: Path) -> dict:
    return {"model": hashlib.sha256((out / "model.onnx").read_bytes()).hexdigest(),
            "plan": json.loads((out / "plan.json").read_text())}


def _cache_entries(cache: Path) -> dict[str, bytes]:
    entries = {}
    for p in sorted(cache.rglob("*")):
        if not p.is_file():
            continue
        assert not p.name.endswith(".tmp") and not p.name.startswith("."), f"leftover temporary file {p}"
        if p.suffix == ".json":
            json.loads(p.read_text())
        elif p.suffix == ".npz":
            with np.load(p, allow_pickle=False) as z:
                [z[k] for k in z.files]
        entries[str(p.relative_to(cache))] = p.read_bytes()
    return entries


def test_two_compiles_at_once_match_one_at_a_time(tmp_path):
    _wait(_compile(tmp_path / "alone", tmp_path / "cache-alone"))
    shared = tmp_path / "cache-shared"
    a, b = _compile(tmp_path / "a", shared), _compile(tmp_path / "b", shared)
    _wait(a)
    _wait(b)
    alone = _result(tmp_path / "alone")
    assert _result(tmp_path / "a") == alone and _result(tmp_path / "b") == alone
    one, two = _cache_entries(tmp_path / "cache-alone"), _cache_entries(shared)
    assert set(one) == set(two)
    # then a third compile reading the shared cache written by both gives the same again
    _wait(_compile(tmp_path / "c", shared))
    assert _result(tmp_path / "c") == alone
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
