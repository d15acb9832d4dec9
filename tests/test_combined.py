"""Prune then quantize in one plan: the N:M pattern survives INT8 rounding and GPTQ, and the
TensorRT-ready model passes the 2:4 rule."""
from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import numpy_helper
from typer.testing import CliRunner

from hwcompile.backends.tensorrt.rules import check_model
from hwcompile.cli import app
from hwcompile.prune.masks import check_nm, reduction_axis

runner = CliRunner()


def _int8_weights(model: onnx.ModelProto):
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    for n in model.graph.node:
        if n.op_type in ("Conv", "Gemm", "MatMul") and len(n.input) > 1 and n.input[1] in producers:
            dq = producers[n.input[1]]
            if dq.op_type == "DequantizeLinear" and dq.input[0] in inits:
                w = inits[dq.input[0]].astype(np.int16) - inits[dq.input[2]].astype(np.int16).reshape(
                    [-1] + [1] * (inits[dq.input[0]].ndim - 1))
                attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
                yield n.name, w, reduction_axis(n.op_type, w.shape, attrs)


def test_2_4_then_int8_gptq_keeps_pattern(tmp_path):
    for target in ("host-cpu", "nvidia-ampere"):
        out = tmp_path / target
        r = runner.invoke(app, ["compile", "--target", target, "--precision", "int8", "--sparsity", "2:4",
                                "--compensation", "gptq", "--out", str(out), "--repeats", "2"])
        assert r.exit_code == 0, r.output
        model = onnx.load(str(out / "model.onnx"))
        checked = 0
        rep = json.loads((out / "report.json").read_text())
        for name, w, axis in _int8_weights(model):
            if w.shape[axis] % 4 == 0 and w.shape[axis] > 1:
                if name in rep["layers"] and rep["layers"][name].get("sparsity") == "2:4" and \
                        not any(name in n for n in rep["notes"]):
                    assert check_nm(w, 2, 4, axis) == [], name
                    checked += 1
        assert checked >= 2
        assert rep["compiled"]["metrics"]["top1"] >= 0.9
        if target == "nvidia-ampere":
            assert check_model(model, sparsity="2:4") == []
