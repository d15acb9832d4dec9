"""The onnxruntime backend keeps residual Adds out of SkipLayerNormalization where it measures slower."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import hwcompile.backends.ort_layernorm as ln
from hwcompile.backends.onnxruntime import OnnxRuntimeBackend
from hwcompile.ir import from_proto
from hwcompile.contract import PrecisionPlan
from hwcompile.targets import load_target

S, H = 16, 32


def block_model() -> onnx.ModelProto:
    """x -> MatMul -> Add(residual x) -> LayerNormalization -> y, plus an Add of a constant (bias) and
    an Add whose output has a second use: neither may be rewritten."""
    rng = np.random.default_rng(0)
    w = helper.make_tensor("w", TensorProto.FLOAT, [H, H], rng.standard_normal((H, H)).astype(np.float32) * 0.1)
    b = helper.make_tensor("b", TensorProto.FLOAT, [H], rng.standard_normal(H).astype(np.float32))
    g = helper.make_tensor("g", TensorProto.FLOAT, [H], np.ones(H, np.float32))
    beta = helper.make_tensor("beta", TensorProto.FLOAT, [H], np.zeros(H, np.float32))
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"),
             helper.make_node("Add", ["m", "b"], ["mb"], name="bias_add"),
             helper.make_node("Add", ["mb", "x"], ["r"], name="residual_add"),
             helper.make_node("LayerNormalization", ["r", "g", "beta"], ["y"], name="ln", axis=-1, epsilon=1e-5),
             helper.make_node("Add", ["y", "x"], ["r2"], name="shared_add"),
             helper.make_node("LayerNormalization", ["r2", "g", "beta"], ["y2"], name="ln2", axis=-1),
             helper.make_node("Mul", ["r2", "y2"], ["z"], name="mul")]
    vi = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, S, H])
    graph = helper.make_graph(nodes, "block", [vi("x")], [vi("z")], [w, b, g, beta],
                              value_info=[vi(n) for n in ("m", "mb", "r", "y", "r2", "y2")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _lower(tmp_path, monkeypatch, slower: bool, timed: list | None = None):
    def measured(fused, unfused, threads):
        if timed is not None:
            timed.append((fused, unfused))
        return slower, 3.0, 0.9

    monkeypatch.setattr(ln, "whole_model_fused_is_slower", measured)
    graph = from_proto(block_model())
    art = OnnxRuntimeBackend().lower(graph, PrecisionPlan.uniform("fp32"), load_target("host-cpu"), tmp_path / "a")
    return graph, art


def test_only_the_residual_add_into_layernorm_is_found():
    graph = from_proto(block_model())
    found = ln.residual_adds_into_layernorm(graph)
    assert [(a.name, s) for a, s in found] == [("residual_add", (1, S, H))]


@pytest.mark.parametrize("slower", [True, False])
def test_rewrite_follows_the_measurement_and_preserves_outputs(tmp_path, monkeypatch, slower):
    timed = []
    graph, art = _lower(tmp_path, monkeypatch, slower, timed)
    (fused, unfused), = timed       # one end-to-end comparison: the model with Add against the one with Sum
    op_of = lambda m: {n.name: n.op_type for n in onnx.load_from_string(m).graph.node}
    assert op_of(fused)["residual_add"] == "Add" and op_of(unfused)["residual_add"] == "Sum"
    assert {k: v for k, v in op_of(fused).items() if k != "residual_add"} == \
        {k: v for k, v in op_of(unfused).items() if k != "residual_add"}
    saved = onnx.load(art.path("model"))
    ops = {n.name: n.op_type for n in saved.graph.node}
    assert ops["residual_add"] == ("Sum" if slower else "Add")
    assert ops["bias_add"] == "Add" and ops["shared_add"] == "Add"
    assert graph.node("residual_add").op_type == "Add"          # the caller's graph is restored
    assert art.info["skip_layernorm"]["rewritten"] == int(slower)
    assert art.info["skip_layernorm"]["end_to_end"] == {"fused_ms": 3.0, "unfused_ms": 0.9}
    assert art.info["skip_layernorm"]["candidates"] == 1
    x = {"x": np.random.default_rng(1).standard_normal((1, S, H)).astype(np.float32)}
    ref = ort.InferenceSession(block_model().SerializeToString(), providers=["CPUExecutionProvider"]).run(None, x)[0]
    out = OnnxRuntimeBackend().load(art, load_target("host-cpu"))(x)[0]
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_onnxruntime_fuses_add_but_not_sum(tmp_path):
    # The premise of the rewrite, checked on the installed onnxruntime: Add + LayerNormalization becomes
    # SkipLayerNormalization, Sum + LayerNormalization does not.
    for op, fused in (("Add", True), ("Sum", False)):
        so = ort.SessionOptions()
        so.optimized_model_filepath = str(tmp_path / f"{op}.onnx")
        ort.InferenceSession(ln._model(op, (1, S, H)), so, providers=["CPUExecutionProvider"])
        types = {n.op_type for n in onnx.load(tmp_path / f"{op}.onnx").graph.node}
        assert ("SkipLayerNormalization" in types) == fused, (op, types)


def test_measurement_returns_both_timings():
    slower, fused, unfused = ln.skip_layernorm_is_slower((1, S, H), 1, rounds=2, runs=5)
    assert isinstance(slower, bool) and fused > 0 and unfused > 0
    assert slower == (fused > ln.SLOWER_BY * unfused)



def test_whole_model_measurement_compares_the_two_models():
    fused = block_model().SerializeToString()
    m = block_model()
    next(n for n in m.graph.node if n.name == "residual_add").op_type = "Sum"
    slower, f, u = ln.whole_model_fused_is_slower(fused, m.SerializeToString(), 1, rounds=2, runs=3)
    assert f > 0 and u > 0 and slower == (f > u)
