"""Quantization passes: placement (integer kernels in onnxruntime), numerics against an
independent numpy fake-quant reference and onnx's reference evaluator, dynamic, INT4, FP16."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import hwcompile.ir as hir
from hwcompile.backends.base import QDQStyle
from hwcompile.backends.onnxruntime import OnnxRuntimeBackend
from hwcompile.targets import load_target
from hwcompile.data import Dataset
from hwcompile.passes import cleanup
from hwcompile.passes.quantize import quantize
from hwcompile.passes.quantize_int4 import int4_blockwise
from hwcompile.contract import LayerChoice, PrecisionPlan, QuantSettings
from hwcompile.quant.qparams import QParams, fake_quant
from hwcompile.passes.plan import apply_plan

from conftest import conv_bn_model, session

ORT_STYLE = OnnxRuntimeBackend().qdq_style(load_target("host-cpu"))
TRT_STYLE = QDQStyle(activation_dtype="int8", symmetric_activations=True, quantize_bias=False,
                     allow_dynamic=False, allow_contrib_ops=False)


def mlp_model(seed=0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.standard_normal((16, 32)).astype(np.float32) * 0.3, "w1"),
             numpy_helper.from_array(rng.standard_normal(32).astype(np.float32) * 0.1, "b1"),
             numpy_helper.from_array(rng.standard_normal((32, 8)).astype(np.float32) * 0.3, "w2")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
             helper.make_node("Add", ["h", "b1"], ["hb"], name="bias1"),
             helper.make_node("Relu", ["hb"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2")]
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _graph(tmp_path, model):
    p = tmp_path / "m.onnx"
    onnx.save(model, p)
    return p, cleanup(hir.load(p))


def _calib(shape, n=64, seed=1):
    return Dataset({"x": np.random.default_rng(seed).standard_normal((n,) + shape).astype(np.float32)}, source=f"r{seed}")


def _optimized_ops(model: onnx.ModelProto, tmp_path) -> list[str]:
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    so.log_severity_level = 3
    ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node]


def _const(model: onnx.ModelProto, name: str) -> np.ndarray:
    return next(numpy_helper.to_array(t) for t in model.graph.initializer if t.name == name)


def test_static_int8_conv_runs_integer_kernels(tmp_path):
    m = conv_bn_model()
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    m.graph.output[0].type.tensor_type.shape.dim[0].dim_param = "N"
    _, g = _graph(tmp_path, m)
    q = quantize(g, PrecisionPlan.uniform("int8"), ORT_STYLE, _calib((3, 8, 8)))
    q.lint()
    proto = hir.to_proto(q)
    ops = _optimized_ops(proto, tmp_path)
    assert ops.count("QLinearConv") == 2 and "Conv" not in ops and "FusedConv" not in ops
    assert "Relu" not in [n.op_type for n in proto.graph.node]  # absorbed: zero point 0 saturates


def test_static_int8_matches_numpy_fake_quant(tmp_path):
    _, g = _graph(tmp_path, mlp_model())
    calib = _calib((16,))
    plan = PrecisionPlan.uniform("int8", compensation="none")
    q = hir.to_proto(quantize(g, plan, ORT_STYLE, calib))
    x = _calib((16,), n=32, seed=7).inputs["x"]
    out = session(q).run(None, {"x": x})[0]
    # independent reference: numpy fake-quant with the scales the pass chose
    w1, w2, b1 = _const(mlp_model(), "w1"), _const(mlp_model(), "w2"), _const(mlp_model(), "b1")
    sx, zx = _const(q, "x_scale"), _const(q, "x_zero_point")
    # the calibration range of x is min..max of the calibration data (minmax observer)
    lo, hi = min(calib.inputs["x"].min(), 0), max(calib.inputs["x"].max(), 0)
    assert np.isclose(sx, (hi - lo) / 255, rtol=1e-6)
    fq = lambda v, t: fake_quant(v, QParams(_const(q, f"{t}_scale"), _const(q, f"{t}_zero_point").astype(np.int64),
                                         8, False))
    wq = lambda w: fake_quant(w, QParams(np.abs(w).max(0) / 127, np.zeros(w.shape[1], np.int64), 8, True, 1))
    h = fq(fq(x, "x") @ wq(w1), "h")
    r = fq(h + b1, "hb")  # the Relu is absorbed: hb's zero point is 0, so saturation is the Relu
    assert _const(q, "hb_zero_point") == 0 and "Relu" not in [n.op_type for n in q.graph.node]
    ref = fq(r @ wq(w2), "y")
    rel = np.abs(out - ref).max() / np.abs(ref).max()
    assert rel < 0.02, rel  # integer kernels requantize differently from float emulation by ~1 step


def test_trt_style_is_symmetric_with_float_bias(tmp_path):
    _, g = _graph(tmp_path, conv_bn_model())
    q = hir.to_proto(quantize(g, PrecisionPlan.uniform("int8"), TRT_STYLE, _calib((3, 8, 8))))
    for n in q.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2:
            assert not np.any(_const(q, n.input[2]))
    assert "Relu" in [n.op_type for n in q.graph.node]
    conv_bias = [n.input[2] for n in q.graph.node if n.op_type == "Conv" and len(n.input) > 2]
    assert all(_const(q, b).dtype == np.float32 for b in conv_bias)


def test_bias_correction_removes_mean_error(tmp_path):
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal((64, 16)) * 0.3).astype(np.float32), "w1"),
             numpy_helper.from_array(np.zeros(64, np.float32), "b1")]
    gr = helper.make_graph([helper.make_node("Gemm", ["x", "w1", "b1"], ["y"], name="fc", transB=1)], "g",
                           [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
                           [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 64])], inits)
    m = helper.make_model(gr, opset_imports=[helper.make_opsetid("", 17)])
    x = (_calib((16,), n=256).inputs["x"] * 0.2 + 2.0).astype(np.float32)  # inputs with a large mean
    ref = session(m).run(None, {"x": x})[0]
    err = {}
    for comp in ("none", "bias"):
        _, g = _graph(tmp_path, m)
        plan = PrecisionPlan(default=LayerChoice("int8", "int8"), quant=QuantSettings(compensation=comp))
        out = session(hir.to_proto(apply_plan(g, plan, ORT_STYLE, Dataset({"x": x}, source="s")))).run(None, {"x": x})[0]
        err[comp] = float(np.abs((out - ref).mean(axis=0)).mean())  # mean error per output channel
    assert err["bias"] < 0.25 * err["none"]


def test_gptq_beats_round_to_nearest_for_int4(tmp_path):
    rng = np.random.default_rng(3)
    k, n = 64, 32
    w = rng.standard_normal((k, n)).astype(np.float32)
    base = rng.standard_normal((512, 8))
    x = (base @ rng.standard_normal((8, k)) + 0.1 * rng.standard_normal((512, k))).astype(np.float32)
    h = 2 * x.T.astype(np.float64) @ x / len(x)
    err = {}
    for name, hess in (("rtn", None), ("gptq", h)):
        q, s = int4_blockwise(w, 32, hess)
        deq = ((q.astype(np.float32) - 8) * np.repeat(s, 32, axis=1)).T[:k]
        err[name] = float(np.mean((x @ w - x @ deq) ** 2))
    assert err["gptq"] < 0.7 * err["rtn"]


def test_dynamic_int8_fuses_and_is_close(tmp_path):
    _, g = _graph(tmp_path, mlp_model())
    ref_g = hir.to_proto(g)
    q = hir.to_proto(apply_plan(g, PrecisionPlan.uniform("int8dyn"), ORT_STYLE, None))
    ops = _optimized_ops(q, tmp_path)
    assert "DynamicQuantizeMatMul" in ops or "MatMulIntegerToFloat" in ops
    assert "MatMul" not in ops
    x = _calib((16,), n=16, seed=5).inputs["x"]
    ref, out = session(ref_g).run(None, {"x": x})[0], session(q).run(None, {"x": x})[0]
    assert np.abs(out - ref).max() / np.abs(ref).max() < 0.05


def test_int4_matmulnbits_matches_numpy(tmp_path):
    _, g = _graph(tmp_path, mlp_model())
    q = hir.to_proto(apply_plan(g, PrecisionPlan.uniform("int4w", compensation="none", int4_block_size=16),
                                ORT_STYLE, None))
    assert [n.op_type for n in q.graph.node].count("MatMulNBits") == 2
    x = _calib((16,), n=8, seed=9).inputs["x"]
    out = session(q).run(None, {"x": x})[0]
    m = mlp_model()
    dq = lambda w: (lambda qs: ((qs[0].astype(np.float32) - 8) * np.repeat(qs[1], 16, axis=1)).T[: w.shape[0]])(
        int4_blockwise(w, 16))
    ref = np.maximum(x @ dq(_const(m, "w1")) + _const(m, "b1"), 0) @ dq(_const(m, "w2"))
    assert np.allclose(out, ref, atol=1e-3 * np.abs(ref).max())


def test_fp16_layers(tmp_path):
    p, g = _graph(tmp_path, conv_bn_model())
    q = hir.to_proto(apply_plan(g, PrecisionPlan.uniform("fp16"), ORT_STYLE, None))
    casts = [n for n in q.graph.node if n.op_type == "Cast"]
    assert len(casts) == 4  # in/out of each conv: the Relu between runs in fp32
    x = _calib((3, 8, 8), n=1).inputs["x"]
    ref, out = session(p).run(None, {"x": x})[0], session(q).run(None, {"x": x})[0]
    assert np.abs(out - ref).max() / np.abs(ref).max() < 5e-3


def test_float_layers_stay_bit_exact(tmp_path):
    p, g = _graph(tmp_path, mlp_model())
    plan = PrecisionPlan.uniform("fp32").with_layer("fc2", LayerChoice("int8", "int8"))
    q = quantize(g, plan, ORT_STYLE, _calib((16,)))
    names = {n.name: n for n in q.nodes()}
    assert names["fc1"].inputs[1].name == "w1"  # untouched weight


def test_cached_statistics_use_each_calls_observer(tmp_path):
    """The calibration cache is shared across plans; the observer of each plan must still apply."""
    _, g = _graph(tmp_path, mlp_model())
    calib, cache, scales = _calib((16,)), {}, {}
    for method in ("minmax", "percentile"):
        q = hir.to_proto(quantize(g.clone(), PrecisionPlan.uniform("int8", calib_method=method, percentile=90.0),
                                  ORT_STYLE, calib, cache=cache))
        scales[method] = float(_const(q, "x_scale"))
    assert len(cache) == 1 and scales["percentile"] < 0.8 * scales["minmax"]


def conv_chain_model(seed=0) -> onnx.ModelProto:
    """x -> conv1 -> Relu -> conv2 -> Relu -> conv3 -> y (all 3x3, 8 channels)."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array((rng.standard_normal((8, c, 3, 3)) * 0.3).astype(np.float32), f"w{i}")
             for i, c in ((1, 3), (2, 8), (3, 8))]
    nodes = []
    x = "x"
    for i in (1, 2, 3):
        nodes.append(helper.make_node("Conv", [x, f"w{i}"], [f"c{i}"], name=f"conv{i}", pads=[1, 1, 1, 1]))
        x = f"c{i}"
        if i < 3:
            nodes.append(helper.make_node("Relu", [x], [f"r{i}"], name=f"relu{i}"))
            x = f"r{i}"
    nodes[-1].output[0] = "y"
    g = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8, 8])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("keep_float", [True, False])
def test_float_layer_between_int8_layers_keeps_float_weight_in_onnxruntime(tmp_path, keep_float):
    """onnxruntime quantizes the float weight of a Conv whose input DQ is per-tensor (its
    WeightBiasQuantization); the pass gives such a layer a per-channel DQ so it stays float."""
    _, g = _graph(tmp_path, conv_chain_model())
    int8 = LayerChoice("int8", "int8")
    plan = PrecisionPlan(default=int8).with_layer("conv2", LayerChoice.from_candidate("fp32"))
    style = ORT_STYLE if keep_float else TRT_STYLE
    q = quantize(g, plan, style, _calib((3, 8, 8)))
    q.lint()
    proto = hir.to_proto(q)
    conv2 = next(n for n in proto.graph.node if n.name == "conv2")
    assert conv2.input[1] == "w2"  # the float weight, as the plan says
    ops = _optimized_ops(proto, tmp_path)
    if keep_float:
        assert ops.count("QLinearConv") == 2 and ops.count("Conv") + ops.count("FusedConv") == 1, ops
        # the per-channel DQ reproduces the shared one exactly: same result as reading the shared DQ
        dq = next(n for n in proto.graph.node if n.output[0] == conv2.input[0])
        scale = _const(proto, dq.input[1])
        assert dq.op_type == "DequantizeLinear" and scale.shape == (8,) and np.all(scale == scale[0])
        x = _calib((3, 8, 8), n=1, seed=4).inputs["x"]
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        plain = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
        shared_dq = next(n for n in proto.graph.node if n.op_type == "DequantizeLinear"
                         and n.input[0] == dq.input[0] and n is not dq)
        shared = onnx.ModelProto()
        shared.CopyFrom(proto)
        next(n for n in shared.graph.node if n.name == "conv2").input[0] = shared_dq.output[0]
        plain_shared = ort.InferenceSession(shared.SerializeToString(), so, providers=["CPUExecutionProvider"])
        assert np.array_equal(plain.run(None, {"x": x})[0], plain_shared.run(None, {"x": x})[0])
    else:  # symmetric (TensorRT) styles keep per-tensor activation scales
        q_outs = {n.output[0] for n in proto.graph.node if n.op_type == "QuantizeLinear"}
        acts = [n for n in proto.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in q_outs]
        assert acts and all(_const(proto, n.input[1]).ndim == 0 for n in acts) and not q.meta.get("float_layer_dq")


def test_dynamic_weights_are_7_bit_int8_where_u8s8_saturates(tmp_path):
    """Without VNNI (gemm_weight_dtype='uint8') dynamic weights are INT8 in -63..63, so a pair of
    u8*s8 products fits int16; onnxruntime's result equals the exact integer computation."""
    _, g = _graph(tmp_path, mlp_model())
    style = QDQStyle(gemm_weight_dtype="uint8")
    q = hir.to_proto(apply_plan(g, PrecisionPlan.uniform("int8dyn"), style, None))
    mm = [n for n in q.graph.node if n.op_type == "MatMulInteger"]
    assert len(mm) == 2
    m = mlp_model()
    x = (np.abs(_calib((16,), n=4, seed=11).inputs["x"]) * 3).astype(np.float32)  # large, same-sign inputs
    h = x
    for node, wname in zip(mm, ("w1", "w2")):
        wq, wz, sw = _const(q, node.input[1]), _const(q, node.input[3]), _const(q, node.input[1].replace(
            "_quantized", "_scale"))
        w = _const(m, wname)
        assert wq.dtype == np.int8 and not np.any(wz) and np.abs(wq).max() == 63
        assert np.allclose(sw, np.abs(w).max(axis=0) / 63, rtol=1e-6)
        if wname == "w1":  # exact integer reference for the first layer (DynamicQuantizeLinear semantics)
            lo, hi = min(float(h.min()), 0.0), max(float(h.max()), 0.0)
            sx = np.float32((hi - lo) / 255)
            zx = np.clip(np.round(-lo / sx), 0, 255)
            xq = np.clip(np.round(h / sx) + zx, 0, 255)
            ref = ((xq - zx).astype(np.int64) @ wq.astype(np.int64)).astype(np.float64) * sx * sw
    inter = next(n for n in q.graph.node if n.name.startswith("fc1") and n.op_type == "Mul" and "scales" not in n.name)
    probe = onnx.ModelProto()
    probe.CopyFrom(q)
    probe.graph.output.append(helper.make_tensor_value_info(inter.output[0], TensorProto.FLOAT, None))
    out = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[1]
    assert np.allclose(out, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


@pytest.mark.parametrize("negative", [True, False])
def test_int4_block_scales_beat_absmax7_and_onnxruntime_rule(negative):
    """Per block, the searched scale's squared error is <= absmax/7 and (when negative scales are
    allowed, as in MatMulNBits) <= onnxruntime's rule s = m / -8, m the largest-magnitude weight."""
    from hwcompile.passes.quantize_int4 import int4_block_scales

    rng = np.random.default_rng(5)
    blocks = rng.standard_t(4, size=(16, 8, 32))
    blocks[0, 0] = 0.0  # an all-zero block
    err = lambda s: np.sum((blocks - np.clip(np.round(blocks / s[..., None]), -8, 7) * s[..., None]) ** 2, axis=2)
    amax = np.abs(blocks).max(axis=2)
    safe = np.where(amax > 0, amax, 1.0)
    m = np.take_along_axis(blocks, np.abs(blocks).argmax(axis=2)[..., None], axis=2)[..., 0]
    ours = int4_block_scales(blocks, negative=negative)
    assert ours[0, 0] == 1.0 and err(ours)[0, 0] == 0.0
    assert np.all(err(ours) <= err(safe / 7) + 1e-12)
    if negative:
        ort_rule = np.where(m != 0, m / -8.0, 1.0)
        assert np.all(err(ours) <= err(ort_rule) + 1e-12)
        assert np.mean(err(ours)) < 0.9 * np.mean(err(safe / 7))
    else:
        assert np.all(ours > 0)


def embedding_model(vocab=600, dim=128, tied=False, seed=0) -> onnx.ModelProto:
    """ids -> Gather(table) -> MatMul(w) -> y; ``tied``: the table is also an output head's weight (Gemm transB)."""
    rng = np.random.default_rng(seed)
    table = rng.standard_normal((vocab, dim)).astype(np.float32)
    table[7] *= 1e-3  # a row far smaller than the rest: per-row scales must keep it
    inits = [numpy_helper.from_array(table, "table"),
             numpy_helper.from_array(rng.standard_normal((dim, 16)).astype(np.float32) * 0.1, "w")]
    nodes = [helper.make_node("Gather", ["table", "ids"], ["e"], name="embed"),
             helper.make_node("MatMul", ["e", "w"], ["y"], name="proj")]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "S", 16]),
               helper.make_tensor_value_info("e", TensorProto.FLOAT, ["N", "S", dim])]
    if tied:
        nodes.append(helper.make_node("Gemm", ["h", "table"], ["logits"], name="tied_head", transB=1))
        outputs.append(helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["M", vocab]))
    inputs = [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", "S"])]
    if tied:
        inputs.append(helper.make_tensor_value_info("h", TensorProto.FLOAT, ["M", dim]))
    g = helper.make_graph(nodes, "emb", inputs, outputs, inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_int8_embeddings_match_per_row_reference_and_shrink(tmp_path):
    model = embedding_model()
    p, g = _graph(tmp_path, model)
    ids = np.array([[0, 7, 599, 7, 3]], dtype=np.int64)
    q = apply_plan(g.clone(), PrecisionPlan.uniform("int8dyn"), ORT_STYLE, None)
    assert q.meta["int8_embeddings"] == ["embed"]
    qm = hir.to_proto(q)
    assert not any(t.name == "table" for t in qm.graph.initializer)  # the float table is gone
    assert any(t.data_type == TensorProto.INT8 and list(t.dims) == [600, 128] for t in qm.graph.initializer)
    assert len(qm.SerializeToString()) < len(model.SerializeToString()) / 3
    e = session(qm).run(["e"], {"ids": ids})[0]
    table = numpy_helper.to_array(model.graph.initializer[0])
    scale = np.abs(table).max(axis=1, keepdims=True) / 127  # independent per-row symmetric reference
    ref = (np.clip(np.rint(table / scale), -127, 127) * scale)[ids]
    np.testing.assert_allclose(e, ref, rtol=1e-6, atol=1e-9)
    assert np.abs(e[0, 1] - table[7]).max() <= scale[7, 0] / 2 + 1e-9  # the tiny row keeps its own scale


def test_int8_embeddings_skip_tied_tables_small_tables_tensorrt_and_float_setting(tmp_path):
    _, g = _graph(tmp_path, embedding_model(tied=True))
    float_head = PrecisionPlan.uniform("int8dyn").with_layer("tied_head", LayerChoice.from_candidate("fp32", "dense"))
    assert apply_plan(g.clone(), float_head, ORT_STYLE, None).meta.get("int8_embeddings") == []  # head reads it
    q = apply_plan(g.clone(), PrecisionPlan.uniform("int8dyn"), ORT_STYLE, None)
    assert q.meta["int8_embeddings"] == ["embed"]  # the head has its own INT8 copy: the float table is free
    _, g = _graph(tmp_path, embedding_model(vocab=100, dim=64))  # 6,400 entries: not worth a Cast
    assert apply_plan(g.clone(), PrecisionPlan.uniform("int8dyn"), ORT_STYLE, None).meta.get("int8_embeddings") == []
    _, g = _graph(tmp_path, embedding_model())
    off = PrecisionPlan.uniform("int8dyn", embeddings="float")
    assert "int8_embeddings" not in apply_plan(g.clone(), off, ORT_STYLE, None).meta
    trt = QDQStyle(activation_dtype="int8", symmetric_activations=True, quantize_bias=False, allow_dynamic=True,
                   allow_contrib_ops=False, int8_embeddings=False)
    assert "int8_embeddings" not in apply_plan(g.clone(), PrecisionPlan.uniform("int8dyn"), trt, None).meta
    with pytest.raises(Exception, match="embeddings"):
        QuantSettings(embeddings="int4")
