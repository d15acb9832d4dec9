"""`debug` checked against the real build: agrees on a model with one layer made to break INT8, and
ranks by leave-one-out measurement on a model whose layers' errors cancel (noise does not add).
Both effects are built to be tens of dB, far beyond any CPU's rounding differences."""
from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

import hwcompile.ir as hir
from hwcompile.analysis.sensitivity import debug_report, layer_sensitivity
from hwcompile.analysis.verify import verify_ranking
from hwcompile.backends.base import get_backend
from hwcompile.cli import app
from hwcompile.data import Dataset
from hwcompile.passes import cleanup
from hwcompile.targets import load_target


def _mlp(nodes, inits, out_dim=8) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", out_dim])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def cancelling_model() -> onnx.ModelProto:
    """y = A x - A' x + B x with A' a copy of A (large) and B small: each A alone under INT8 is a
    large error, both together cancel exactly (same input Q/DQ, weights and output scale)."""
    rng = np.random.default_rng(0)
    a = (rng.standard_normal((16, 8)) * 3.0).astype(np.float32)
    b = (rng.standard_normal((16, 8)) * 0.05).astype(np.float32)
    inits = [numpy_helper.from_array(a, "wa"), numpy_helper.from_array(a.copy(), "wa2"), numpy_helper.from_array(b, "wb")]
    nodes = [helper.make_node("MatMul", ["x", "wa"], ["pa"], name="fc_a"),
             helper.make_node("MatMul", ["x", "wa2"], ["pa2"], name="fc_a_copy"),
             helper.make_node("MatMul", ["x", "wb"], ["pb"], name="fc_b"),
             helper.make_node("Sub", ["pa", "pa2"], ["d"], name="difference"),
             helper.make_node("Add", ["d", "pb"], ["y"], name="sum")]
    return _mlp(nodes, inits)


def breaking_model() -> onnx.ModelProto:
    """x (channel 0 carries +-1000 outliers) -> fc1 -> Relu -> fc2: a per-tensor INT8 scale on x
    rounds every other channel to zero, so fc1 breaks INT8; fc2 is harmless."""
    rng = np.random.default_rng(1)
    w1 = rng.standard_normal((16, 16)).astype(np.float32) * 0.3
    w1[0] = 1e-4  # the outlier channel barely matters to the output
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(rng.standard_normal((16, 8)).astype(np.float32) * 0.3, "w2")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2")]
    return _mlp(nodes, inits)


def _data(outliers: bool, n=48) -> Dataset:
    x = np.random.default_rng(2).standard_normal((n, 16)).astype(np.float32)
    if outliers:
        x[:, 0] = np.where(np.arange(n) % 2, 1000.0, -1000.0)
    return Dataset({"x": x}, source=f"verify-{outliers}")


def _setup(tmp_path, model):
    p = tmp_path / "m.onnx"
    onnx.save(model, p)
    t = load_target("host-cpu")
    return p, cleanup(hir.load(p)), t, get_backend(t.backend)


def test_noise_that_does_not_add_is_ranked_by_leave_one_out(tmp_path):
    _, g, t, be = _setup(tmp_path, cancelling_model())
    cal, cache = _data(False), {}
    table = layer_sensitivity(g, t, be, cal, candidates=["int8"], samples=32, cache=cache)
    assert table.ranked("int8")[0].layer in ("fc_a", "fc_a_copy")  # alone, an A branch looks worst
    v = verify_ranking(g, t, be, cal, table, "int8", samples=32, cache=cache)
    assert not v["agrees"] and v["measured_snr_db"] > v["predicted_snr_db"] + 20
    rep = debug_report(table, "int8", verified=v)
    assert rep["culprit"] == "fc_b" and rep["verified"]["ranking_by"] == "leave-one-out"
    loo = {r["layer"]: r["snr_db"] for r in v["leave_one_out"]}
    assert loo["fc_b"] > loo["fc_a"] + 20 and loo["fc_b"] > loo["fc_a_copy"] + 20
    assert "disagree" in rep["advice"] and "fc_b" in rep["advice"]


def test_one_breaking_layer_agrees_and_leaving_it_out_helps_most(tmp_path):
    _, g, t, be = _setup(tmp_path, breaking_model())
    cal, cache = _data(True), {}
    table = layer_sensitivity(g, t, be, cal, candidates=["int8"], samples=32, cache=cache)
    v = verify_ranking(g, t, be, cal, table, "int8", samples=32, cache=cache, always=True)
    assert v["agrees"] and v["ranking_by"] == "additive"
    rep = debug_report(table, "int8", verified=v)
    assert rep["culprit"] == "fc1" and "Measured" in rep["advice"]
    loo = {r["layer"]: r["gain_db"] for r in v["leave_one_out"]}
    assert loo["fc1"] > loo["fc2"] + 10  # the top-ranked layer's return to fp32 helps most, measured


def test_debug_cli_reports_the_measured_ranking(tmp_path):
    p, *_ = _setup(tmp_path, cancelling_model())
    c = tmp_path / "calib.npz"
    np.savez(c, x=_data(False).inputs["x"])
    r = CliRunner().invoke(app, ["debug", str(p), "--calib", str(c), "--json", "--samples", "32"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert rep["culprit"] == "fc_b" and rep["verified"]["ranking_by"] == "leave-one-out"
