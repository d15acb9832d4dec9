"""The TensorRT path on a machine without TensorRT or a GPU: the TensorRT-ready ONNX is written,
passes every rule, matches a fake-quant reference in onnxruntime, and the report says why no
engine was built."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper
from typer.testing import CliRunner

from hwcompile.backends.tensorrt.engine import tensorrt_status
from hwcompile.backends.tensorrt.rules import check_model
from hwcompile.cli import app

runner = CliRunner()


def _compile(tmp_path, *extra):
    out = tmp_path / "trt"
    r = runner.invoke(app, ["compile", "--target", "nvidia-ampere", "--precision", "int8", "--out", str(out),
                            "--repeats", "3", *extra])
    assert r.exit_code == 0, r.output
    return out, r


def test_int8_for_ampere_without_gpu(tmp_path):
    out, r = _compile(tmp_path)
    ok, why = tensorrt_status()
    rep = json.loads((out / "report.json").read_text())
    model = onnx.load(str(out / "model.onnx"))
    assert check_model(model) == []
    ops = {n.op_type for n in model.graph.node}
    assert "QuantizeLinear" in ops and not any(o.startswith("QLinear") or o.endswith("Integer") for o in ops)
    golden = np.load(out / "golden.npz")
    assert any(k.startswith("input:") for k in golden.files) and any(k.startswith("output:") for k in golden.files)
    if not ok:
        assert rep["artifact"]["engine_built"] is False and rep["artifact"]["engine_reason"] == why
        assert any("no engine was built" in n for n in rep["notes"])
        assert "no engine was built" in r.output
        assert not (out / "model.plan").exists()
    assert rep["compiled"]["metrics"]["top1"] >= 0.95


def test_trt_ready_numerics_match_fake_quant_reference(tmp_path):
    out, _ = _compile(tmp_path)
    model = onnx.load(str(out / "model.onnx"))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for n in model.graph.node:  # symmetric: every zero point is 0, weights are int8
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2:
            assert not inits[n.input[2]].any() and inits[n.input[2]].dtype == np.int8
    golden = np.load(out / "golden.npz")
    feeds = {k.split(":", 1)[1]: golden[k] for k in golden.files if k.startswith("input:")}
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # Q/DQ exactly as written
    ref = ort.InferenceSession(str(out / "model.onnx"), so, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    got = golden[[k for k in golden.files if k.startswith("output:")][0]]
    assert np.allclose(got, ref, atol=1e-5 * np.abs(ref).max())
