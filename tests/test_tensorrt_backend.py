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

from hwcompile.backends.tensorrt.runtime import tensorrt_status
from hwcompile.backends.tensorrt.reference import compare, fake_quant_reference
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
    """onnxruntime on the TensorRT-ready ONNX vs the numpy reference (onnx.reference + hand-written Q/DQ)."""
    out, _ = _compile(tmp_path)
    model = onnx.load(str(out / "model.onnx"))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for n in model.graph.node:  # symmetric: every zero point is 0, weights are int8
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2:
            assert not inits[n.input[2]].any() and inits[n.input[2]].dtype == np.int8
    golden = np.load(out / "golden.npz")
    feeds = {k.split(":", 1)[1]: golden[k] for k in golden.files if k.startswith("input:")}
    got = [golden[k] for k in golden.files if k.startswith("output:")]
    ref = fake_quant_reference(model, feeds)
    err = compare(got, ref)
    assert err["max_rel_err"] < 1e-4, err

    # the comparison can fail: the same model with one activation scale doubled is far off
    q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] in feeds)
    scale = next(t for t in model.graph.initializer if t.name == q.input[1])
    scale.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(scale) * 2, scale.name))
    assert compare(got, fake_quant_reference(model, feeds))["max_rel_err"] > 1e-2


def test_reference_quantization_is_round_half_even_and_saturating():
    from onnx import TensorProto, helper

    x = np.array([0.25, 0.75, 1.25, -0.25, -0.75, 1000.0, -1000.0, 0.3], np.float32)
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8])],
                          initializer=[numpy_helper.from_array(np.float32(0.5), "s"),
                                       numpy_helper.from_array(np.int8(0), "z")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    (y,) = fake_quant_reference(m, {"x": x})
    # x / s = 0.5, 1.5, 2.5, -0.5, -1.5, 2000, -2000, 0.6 -> 0, 2, 2, 0, -2, 127, -128, 1
    np.testing.assert_array_equal(y, np.array([0, 2, 2, 0, -2, 127, -128, 1], np.float32) * 0.5)
    (y_ort,) = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    np.testing.assert_array_equal(y, y_ort)


def test_reference_per_channel_and_block_wise_weights():
    from onnx import TensorProto, helper

    w = np.arange(-8, 8, dtype=np.int8).reshape(4, 4)
    s_ch = np.array([1.0, 0.5, 0.25, 2.0], np.float32)
    s_blk = np.array([[1.0, 2.0, 3.0, 4.0], [0.5, 0.25, 0.125, 1.0]], np.float32)  # blocks of 2 along axis 0
    nodes = [helper.make_node("DequantizeLinear", ["w", "s_ch"], ["a"], axis=1),
             helper.make_node("DequantizeLinear", ["w4", "s_blk", "z4"], ["b"], axis=0, block_size=2)]
    g = helper.make_graph(nodes, "g", [], [helper.make_tensor_value_info("a", TensorProto.FLOAT, [4, 4]),
                                          helper.make_tensor_value_info("b", TensorProto.FLOAT, [4, 4])],
                          initializer=[numpy_helper.from_array(w, "w"), numpy_helper.from_array(s_ch, "s_ch"),
                                       helper.make_tensor("w4", TensorProto.INT4, [4, 4], (w // 2).flatten().tolist()),
                                       numpy_helper.from_array(s_blk, "s_blk"),
                                       helper.make_tensor("z4", TensorProto.INT4, [2, 4], [0] * 8)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
    a, b = fake_quant_reference(m, {})
    np.testing.assert_array_equal(a, w.astype(np.float32) * s_ch[None, :])
    np.testing.assert_array_equal(b, (w // 2).astype(np.float32) * np.repeat(s_blk, 2, axis=0))


def test_int8_2_4_for_ampere_checks_the_pruned_layers_only(tmp_path):
    """The backend checks 2:4 on the layers the pruning pass pruned (declined ones stay dense: TensorRT's
    SPARSE_WEIGHTS uses dense kernels there) and says which they are; each is 2:4 along its reduction axis."""
    from hwcompile.backends.tensorrt.rules import _weight_axes, nm_violations

    out, r = _compile(tmp_path, "--sparsity", "2:4")
    info = json.loads((out / "tensorrt.json").read_text())
    model = onnx.load(str(out / "model.onnx"))
    sparse = set(info["sparse_layers"])
    assert sparse
    # the stem conv (one input channel) was declined by the pruning pass: dense, said why, no error
    assert info["dense_despite_plan"] == {"/stem/stem.0/stem.0.0/Conv":
                                          "reduction axis 1 has length 1, not a multiple of 4"}
    assert not sparse & set(info["dense_despite_plan"])
    assert check_model(model, sparsity="2:4", sparse_nodes=sparse) == []
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    checked = 0
    for n in model.graph.node:
        if n.name in sparse:
            w = inits[producer[n.input[1]].input[0]]  # int8 initializer -> DequantizeLinear -> op
            assert w.dtype == np.int8
            assert nm_violations(w, _weight_axes(n, w.ndim)[1])[0] == 0
            assert (w == 0).mean() >= 0.5
            checked += 1
    assert checked == len(sparse)
