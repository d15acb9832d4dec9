"""Regressions found by compiling the real-model corpus (benchmarks/corpus), each reproduced on a
small model built here: a YOLO-style head with a one-channel objectness Conv, an additive
attention mask (finfo.min and -inf), a non-finite activation elsewhere."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import hwcompile.ir as hir
from hwcompile.backends.onnxruntime import OnnxRuntimeBackend
from hwcompile.data import Dataset
from hwcompile.errors import DataError
from hwcompile.metrics import snr_db
from hwcompile.passes import cleanup
from hwcompile.passes.quantize import quantize
from hwcompile.plan import PrecisionPlan
from hwcompile.quant.float_guard import float_tensors, mask_tensors
from hwcompile.quant.observers import TensorStats
from hwcompile.targets import load_target

ORT_STYLE = OnnxRuntimeBackend().qdq_style(load_target("host-cpu"))


def _graph(tmp_path, model):
    p = tmp_path / "m.onnx"
    onnx.save(model, p)
    return cleanup(hir.load(p))


def _run(model: onnx.ModelProto, feeds):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feeds)


def yolo_head_model(seed=0) -> onnx.ModelProto:
    """backbone Conv -> [box Conv (4 ch), objectness Conv (1 ch, scalar-sized bias), class Conv (3 ch)]
    -> Sigmoid on obj/cls -> Concat on channels, as YOLOX/YOLOv5 heads do."""
    rng = np.random.default_rng(seed)
    w = lambda name, shape, s=0.3: numpy_helper.from_array((rng.standard_normal(shape) * s).astype(np.float32), name)
    inits = [w("wb", (8, 3, 3, 3)), w("bb", (8,), 0.1), w("wbox", (4, 8, 1, 1)), w("bbox", (4,), 0.1),
             w("wobj", (1, 8, 1, 1)), w("bobj", (1,), 0.1), w("wcls", (3, 8, 1, 1)), w("bcls", (3,), 0.1)]
    nodes = [helper.make_node("Conv", ["x", "wb", "bb"], ["f"], name="stem", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["f"], ["fr"], name="relu"),
             helper.make_node("Conv", ["fr", "wbox", "bbox"], ["box"], name="box"),
             helper.make_node("Conv", ["fr", "wobj", "bobj"], ["obj"], name="obj"),
             helper.make_node("Conv", ["fr", "wcls", "bcls"], ["cls"], name="cls"),
             helper.make_node("Sigmoid", ["obj"], ["objs"], name="obj_sigmoid"),
             helper.make_node("Sigmoid", ["cls"], ["clss"], name="cls_sigmoid"),
             helper.make_node("Concat", ["box", "objs", "clss"], ["y"], name="head_concat", axis=1)]
    g = helper.make_graph(nodes, "yolo_head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 16, 16])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_static_int8_one_channel_conv_bias_in_yolo_head(tmp_path):
    """Was: TypeError 'only 0-dimensional arrays can be converted' in quant/weights._rewrite_bias."""
    m = yolo_head_model()
    g = _graph(tmp_path, m)
    x = np.random.default_rng(1).standard_normal((32, 3, 16, 16)).astype(np.float32)
    q = quantize(g, PrecisionPlan.uniform("int8"), ORT_STYLE, Dataset({"x": x}, source="yolo"))
    q.lint()
    proto = hir.to_proto(q)
    ref = _run(m, {"x": x[:1]})
    out = _run(proto, {"x": x[:1]})
    assert out[0].shape == ref[0].shape
    assert snr_db(ref, out) > 20.0  # quantized, and still the same head


def test_tensor_stats_count_non_finite_values_and_keep_finite_statistics():
    s = TensorStats(name="mask")
    s.update(np.array([0.0, -np.inf, 1.5, np.nan, -2.0], dtype=np.float32))
    assert s.nonfinite == 2 and s.count == 3
    assert (s.min, s.max) == (-2.0, 1.5)
    t = TensorStats(name="mask").update(np.array([np.inf], dtype=np.float32))
    assert t.merge(s).nonfinite == 3


def attention_mask_model(sentinel: float, seed=0) -> onnx.ModelProto:
    """x[N,T,D] -> q/k MatMuls -> scores + (1 - mask) * sentinel -> Softmax -> @ v-MatMul -> y, with an
    int64 mask input [N, T], the way Hugging Face BERT exports build the extended attention mask."""
    rng = np.random.default_rng(seed)
    d = 8
    w = lambda name: numpy_helper.from_array((rng.standard_normal((d, d)) * 0.5).astype(np.float32), name)
    c = lambda name, v: numpy_helper.from_array(np.asarray(v, dtype=np.float32), name)
    inits = [w("wq"), w("wk"), w("wv"), w("wo"), c("one", 1.0), c("sentinel", sentinel), c("scale", 1 / np.sqrt(d)),
             numpy_helper.from_array(np.array([1], dtype=np.int64), "ax1")]
    nodes = [helper.make_node("MatMul", ["x", "wq"], ["q"], name="q_proj"),
             helper.make_node("MatMul", ["x", "wk"], ["k"], name="k_proj"),
             helper.make_node("MatMul", ["x", "wv"], ["v"], name="v_proj"),
             helper.make_node("Transpose", ["k"], ["kt"], name="kt", perm=[0, 2, 1]),
             helper.make_node("MatMul", ["q", "kt"], ["s"], name="scores"),
             helper.make_node("Mul", ["s", "scale"], ["ss"], name="scaled"),
             helper.make_node("Unsqueeze", ["mask", "ax1"], ["m3"], name="mask_unsqueeze")]
    if np.isinf(sentinel):  # masked_fill style: where(mask, 0, -inf)
        inits.append(c("zero", 0.0))
        nodes += [helper.make_node("Cast", ["m3"], ["mb"], name="mask_cast", to=TensorProto.BOOL),
                  helper.make_node("Where", ["mb", "zero", "sentinel"], ["bias"], name="mask_bias")]
    else:  # (1 - mask) * sentinel
        nodes += [helper.make_node("Cast", ["m3"], ["mf"], name="mask_cast", to=TensorProto.FLOAT),
                  helper.make_node("Sub", ["one", "mf"], ["inv"], name="mask_invert"),
                  helper.make_node("Mul", ["inv", "sentinel"], ["bias"], name="mask_bias")]
    nodes += [helper.make_node("Add", ["ss", "bias"], ["sm"], name="masked_scores"),
             helper.make_node("Softmax", ["sm"], ["p"], name="softmax", axis=-1),
             helper.make_node("MatMul", ["p", "v"], ["ctx"], name="context"),
             helper.make_node("MatMul", ["ctx", "wo"], ["y"], name="out_proj")]
    g = helper.make_graph(nodes, "attn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6, d]),
                                          helper.make_tensor_value_info("mask", TensorProto.INT64, ["N", 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6, d])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _mask_data(n=32, seed=2):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 6, 8)).astype(np.float32)
    lengths = rng.integers(2, 7, n)
    mask = (np.arange(6)[None] < lengths[:, None]).astype(np.int64)
    return x, mask


@pytest.mark.parametrize("sentinel", [float(np.finfo(np.float32).min), -10000.0, -np.inf])
def test_static_int8_keeps_additive_attention_mask_float(tmp_path, sentinel):
    """Was: 'tensor: activation contains inf or NaN' on a Hugging Face BERT export."""
    m = attention_mask_model(sentinel)
    g = _graph(tmp_path, m)
    x, mask = _mask_data()
    q = quantize(g, PrecisionPlan.uniform("int8"), ORT_STYLE, Dataset({"x": x, "mask": mask}, source="attn"))
    q.lint()
    expected = {"bias", "sm"} if np.isinf(sentinel) else {"mf", "inv", "bias", "sm"}
    assert set(mask_tensors(_graph(tmp_path, m))) == expected  # recognized
    proto = hir.to_proto(q)
    quantized = {n.input[0] for n in proto.graph.node if n.op_type == "QuantizeLinear"}
    assert not quantized & {"bias", "sm", "inv", "mf"}  # the mask path is float
    assert {"x"} <= quantized  # and the projections are INT8
    ref = _run(m, {"x": x[:8], "mask": mask[:8]})
    out = _run(proto, {"x": x[:8], "mask": mask[:8]})
    assert np.all(np.isfinite(out[0])) and snr_db(ref, out) > 20.0


def test_non_finite_activation_outside_a_mask_stays_float_and_is_named(tmp_path):
    """A Log of a value that is 0 in calibration gives -inf there: the layer reading it stays float
    (the tensor named in the graph's notes), the other layers are INT8."""
    rng = np.random.default_rng(0)
    w = lambda name, shape: numpy_helper.from_array((rng.standard_normal(shape) * 0.5).astype(np.float32), name)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Log", ["r"], ["lg"], name="log"),
             helper.make_node("MatMul", ["r", "w2"], ["y2"], name="fc2"),
             helper.make_node("MatMul", ["lg", "w3"], ["y"], name="fc3")]
    g = helper.make_graph(nodes, "log", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4]),
                           helper.make_tensor_value_info("y2", TensorProto.FLOAT, ["N", 4])],
                          [w("w1", (8, 8)), w("w2", (8, 4)), w("w3", (8, 4))])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    x = rng.standard_normal((32, 8)).astype(np.float32)
    q = quantize(_graph(tmp_path, m), PrecisionPlan.uniform("int8"), ORT_STYLE, Dataset({"x": x}, source="log"))
    kept = q.meta.get("float_tensors", {})
    assert "lg" in kept and "inf/NaN" in kept["lg"]
    proto = hir.to_proto(q)
    quantized = {n.input[0] for n in proto.graph.node if n.op_type == "QuantizeLinear"}
    assert "lg" not in quantized and {"x", "h"} <= quantized
    fc3 = next(n for n in proto.graph.node if n.name == "fc3")
    assert fc3.input[1] == "w3"  # float weight: the layer reading the -inf tensor stayed float
    ref, out = _run(m, {"x": x[:4]}), _run(proto, {"x": x[:4]})
    assert snr_db(ref[1:], out[1:]) > 20.0


def test_quantizing_a_non_finite_tensor_names_it():
    from hwcompile.quant.observers import calibrate_range

    s = TensorStats(name="scores_plus_mask").update(np.array([1.0, -np.inf], np.float32))
    with pytest.raises(DataError, match="inf/NaN") as e:
        calibrate_range(s, "minmax")
    assert "scores_plus_mask" in str(e.value)


def test_float_guard_keeps_mask_sentinel_and_non_finite_tensors_from_the_int8_region(tmp_path):
    """Where a placement would quantize them (any op in the region), the guard names each."""
    g = _graph(tmp_path, attention_mask_model(-10000.0))
    stats = {"sm": TensorStats(name="sm").update(np.array([-1e4, 1.0], np.float32)),
             "ss": TensorStats(name="ss").update(np.array([-3.0, 2.0], np.float32)),
             "q": TensorStats(name="q").update(np.array([np.nan, 2.0], np.float32)),
             "k": TensorStats(name="k").update(np.array([-3e38, 2.0], np.float32))}
    kept = float_tensors(g, stats, ["sm", "ss", "q", "k"])
    assert set(kept) == {"sm", "q", "k"}
    assert "mask" in kept["sm"] and "inf/NaN" in kept["q"] and "sentinel" in kept["k"]


def if_identity_model() -> onnx.ModelProto:
    """y = If(c, then: Identity(h), else: Neg(h)) with h = Relu(x), as silero-vad's sample-rate branch
    returns an outer value through an Identity."""
    then_g = helper.make_graph([helper.make_node("Identity", ["h"], ["t"], name="then_identity")], "then", [],
                               [helper.make_tensor_value_info("t", TensorProto.FLOAT, ["N", 4])])
    else_g = helper.make_graph([helper.make_node("Neg", ["h"], ["e"], name="else_neg")], "else", [],
                               [helper.make_tensor_value_info("e", TensorProto.FLOAT, ["N", 4])])
    nodes = [helper.make_node("Relu", ["x"], ["h"], name="relu"),
             helper.make_node("Identity", ["h"], ["h2"], name="main_identity"),
             helper.make_node("If", ["c"], ["y0"], name="branch", then_branch=then_g, else_branch=else_g),
             helper.make_node("Add", ["y0", "h2"], ["y"], name="add")]
    g = helper.make_graph(nodes, "if_identity", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
                          [numpy_helper.from_array(np.array(True), "c")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_cleanup_keeps_identities_inside_if_branches(tmp_path):
    """Was: 'pass eliminate_identity: ValueError: Value ... is already an output of a different graph'."""
    m = if_identity_model()
    g = _graph(tmp_path, m)
    g.lint()
    ops = [n.op_type for n in g.main]
    assert "Identity" not in ops  # the main graph's one is bypassed
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    np.testing.assert_array_equal(_run(hir.to_proto(g), {"x": x})[0], _run(m, {"x": x})[0])
