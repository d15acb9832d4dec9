"""A device that fails mid-search (a hung run, a board gone): a failed uniform candidate is left out
and the search goes on with the measurements it has; when the device keeps failing the compile
stops cleanly with the DeviceError (exit 2), writes no output, and keeps the best plan found so far
beside --out (``out.search-progress.json``)."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from hwcompile.backends.onnxruntime import OnnxRuntimeBackend
from hwcompile.data import Dataset
from hwcompile.errors import RunTimeout
from hwcompile.pipeline import CompileOptions, compile_model

from test_mixed import mlp_model


@pytest.mark.parametrize("fail_at", [12, 20])
def test_device_fault_mid_search_keeps_the_best_plan(tmp_path, monkeypatch, fail_at):
    monkeypatch.setenv("HWCOMPILE_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "mlp.onnx"
    onnx.save(mlp_model(), path)
    x = np.random.default_rng(3).standard_normal((64, 64)).astype(np.float32)
    labels = ort.InferenceSession(str(path)).run(None, {"x": x})[0].argmax(1)
    calls = {"n": 0}
    real = OnnxRuntimeBackend.profile

    def flaky(self, artifact, *a, **k):
        calls["n"] += 1
        if calls["n"] >= fail_at:
            raise RunTimeout("a run took longer than 600 s and was stopped", where=str(artifact.path("model")))
        return real(self, artifact, *a, **k)

    monkeypatch.setattr(OnnxRuntimeBackend, "profile", flaky)
    out = tmp_path / "out"
    with pytest.raises(RunTimeout, match="longer than"):
        compile_model(path, "host-cpu", out, CompileOptions(
            precision="mixed", calib=Dataset({"x": x[:32]}, source="calib"),
            eval=Dataset({"x": x[32:]}, labels=labels[32:], source="eval"), repeats=3, warmup=1))
    assert calls["n"] >= fail_at  # a failed candidate may be skipped; the search stops when the device keeps failing
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    progress = json.loads((tmp_path / "out.search-progress.json").read_text())
    assert progress["format"] == "hwcompile.search-progress/1"
    assert progress["plan"]["default"]  # the best plan so far (stage "done": the failure came after the search)
