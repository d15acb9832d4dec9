"""The cache root, content keys, the JSON/npz stores (atomic, two processes at once) and `hwcompile cache`."""
from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hwcompile import cache

ROOT = Path(__file__).resolve().parents[1]


def test_cache_root_env_rules(monkeypatch, tmp_path):
    monkeypatch.setenv("HWCOMPILE_CACHE_DIR", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_root() == tmp_path / "explicit"
    monkeypatch.setenv("HWCOMPILE_CACHE_DIR", "")              # empty counts as unset
    assert cache.cache_root() == tmp_path / "xdg" / "hwcompile"
    monkeypatch.delenv("XDG_CACHE_HOME")
    import platformdirs

    assert cache.cache_root() == Path(platformdirs.user_cache_dir("hwcompile", appauthor=False))
    monkeypatch.setenv("HWCOMPILE_CACHE_DIR", str(tmp_path / "explicit"))
    assert cache.kind_dir("tvm") == tmp_path / "explicit" / "tvm"
    with pytest.raises(ValueError):
        cache.kind_dir("../escape")


def test_the_backends_use_the_one_root(monkeypatch, tmp_path):
    from hwcompile.backends.tensorrt.settings import TensorRTSettings
    from hwcompile.backends.tvm.build import tuning_dir
    from hwcompile.targets import load_target

    monkeypatch.setenv("HWCOMPILE_CACHE_DIR", str(tmp_path))
    assert tuning_dir(load_target("x86-tvm"), {"tvm": "x"}).parent == tmp_path / "tvm"
    assert TensorRTSettings().timing_cache_path() == tmp_path / "tensorrt" / "timing.cache"


def test_content_key_is_canonical():
    a = cache.content_key({"b": 1, "a": [1.5, None, "x"]}, "v1")
    assert a == cache.content_key({"a": [1.5, None, "x"], "b": 1}, "v1")
    assert a != cache.content_key({"a": [1.5, None, "x"], "b": 2}, "v1")
    assert cache.content_key(0.1) != cache.content_key(0.30000000000000004 - 0.2)   # floats keyed exactly
    assert cache.content_key(np.float32(2.0)) == cache.content_key(2.0)
    with pytest.raises(TypeError):
        cache.content_key(object())
    x = np.arange(6, dtype=np.float32)
    assert cache.array_digest({"x": x}) != cache.array_digest({"x": x.reshape(2, 3)})   # the shape counts


def test_store_roundtrip_disable_and_corrupt_file(monkeypatch, tmp_path):
    monkeypatch.setenv("HWCOMPILE_CACHE_DIR", str(tmp_path))
    s = cache.Store("things")
    with cache.scope():
        s.put("ab12", {"x": [1, 2]})
        s.put_arrays("cd34", {"w": np.eye(3)})
        assert s.get("ab12") == {"x": [1, 2]} and np.array_equal(s.get_arrays("cd34")["w"], np.eye(3))
    for off in (cache.scope(False), contextlib.nullcontext()):     # --no-cache, and outside any compile
        with off:
            assert s.get("ab12") is None and s.get_arrays("cd34") is None
            s.put("ef56", {"y": 1})
    assert not s.path("ef56", "json").exists()
    s.path("ab12", "json").write_text("{trunc")
    with cache.scope():
        assert s.get("ab12") is None                                # a broken file reads as a miss
    assert not any(p.name.endswith(".tmp") for p in tmp_path.rglob("*"))


def _hammer(root: str, worker: int, n: int) -> None:
    os.environ["HWCOMPILE_CACHE_DIR"] = root
    s = cache.Store("race")
    with cache.scope():
        for i in range(n):
            s.put("same-key", {"worker": worker, "i": i, "pad": "x" * 20000})


def test_two_processes_writing_one_key(tmp_path):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_hammer, args=(str(tmp_path), w, 60)) for w in range(2)]
    for p in procs:
        p.start()
    s = cache.Store("race", root=tmp_path)
    with cache.scope():
        while any(p.is_alive() for p in procs):
            v = s.get("same-key")                 # never a half-written file: a miss or a whole value
            if v is not None:
                assert len(v["pad"]) == 20000
        for p in procs:
            p.join()
            assert p.exitcode == 0
        assert s.get("same-key")["i"] == 59
    assert [p.name for p in (tmp_path / "race").rglob("*") if p.is_file()] == ["same-key.json"]


def test_cache_cli_info_and_clear(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HWCOMPILE_CACHE_DIR": str(tmp_path)}
    run = lambda *a: subprocess.run([sys.executable, "-m", "hwcompile.cli", "cache", *a], capture_output=True,
                                    text=True, env=env, timeout=120)
    with cache.scope():
        cache.Store("timings", root=tmp_path).put("k1", {"a": 1})
        cache.Store("outputs", root=tmp_path).put_arrays("k2", {"o0": np.zeros(10)})
    info = json.loads(run("info", "--json").stdout)
    assert info["root"] == str(tmp_path) and set(info["kinds"]) == {"timings", "outputs"} and info["files"] == 2
    cleared = json.loads(run("clear", "--kind", "timings", "--json").stdout)
    assert set(cleared["removed"]) == {"timings"} and cleared["files"] == 1
    assert set(json.loads(run("info", "--json").stdout)["kinds"]) == {"outputs"}
    r = run("clear")
    assert r.returncode == 0 and "removed 1 file(s)" in r.stdout
    assert json.loads(run("info", "--json").stdout)["files"] == 0
