"""Clean-up and BN-folding passes: lint after each, numerics against onnxruntime."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import hwcompile.ir as hir
from hwcompile.passes import (cleanup, eliminate_dead_code, eliminate_identity, fold_bn, fold_constants,
                              lift_constants, run_passes)

from conftest import assert_close, conv_bn_model, random_feeds, rapidocr_models, session


def _load(tmp_path, model: onnx.ModelProto):
    p = tmp_path / "m.onnx"
    onnx.save(model, p)
    return p, hir.load(p)


def _check_equal(path, graph, rel=1e-5):
    ref_sess = session(path)
    feeds = random_feeds(ref_sess)
    assert_close(ref_sess.run(None, feeds), session(hir.to_proto(graph)).run(None, feeds), rel)


def _ops(graph):
    return [n.op_type for n in graph.nodes()]


def test_fold_bn_conv(tmp_path):
    p, g = _load(tmp_path, conv_bn_model())
    g = run_passes(g, [fold_bn])
    assert "BatchNormalization" not in _ops(g)
    _check_equal(p, g)


def test_fold_bn_declines_shared_weight_and_extra_use(tmp_path):
    p, g = _load(tmp_path, conv_bn_model(shared_weight=True, extra_use=True))
    g = run_passes(g, [fold_bn])
    assert _ops(g).count("BatchNormalization") == 2
    reasons = g.meta["fold_bn_declined"]
    assert "shared" in reasons["bn2"] and "other nodes" in reasons["bn1"]
    _check_equal(p, g)


def test_lone_bn_stays_correct(tmp_path):
    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array(rng.uniform(0.5, 2, 3).astype(np.float32), n) for n in ("g", "v")]
    inits += [numpy_helper.from_array(rng.standard_normal(3).astype(np.float32), n) for n in ("b", "m")]
    gr = helper.make_graph([helper.make_node("BatchNormalization", ["x", "g", "b", "m", "v"], ["y"], name="bn")], "g",
                           [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4, 4])],
                           [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 4, 4])], inits)
    p, g = _load(tmp_path, helper.make_model(gr, opset_imports=[helper.make_opsetid("", 17)]))
    g = cleanup(g)
    assert _ops(g) == ["BatchNormalization"]
    _check_equal(p, g)


def _linear_bn(op: str, **attrs) -> onnx.ModelProto:
    rng = np.random.default_rng(2)
    f = lambda name, shape: numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
    pos = lambda name, shape: numpy_helper.from_array(rng.uniform(0.5, 2, shape).astype(np.float32), name)
    if op == "ConvTranspose":
        x_shape, w_shape, c, y_shape = [1, 4, 5, 5], (4, 3, 3, 3), 6, [1, 6, 7, 7]  # group=2: C=4, K/g=3
        ins = ["x", "w", "b"]
        extra = [f("b", (6,))]
    elif op == "Gemm":
        x_shape, c, y_shape = [3, 5], 6, [3, 6]
        w_shape = (6, 5) if attrs.get("transB") else (5, 6)
        ins, extra = ["x", "w", "b"], [f("b", (6,))]
    else:  # MatMul
        x_shape, w_shape, c, y_shape, ins, extra = [3, 5], (5, 6), 6, [3, 6], ["x", "w"], []
    inits = [f("w", w_shape), pos("g", (c,)), f("be", (c,)), f("m", (c,)), pos("v", (c,))] + extra
    nodes = [helper.make_node(op, ins, ["h"], name="lin", **attrs),
             helper.make_node("BatchNormalization", ["h", "g", "be", "m", "v"], ["y"], name="bn")]
    gr = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                           [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)], inits)
    return helper.make_model(gr, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("op,attrs", [("ConvTranspose", {"group": 2}), ("Gemm", {"transB": 1, "alpha": 0.5, "beta": 2.0}),
                                      ("Gemm", {}), ("MatMul", {})], ids=["convT-grouped", "gemm-transB-alpha-beta", "gemm", "matmul"])
def test_fold_bn_into_other_linear_ops(tmp_path, op, attrs):
    p, g = _load(tmp_path, _linear_bn(op, **attrs))
    g = run_passes(g, [fold_bn])
    assert "BatchNormalization" not in _ops(g)
    assert g.main.outputs[0].name == "y"
    _check_equal(p, g)


def test_rapidocr_classifier_bn_folded():
    paths = [p for p in rapidocr_models() if "cls" in p.name]
    if not paths:
        pytest.skip("rapidocr-onnxruntime==1.4.4 is not installed (pip install --no-deps rapidocr-onnxruntime==1.4.4)")
    g = hir.load(paths[0])
    assert _ops(g).count("BatchNormalization") == 35
    g = cleanup(g)
    assert _ops(g).count("BatchNormalization") == 0
    _check_equal(paths[0], g, 1e-4)


def _pytorch_style_pad() -> onnx.ModelProto:
    """Shape -> Gather -> Sub -> Concat -> Pad: the dynamic-pad arithmetic a torch export leaves."""
    c = lambda name, arr: helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(arr), name))
    nodes = [
        helper.make_node("Shape", ["x"], ["s"], name="shape"),
        c("idx", np.array(3, np.int64)),
        helper.make_node("Gather", ["s", "idx"], ["w"], axis=0, name="gather"),
        c("eight", np.array(8, np.int64)),
        helper.make_node("Sub", ["eight", "w"], ["d"], name="sub"),
        helper.make_node("Unsqueeze", ["d", "ax"], ["du"], name="unsq"),
        c("zeros", np.zeros(7, np.int64)),
        helper.make_node("Concat", ["zeros", "du"], ["pads"], axis=0, name="concat"),
        helper.make_node("Identity", ["x"], ["xi"], name="ident"),
        helper.make_node("Pad", ["xi", "pads"], ["y"], name="pad"),
        helper.make_node("Relu", ["x"], ["dead"], name="dead_relu"),
    ]
    gr = helper.make_graph(nodes, "pad", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3, 5])],
                           [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 3, 8])],
                           [numpy_helper.from_array(np.array([0], np.int64), "ax")])
    return helper.make_model(gr, opset_imports=[helper.make_opsetid("", 17)])


def test_cleanup_resolves_shape_arithmetic(tmp_path):
    p, g = _load(tmp_path, _pytorch_style_pad())
    log = {}
    g = cleanup(g, log=log)
    assert _ops(g) == ["Pad"]
    assert log["fold_constants"]["nodes_folded"] >= 5 and log["lift_constants"]["constants_lifted"] == 3
    _check_equal(p, g, 0.0)


def test_each_cleanup_pass_alone_preserves_outputs(tmp_path):
    for ps in ([lift_constants], [lift_constants, fold_constants], [eliminate_identity], [eliminate_dead_code]):
        p, g = _load(tmp_path, _pytorch_style_pad())
        g = run_passes(g, ps)
        _check_equal(p, g, 0.0)
    assert "Relu" not in _ops(g) and "Identity" in _ops(g)


def test_folding_does_not_materialize_huge_constants(tmp_path):
    gr = helper.make_graph([helper.make_node("ConstantOfShape", ["shape"], ["big"], name="cos",
                                             value=numpy_helper.from_array(np.array([1.0], np.float32))),
                            helper.make_node("Add", ["x", "big"], ["y"], name="add")], "g",
                           [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2048, 1024])],
                           [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2048, 1024])],
                           [numpy_helper.from_array(np.array([2048, 1024], np.int64), "shape")])
    p, g = _load(tmp_path, helper.make_model(gr, opset_imports=[helper.make_opsetid("", 17)]))
    g = cleanup(g)
    assert "ConstantOfShape" in _ops(g)


def _pad_conv(pad_value=0.0, pads=(0, 0, 1, 0, 0, 0, 2, 1), mode="constant") -> onnx.ModelProto:
    rng = np.random.default_rng(4)
    inits = [numpy_helper.from_array(np.array(pads, np.int64), "p"),
             numpy_helper.from_array(np.array(pad_value, np.float32), "v"),
             numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")]
    nodes = [helper.make_node("Pad", ["x", "p", "v"], ["xp"], name="pad", mode=mode),
             helper.make_node("Conv", ["xp", "w"], ["y"], name="conv", pads=[1, 1, 0, 0], strides=[2, 2])]
    gr = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 9, 9])],
                           [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    gr.output[0].type.tensor_type.shape.Clear()
    return helper.make_model(gr, opset_imports=[helper.make_opsetid("", 17)])


def test_zero_pad_fuses_into_conv(tmp_path):
    from hwcompile.passes import fuse_pad_into_conv

    p, g = _load(tmp_path, _pad_conv())
    g = run_passes(g, [fuse_pad_into_conv])
    assert _ops(g) == ["Conv"]
    assert list(g.node("conv").attributes["pads"].as_ints()) == [2, 1, 2, 1]
    _check_equal(p, g, 0.0)


@pytest.mark.parametrize("kw", [{"pad_value": 1.0}, {"mode": "reflect"}, {"pads": (1, 0, 0, 0, 0, 0, 0, 0)}])
def test_pad_fusion_declines(tmp_path, kw):
    from hwcompile.passes import fuse_pad_into_conv

    p, g = _load(tmp_path, _pad_conv(**kw))
    g = run_passes(g, [fuse_pad_into_conv])
    assert "Pad" in _ops(g) and g.meta["fuse_pad_declined"]["pad"]
    _check_equal(p, g, 0.0)
