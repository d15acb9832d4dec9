"""TensorRT Q/DQ rules: for every rule a valid and an invalid tiny model built with onnx.helper.

Invalid models break exactly one rule and the test checks the rule id and the node it names;
valid models (also checked by onnx.checker) break none.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from hwcompile.backends.tensorrt.rules import RULES, Violation, check_model, nm_violations, render

F = TensorProto.FLOAT
COVERED: set[str] = set()
INVALID: dict[str, list[tuple[onnx.ModelProto, list[str], dict]]] = {}  # rule -> [(invalid model, nodes, kwargs)]


def model(nodes, inits, inputs, outputs, opset=13, extra_domains=()):
    g = helper.make_graph(nodes, "g", inputs, outputs, initializer=inits)
    ops = [helper.make_opsetid("", opset), *[helper.make_opsetid(d, 1) for d in extra_domains]]
    return helper.make_model(g, opset_imports=ops)


def t(name, arr, dtype=None):
    arr = np.asarray(arr)
    if dtype is None:
        return numpy_helper.from_array(arr, name)
    return helper.make_tensor(name, dtype, list(arr.shape), arr.flatten().tolist())


def vi(name, shape, dtype=F):
    return helper.make_tensor_value_info(name, dtype, shape)


def sparse_24(shape, axis, rng):
    """Int8 weight with exactly 2 nonzeros in each group of 4 along ``axis``."""
    w = np.moveaxis(rng.integers(1, 100, size=shape).astype(np.int8), axis, -1).copy()
    w[..., 1::4] = 0
    w[..., 2::4] = 0
    return np.moveaxis(w, -1, axis).copy()


def qconv(*, opset=13, zp_dtype=TensorProto.INT8, w=None, w_axis=0, w_scale=None, w_zp=None, residual=None,
          act_scale=None, bias=None, weight_float=False, q_weight=False):
    """x -> Q -> DQ -> Conv(W: int8 init -> DQ) [-> Add(residual)] -> y; a valid TensorRT layer by default."""
    rng = np.random.default_rng(0)
    w = sparse_24((4, 4, 3, 3), 1, rng) if w is None else w
    s_w = np.full(4, 0.01, np.float32) if w_scale is None else w_scale
    zp_w = np.zeros(np.shape(s_w), np.int8) if w_zp is None else w_zp
    inits = [t("s_x", np.float32(0.05) if act_scale is None else act_scale),
             helper.make_tensor("zp_x", zp_dtype, [], [0]), t("s_w", s_w), t("zp_w", zp_w)]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s_x", "zp_x"], ["xq"], name="q_x"),
             helper.make_node("DequantizeLinear", ["xq", "s_x", "zp_x"], ["xd"], name="dq_x")]
    axis_attr = {} if w_axis is None else {"axis": w_axis}
    if weight_float:
        inits.append(t("w_f", w.astype(np.float32)))
        w_in = "w_f"
    elif q_weight:
        inits.append(t("w_f", w.astype(np.float32) * 0.01))
        nodes += [helper.make_node("QuantizeLinear", ["w_f", "s_w", "zp_w"], ["w_q"], name="q_w", **axis_attr),
                  helper.make_node("DequantizeLinear", ["w_q", "s_w", "zp_w"], ["w_d"], name="dq_w", **axis_attr)]
        w_in = "w_d"
    else:
        inits.append(t("w_q", w))
        nodes.append(helper.make_node("DequantizeLinear", ["w_q", "s_w", "zp_w"], ["w_d"], name="dq_w", **axis_attr))
        w_in = "w_d"
    conv_in = ["xd", w_in]
    if bias is not None:
        inits += bias[0]
        nodes += bias[1]
        conv_in.append(bias[2])
    nodes.append(helper.make_node("Conv", conv_in, ["c"], name="conv", pads=[1, 1, 1, 1]))
    out = "c"
    if residual is not None:
        nodes.append(helper.make_node("Add", ["c", residual], ["y"], name="add"))
        out = "y"
    return model(nodes, inits, [vi("x", [1, 4, 5, 5])], [vi(out, [1, 4, 5, 5])], opset=opset)


def assert_only(m, rule, nodes, **kw):
    COVERED.add(rule)
    INVALID.setdefault(rule, []).append((m, list(nodes), kw))
    got = check_model(m, **kw)
    assert {v.rule for v in got} == {rule}, render(got)
    assert sorted(v.node for v in got) == sorted(nodes), render(got)
    assert all(v.message for v in got)


def assert_valid(m, **kw):
    onnx.checker.check_model(m, full_check=True)
    got = check_model(m, **kw)
    assert got == [], render(got)


# -- the reference valid model --------------------------------------------------------------------
def test_reference_qdq_conv_is_valid_for_every_rule():
    assert_valid(qconv(), sparsity="2:4")
    assert_valid(qconv(residual="xd"))


# -- no-qlinear -----------------------------------------------------------------------------------
@pytest.mark.parametrize("op,domain", [("ConvInteger", ""), ("MatMulInteger", ""), ("QLinearConv", ""),
                                       ("DynamicQuantizeLinear", ""), ("MatMulIntegerToFloat", "com.microsoft"),
                                       ("MatMulNBits", "com.microsoft")])
def test_no_qlinear(op, domain):
    node = helper.make_node(op, ["a", "b"], ["y"], name="bad", domain=domain)
    m = model([node], [], [vi("a", [2, 2], TensorProto.INT8), vi("b", [2, 2], TensorProto.INT8)],
              [vi("y", None)], extra_domains=[domain] if domain else ())
    assert_only(m, "no-qlinear", ["bad"])


def test_no_qlinear_matmul_integer_well_formed():
    node = helper.make_node("MatMulInteger", ["a", "b"], ["y"], name="mmi")
    m = model([node], [], [vi("a", [2, 2], TensorProto.INT8), vi("b", [2, 2], TensorProto.INT8)],
              [vi("y", [2, 2], TensorProto.INT32)])
    onnx.checker.check_model(m, full_check=True)
    assert_only(m, "no-qlinear", ["mmi"])


def test_no_qlinear_valid_float_matmul():
    m = model([helper.make_node("MatMul", ["a", "b"], ["y"], name="mm")], [],
              [vi("a", [2, 3]), vi("b", [3, 2])], [vi("y", [2, 2])])
    assert_valid(m)


# -- qdq-dtype ------------------------------------------------------------------------------------
def test_qdq_dtype_uint8_activation():
    assert_only(qconv(zp_dtype=TensorProto.UINT8), "qdq-dtype", ["q_x", "dq_x"])


def test_qdq_dtype_int32_bias_dequantize():
    bias = ([t("b_q", np.zeros(4, np.int32)), t("s_b", np.full(4, 5e-4, np.float32))],
            [helper.make_node("DequantizeLinear", ["b_q", "s_b"], ["b_d"], name="dq_b", axis=0)], "b_d")
    assert_only(qconv(bias=bias), "qdq-dtype", ["dq_b"])


def test_qdq_dtype_missing_zero_point_means_uint8():
    m = model([helper.make_node("QuantizeLinear", ["x", "s"], ["q"], name="q"),
               helper.make_node("DequantizeLinear", ["q", "s"], ["y"], name="dq")],
              [t("s", np.float32(0.1))], [vi("x", [2])], [vi("y", [2])])
    assert_only(m, "qdq-dtype", ["q", "dq"])


def test_qdq_dtype_valid_float_bias():
    bias = ([t("b", np.zeros(4, np.float32))], [], "b")
    assert_valid(qconv(bias=bias))


# -- zero-point-zero ------------------------------------------------------------------------------
def test_zero_point_nonzero_weight():
    zp = np.array([0, 0, 1, 0], np.int8)
    assert_only(qconv(w_zp=zp), "zero-point-zero", ["dq_w"])


def test_zero_point_nonzero_activation():
    m = qconv()
    for init in m.graph.initializer:
        if init.name == "zp_x":
            init.CopyFrom(t("zp_x", np.int8(3)))
    assert_only(m, "zero-point-zero", ["q_x", "dq_x"])


# -- act-scale-per-tensor -------------------------------------------------------------------------
def test_activation_scale_per_channel_is_flagged():
    m = qconv()
    for init in m.graph.initializer:
        if init.name in ("s_x", "zp_x"):
            init.CopyFrom(t(init.name, np.full(4, 0.05, np.float32) if init.name == "s_x" else np.zeros(4, np.int8)))
    assert_only(m, "act-scale-per-tensor", ["q_x", "dq_x"])


def test_activation_scale_shape_one_is_per_tensor():
    m = qconv()
    for init in m.graph.initializer:
        if init.name == "s_x":
            init.CopyFrom(t("s_x", np.array([0.05], np.float32)))
        if init.name == "zp_x":
            init.CopyFrom(t("zp_x", np.array([0], np.int8)))
    assert check_model(m) == []


# -- weight-per-channel-axis ----------------------------------------------------------------------
def test_conv_weight_scale_on_input_channel_axis():
    # axis omitted -> ONNX default 1 (input channels of a [K, C, R, S] weight): wrong for TensorRT
    w = np.ones((4, 4, 3, 3), np.int8)
    assert_only(qconv(w=w, w_axis=None), "weight-per-channel-axis", ["dq_w"])


def test_conv_weight_per_tensor_scale_is_allowed():
    assert_valid(qconv(w_scale=np.float32(0.01)))


def _matmul_w(w_q, scale, zp, *, opset=13, op="MatMul", trans_b=None, **dq_attrs):
    k = w_q.dims[1] if trans_b else w_q.dims[0]
    attrs = {} if trans_b is None else {"transB": trans_b}
    nodes = [helper.make_node("QuantizeLinear", ["x", "s_x", "zp_x"], ["xq"], name="q_x"),
             helper.make_node("DequantizeLinear", ["xq", "s_x", "zp_x"], ["xd"], name="dq_x"),
             helper.make_node("DequantizeLinear", ["w_q", "s_w", "zp_w"], ["w_d"], name="dq_w", **dq_attrs),
             helper.make_node(op, ["xd", "w_d"], ["y"], name="mm", **attrs)]
    inits = [t("s_x", np.float32(0.1)), t("zp_x", np.int8(0)), w_q, t("s_w", scale), zp]
    n = w_q.dims[0] if trans_b else w_q.dims[1]
    return model(nodes, inits, [vi("x", [2, k])], [vi("y", [2, n])], opset=opset)


def test_matmul_weight_axis():
    w = t("w_q", np.ones((8, 3), np.int8))
    assert_valid(_matmul_w(w, np.full(3, 0.1, np.float32), t("zp_w", np.zeros(3, np.int8)), axis=1))
    assert_only(_matmul_w(w, np.full(8, 0.1, np.float32), t("zp_w", np.zeros(8, np.int8)), axis=0),
                "weight-per-channel-axis", ["dq_w"])


def test_gemm_weight_axis_follows_transB():
    w = t("w_q", np.ones((3, 8), np.int8))  # transB=1: [N, K] -> output axis 0
    assert_valid(_matmul_w(w, np.full(3, 0.1, np.float32), t("zp_w", np.zeros(3, np.int8)),
                           op="Gemm", trans_b=1, axis=0))
    assert_only(_matmul_w(w, np.full(8, 0.1, np.float32), t("zp_w", np.zeros(8, np.int8)),
                          op="Gemm", trans_b=1, axis=1), "weight-per-channel-axis", ["dq_w"])
    w = t("w_q", np.ones((8, 3), np.int8))  # transB=0: [K, N] -> output axis 1
    assert_valid(_matmul_w(w, np.full(3, 0.1, np.float32), t("zp_w", np.zeros(3, np.int8)),
                           op="Gemm", trans_b=0, axis=1))
    assert_only(_matmul_w(w, np.full(8, 0.1, np.float32), t("zp_w", np.zeros(8, np.int8)),
                          op="Gemm", trans_b=0, axis=0), "weight-per-channel-axis", ["dq_w"])


def test_per_channel_scale_of_the_wrong_length_is_flagged():
    w = t("w_q", np.ones((8, 3), np.int8))  # MatMul [K=8, N=3], axis 1 right but 4 scales for 3 channels
    assert_only(_matmul_w(w, np.full(4, 0.1, np.float32), t("zp_w", np.zeros(4, np.int8)), axis=1),
                "weight-per-channel-axis", ["dq_w"])


def test_blockwise_int8_weight_is_flagged():
    w = t("w_q", np.ones((8, 4), np.int8))  # block-wise scales are INT4-only in TensorRT
    m = _matmul_w(w, np.full((2, 4), 0.1, np.float32), t("zp_w", np.zeros((2, 4), np.int8)), opset=21, axis=0,
                  block_size=4)
    assert_only(m, "weight-per-channel-axis", ["dq_w"])
    assert "INT4-only" in check_model(m)[0].message


def test_conv_transpose_weight_axis_is_1():
    def m(axis, n):
        nodes = [helper.make_node("QuantizeLinear", ["x", "s_x", "zp_x"], ["xq"], name="q_x"),
                 helper.make_node("DequantizeLinear", ["xq", "s_x", "zp_x"], ["xd"], name="dq_x"),
                 helper.make_node("DequantizeLinear", ["w_q", "s_w", "zp_w"], ["w_d"], name="dq_w", axis=axis),
                 helper.make_node("ConvTranspose", ["xd", "w_d"], ["y"], name="convt")]
        inits = [t("s_x", np.float32(0.1)), t("zp_x", np.int8(0)), t("w_q", np.ones((4, 6, 2, 2), np.int8)),
                 t("s_w", np.full(n, 0.1, np.float32)), t("zp_w", np.zeros(n, np.int8))]
        return model(nodes, inits, [vi("x", [1, 4, 3, 3])], [vi("y", [1, 6, 4, 4])])
    assert_valid(m(1, 6))
    assert_only(m(0, 4), "weight-per-channel-axis", ["dq_w"])


def test_int4_blockwise_along_reduction_axis_opset21():
    w = t("w_q", np.ones((8, 4), np.int8), TensorProto.INT4)  # MatMul [K=8, N=4]: blocks along K (axis 0)
    zp = lambda shape: t("zp_w", np.zeros(shape, np.int8), TensorProto.INT4)  # noqa: E731
    good = _matmul_w(w, np.full((2, 4), 0.1, np.float32), zp((2, 4)), opset=21, axis=0, block_size=4)
    assert_valid(good)
    bad = _matmul_w(w, np.full((8, 1), 0.1, np.float32), zp((8, 1)), opset=21, axis=1, block_size=4)
    assert_only(bad, "weight-per-channel-axis", ["dq_w"])


# -- weight-initializer-dq ------------------------------------------------------------------------
def test_quantize_on_float_weight_is_flagged():
    assert_only(qconv(q_weight=True), "weight-initializer-dq", ["q_w"])


def test_float_weight_into_quantized_conv_is_flagged():
    assert_only(qconv(weight_float=True), "weight-initializer-dq", ["conv"])


def test_float_conv_is_allowed():
    m = model([helper.make_node("Conv", ["x", "w"], ["y"], name="conv")], [t("w", np.ones((2, 4, 1, 1), np.float32))],
              [vi("x", [1, 4, 3, 3])], [vi("y", [1, 2, 3, 3])])
    assert_valid(m, sparsity=None)


# -- qdq-on-inputs --------------------------------------------------------------------------------
def _act_matmul(dq_b: bool, dq_a: bool = True):
    nodes, a, b = [], "a", "b"
    for name, on in (("a", dq_a), ("b", dq_b)):
        if on:
            nodes += [helper.make_node("QuantizeLinear", [name, "s", "zp"], [name + "q"], name="q_" + name),
                      helper.make_node("DequantizeLinear", [name + "q", "s", "zp"], [name + "d"], name="dq_" + name)]
    a = "ad" if dq_a else "a"
    b = "bd" if dq_b else "b"
    nodes.append(helper.make_node("MatMul", [a, b], ["y"], name="mm"))
    return model(nodes, [t("s", np.float32(0.1)), t("zp", np.int8(0))], [vi("a", [2, 3]), vi("b", [3, 2])],
                 [vi("y", [2, 2])])


def test_activation_matmul_needs_qdq_on_both_inputs():
    assert_valid(_act_matmul(dq_b=True))
    assert_valid(_act_matmul(dq_a=False, dq_b=False))  # entirely float: mixed precision is allowed
    assert_only(_act_matmul(dq_b=False), "qdq-on-inputs", ["mm"])


def test_weight_only_conv_is_flagged_but_weight_only_matmul_is_allowed():
    m = qconv()
    dq_x = next(n for n in m.graph.node if n.name == "dq_x")
    conv = next(n for n in m.graph.node if n.name == "conv")
    conv.input[0] = "x"  # data input left float, weight still DQ'd
    m.graph.node.remove(dq_x)
    m.graph.node.remove(next(n for n in m.graph.node if n.name == "q_x"))
    m.graph.initializer.remove(next(i for i in m.graph.initializer if i.name == "s_x"))
    m.graph.initializer.remove(next(i for i in m.graph.initializer if i.name == "zp_x"))
    assert_only(m, "qdq-on-inputs", ["conv"])

    w = t("w_q", np.ones((8, 4), np.int8), TensorProto.INT4)
    nodes = [helper.make_node("DequantizeLinear", ["w_q", "s_w", "zp_w"], ["w_d"], name="dq_w", axis=0, block_size=4),
             helper.make_node("MatMul", ["x", "w_d"], ["y"], name="mm")]
    inits = [w, t("s_w", np.full((2, 4), 0.1, np.float32)), t("zp_w", np.zeros((2, 4), np.int8), TensorProto.INT4)]
    assert_valid(model(nodes, inits, [vi("x", [2, 8])], [vi("y", [2, 4])], opset=21))


def test_gemm_with_quantized_and_float_activation_inputs():
    m = _act_matmul(dq_b=False)
    mm = next(n for n in m.graph.node if n.name == "mm")
    mm.op_type = "Gemm"
    assert_only(m, "qdq-on-inputs", ["mm"])
    assert_valid(_act_matmul(dq_b=True))


def test_weight_only_conv_transpose_is_flagged():
    nodes = [helper.make_node("DequantizeLinear", ["w_q", "s_w", "zp_w"], ["w_d"], name="dq_w", axis=1),
             helper.make_node("ConvTranspose", ["x", "w_d"], ["y"], name="convt")]
    inits = [t("w_q", np.ones((4, 6, 2, 2), np.int8)), t("s_w", np.full(6, 0.1, np.float32)),
             t("zp_w", np.zeros(6, np.int8))]
    assert_only(model(nodes, inits, [vi("x", [1, 4, 3, 3])], [vi("y", [1, 6, 4, 4])]), "qdq-on-inputs", ["convt"])


# -- residual-add-quantized -----------------------------------------------------------------------
def test_residual_add_needs_dequantized_residual():
    assert_valid(qconv(residual="xd"))
    assert_only(qconv(residual="x"), "residual-add-quantized", ["add"])


def _requantized_conv_add(residual_dq: bool):
    """Conv -> Q -> DQ -> Add(residual): the Conv output quantized, the residual quantized or not."""
    m = qconv()
    m.graph.node.extend([helper.make_node("QuantizeLinear", ["c", "s_x", "zp_x"], ["cq"], name="q_c"),
                         helper.make_node("DequantizeLinear", ["cq", "s_x", "zp_x"], ["cd"], name="dq_c"),
                         helper.make_node("Add", ["cd", "xd" if residual_dq else "x"], ["y"], name="add")])
    del m.graph.output[:]
    m.graph.output.append(vi("y", [1, 4, 5, 5]))
    return m


def test_residual_add_after_requantized_conv():
    assert_valid(_requantized_conv_add(True))
    assert_only(_requantized_conv_add(False), "residual-add-quantized", ["add"])


def test_residual_add_after_float_conv_is_not_checked():
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c", "x"], ["y"], name="add")]
    m = model(nodes, [t("w", np.ones((4, 4, 3, 3), np.float32))], [vi("x", [1, 4, 5, 5])], [vi("y", [1, 4, 5, 5])])
    assert_valid(m)


# -- opset-fp8 ------------------------------------------------------------------------------------
def _fp8_chain(opset, dtype=TensorProto.FLOAT8E4M3FN):
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"], name="q"),
             helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["y"], name="dq")]
    return model(nodes, [t("s", np.float32(0.1)), helper.make_tensor("zp", dtype, [], [0.0])],
                 [vi("x", [2])], [vi("y", [2])], opset=opset)


def test_fp8_needs_opset_19():
    assert_valid(_fp8_chain(19))
    assert_only(_fp8_chain(13), "opset-fp8", ["q", "dq"])


def test_fp8_e5m2_is_not_a_tensorrt_type():
    assert_only(_fp8_chain(19, TensorProto.FLOAT8E5M2), "qdq-dtype", ["q", "dq"])


# -- int4-weight-only and INT4 opset ------------------------------------------------------------------
def _int4_activation(opset=21):
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"], name="q"),
             helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["y"], name="dq")]
    return model(nodes, [t("s", np.float32(0.1)), t("zp", np.int8(0), TensorProto.INT4)],
                 [vi("x", [2])], [vi("y", [2])], opset=opset)


def test_int4_on_an_activation_is_flagged():
    assert_only(_int4_activation(), "int4-weight-only", ["q", "dq"])


def test_int4_by_output_dtype_without_zero_point():
    nodes = [helper.make_node("QuantizeLinear", ["x", "s"], ["q"], name="q", output_dtype=TensorProto.INT4),
             helper.make_node("DequantizeLinear", ["q", "s"], ["y"], name="dq")]
    m = model(nodes, [t("s", np.float32(0.1))], [vi("x", [2])], [vi("y", [2])], opset=21)
    assert_only(m, "int4-weight-only", ["q", "dq"])


def test_int4_weight_needs_opset_21():
    w = t("w_q", np.ones((8, 4), np.int8), TensorProto.INT4)  # per-tensor INT4 weight, weight-only MatMul
    nodes = [helper.make_node("DequantizeLinear", ["w_q", "s_w", "zp_w"], ["w_d"], name="dq_w"),
             helper.make_node("MatMul", ["x", "w_d"], ["y"], name="mm")]
    inits = [w, t("s_w", np.float32(0.1)), t("zp_w", np.int8(0), TensorProto.INT4)]
    mk = lambda opset: model(nodes, inits, [vi("x", [2, 8])], [vi("y", [2, 4])], opset=opset)  # noqa: E731
    assert_valid(mk(21))
    assert_only(mk(19), "qdq-dtype", ["dq_w"])


# -- sparsity-2-4 ---------------------------------------------------------------------------------
def test_conv_int8_weight_2_4_along_input_channels():
    rng = np.random.default_rng(1)
    w = sparse_24((4, 8, 3, 3), 1, rng)
    m = lambda w: model(  # noqa: E731
        [helper.make_node("QuantizeLinear", ["x", "s_x", "zp_x"], ["xq"], name="q_x"),
         helper.make_node("DequantizeLinear", ["xq", "s_x", "zp_x"], ["xd"], name="dq_x"),
         helper.make_node("DequantizeLinear", ["w_q", "s_w", "zp_w"], ["w_d"], name="dq_w", axis=0),
         helper.make_node("Conv", ["xd", "w_d"], ["y"], name="conv")],
        [t("s_x", np.float32(0.1)), t("zp_x", np.int8(0)), t("w_q", w), t("s_w", np.full(4, 0.1, np.float32)),
         t("zp_w", np.zeros(4, np.int8))], [vi("x", [1, 8, 5, 5])], [vi("y", [1, 4, 3, 3])])
    assert_valid(m(w), sparsity="2:4")
    bad = w.copy()
    bad[2, 5, 1, 0] = 7  # group of input channels 4..7 at (k=2, r=1, s=0) now has 3 nonzeros
    assert_only(m(bad), "sparsity-2-4", ["conv"], sparsity="2:4")
    assert check_model(m(bad), sparsity="dense") == [] and check_model(m(bad)) == []
    # 2:4 along the output channels only (rows k = 0, 1 mod 4 dense) is not 2:4 along input channels
    rows = np.zeros((4, 8, 3, 3), np.int8)
    rows[[0, 1]] = 5
    assert nm_violations(rows, 0)[0] == 0
    assert_only(m(rows), "sparsity-2-4", ["conv"], sparsity="2:4")


def test_float_matmul_and_gemm_reduction_axis():
    w = np.tile(np.array([1.0, 1.0, 0.0, 0.0], np.float32), (4, 1))  # each row: 2 of 4; column 0: 4 of 4
    gemm = lambda tb: model([helper.make_node("Gemm", ["x", "w"], ["y"], name="gemm", transB=tb)],  # noqa: E731
                            [t("w", w)], [vi("x", [2, 4])], [vi("y", [2, 4])])
    assert_valid(gemm(1), sparsity="2:4")                      # reduction along axis 1: rows
    assert_only(gemm(0), "sparsity-2-4", ["gemm"], sparsity="2:4")  # reduction along axis 0: columns
    mm = model([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], [t("w", w.T.copy())],
               [vi("x", [2, 4])], [vi("y", [2, 4])])
    assert_valid(mm, sparsity="2:4")                           # [K, N] = w.T: columns of w.T are rows of w
    mm_bad = model([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], [t("w", w)],
                   [vi("x", [2, 4])], [vi("y", [2, 4])])
    assert_only(mm_bad, "sparsity-2-4", ["mm"], sparsity="2:4")  # 2:4 along N, not along K


def test_sparse_nodes_limits_the_2_4_rule():
    w = np.ones((4, 4), np.float32)  # dense
    m = model([helper.make_node("MatMul", ["x", "w"], ["h"], name="dense_mm"),
               helper.make_node("MatMul", ["h", "w2"], ["y"], name="sparse_mm")],
              [t("w", w), t("w2", np.tile(np.array([[1], [0], [0], [1]], np.float32), (1, 4)))],
              [vi("x", [2, 4])], [vi("y", [2, 4])])
    assert_only(m, "sparsity-2-4", ["dense_mm"], sparsity="2:4")
    assert check_model(m, sparsity="2:4", sparse_nodes={"sparse_mm"}) == []
    assert [v.node for v in check_model(m, sparsity="2:4", sparse_nodes={"dense_mm", "sparse_mm"})] == ["dense_mm"]


def test_nm_violations_counts_and_first_index():
    w = np.zeros((3, 8, 2))
    w[1, 4:7, 1] = 1.0  # 3 nonzeros in the group of axis-1 entries 4..7 at (1, :, 1)
    bad, total, first = nm_violations(w, 1)
    assert (bad, total, first) == (1, 3 * 2 * 2, (1, 4, 1))
    w6 = np.ones((2, 6))  # 6 = one full group + a half group padded with zeros
    assert nm_violations(w6, 1)[:2] == (2, 4)
    assert nm_violations(np.ones((2, 2)), 1) == (0, 2, ())


# -- table and rendering --------------------------------------------------------------------------
def test_render_format():
    text = render([Violation("conv", "qdq-on-inputs", "msg a"), Violation("add", "residual-add-quantized", "b")])
    assert text.splitlines() == ["node 'conv': [qdq-on-inputs] msg a", "node 'add': [residual-add-quantized] b"]


def test_unnamed_nodes_get_a_stable_name():
    m = model([helper.make_node("ConvInteger", ["a", "b"], ["y"])], [],
              [vi("a", [1, 1, 2, 2], TensorProto.INT8), vi("b", [1, 1, 1, 1], TensorProto.INT8)], [vi("y", None)])
    assert [v.node for v in check_model(m)] == ["ConvInteger_0"]


def test_zz_check_cli_names_node_and_rule_for_every_rule(tmp_path):
    # `hwcompile check` on each rule's invalid models: exit 3 and one line per violation naming node and rule.
    # The CLI first loads the model like compile does; cases it rejects as malformed ONNX (exit 2) are
    # skipped, but every rule must have one case that reaches the rules.
    from typer.testing import CliRunner

    from hwcompile.cli import app

    reached = set()
    for rule, cases in INVALID.items():
        for i, (m, nodes, kw) in enumerate(cases):
            path = tmp_path / f"{rule}_{i}.onnx"
            onnx.save(m, str(path))
            args = ["check", str(path), "--target", "nvidia-ampere"]
            if kw.get("sparsity"):
                args += ["--sparsity", kw["sparsity"]]
            r = CliRunner().invoke(app, args)
            if r.exit_code == 2:
                continue
            assert r.exit_code == 3, (rule, r.output)
            for node in nodes:
                assert f"node '{node}': [{rule}]" in r.output, (rule, r.output)
            reached.add(rule)
            break
    assert reached == set(RULES), set(RULES) - reached


def test_zz_every_rule_has_an_invalid_case():
    # runs last in this file (pytest keeps definition order): every rule id was produced by some test
    assert COVERED == set(RULES), set(RULES) - COVERED
    assert all(isinstance(d, str) and d and "\n" not in d for d in RULES.values())
