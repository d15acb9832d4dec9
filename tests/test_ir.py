"""Import/export: round trips of real models, determinism, safety checks, bad input."""
from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import hwcompile.ir as hir
from hwcompile.errors import ModelLoadError, PassError, UnsupportedError
from hwcompile.passes import cleanup

from conftest import assert_close, conv_bn_model, random_feeds, rapidocr_models, session, zoo_models


@pytest.mark.parametrize("path", zoo_models() + rapidocr_models(), ids=lambda p: p.name)
def test_real_models_round_trip_through_cleanup(path):
    original = session(path)
    feeds = random_feeds(original, dims={})
    ref = original.run(None, feeds)
    graph = cleanup(hir.load(path))
    graph.lint()
    out = session(hir.to_proto(graph)).run(None, {k: v for k, v in feeds.items()
                                                   if k in {i.name for i in graph.main.inputs}})
    assert_close(ref, out, 1e-4)


def test_export_is_deterministic(tmp_path):
    p = tmp_path / "m.onnx"
    onnx.save(conv_bn_model(), p)
    a = hir.to_bytes(cleanup(hir.load(p)))
    b = hir.to_bytes(cleanup(hir.load(p)))
    assert a == b
    hir.save(cleanup(hir.load(p)), tmp_path / "a.onnx")
    hir.save(cleanup(hir.load(p)), tmp_path / "b.onnx")
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


def test_unnamed_nodes_get_stable_unique_ids(tmp_path):
    m = conv_bn_model()
    for n in m.graph.node:
        n.name = ""
    p = tmp_path / "m.onnx"
    onnx.save(m, p)
    g1, g2 = hir.load(p), hir.load(p)
    names = [n.name for n in g1.nodes()]
    assert all(names) and len(set(names)) == len(names)
    assert names == [n.name for n in g2.nodes()]


def test_old_opset_is_converted(tmp_path):
    p = tmp_path / "m.onnx"
    onnx.save(conv_bn_model(opset=9), p)
    g = hir.load(p)
    assert g.opset >= 13
    feeds = random_feeds(session(p))
    assert_close(session(p).run(None, feeds), session(hir.to_proto(g)).run(None, feeds))


@pytest.mark.parametrize("content,msg", [(b"", "empty"), (b"not an onnx file at all", "not"), ])
def test_bad_files(tmp_path, content, msg):
    p = tmp_path / "bad.onnx"
    p.write_bytes(content)
    with pytest.raises(ModelLoadError, match=msg):
        hir.load(p)


def test_truncated_file(tmp_path):
    p = tmp_path / "m.onnx"
    data = conv_bn_model().SerializeToString()
    p.write_bytes(data[: len(data) // 2])
    before = p.read_bytes()
    with pytest.raises(ModelLoadError):
        hir.load(p)
    assert p.read_bytes() == before


def test_missing_file(tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        hir.load(tmp_path / "nope.onnx")


def test_unknown_op_names_the_node(tmp_path):
    m = conv_bn_model()
    m.graph.node[2].op_type = "FancyRelu"
    m.graph.node[2].domain = "my.domain"
    m.opset_import.append(helper.make_opsetid("my.domain", 1))
    p = tmp_path / "m.onnx"
    onnx.save(m, p)
    with pytest.raises(UnsupportedError, match="relu1"):
        hir.load(p)


def _external_model(tmp_path, location: str):
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    onnx.external_data_helper.set_external_data(w, location=location)
    w.ClearField("raw_data")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    d = tmp_path / "model"
    d.mkdir()
    (d / "m.onnx").write_bytes(m.SerializeToString())
    return d


@pytest.mark.parametrize("location", ["../secret.bin", "/etc/passwd", "sub/../../secret.bin"])
def test_external_data_outside_folder_is_refused(tmp_path, location):
    (tmp_path / "secret.bin").write_bytes(np.ones(16, np.float32).tobytes())
    d = _external_model(tmp_path, location)
    with pytest.raises(ModelLoadError, match="leaves the model's folder"):
        hir.load(d / "m.onnx")


def test_external_data_symlink_is_refused(tmp_path):
    (tmp_path / "secret.bin").write_bytes(np.ones(16, np.float32).tobytes())
    d = _external_model(tmp_path, "w.bin")
    os.symlink(tmp_path / "secret.bin", d / "w.bin")
    with pytest.raises(ModelLoadError, match="symlink"):
        hir.load(d / "m.onnx")


def test_external_data_inside_folder_loads(tmp_path):
    d = _external_model(tmp_path, "w.bin")
    (d / "w.bin").write_bytes((np.arange(16, dtype=np.float32)).tobytes())
    g = hir.load(d / "m.onnx")
    w = g.main.initializers["w"].const_value.numpy()
    assert np.array_equal(w.reshape(-1), np.arange(16, dtype=np.float32))


def test_control_flow_is_carried_through(tmp_path):
    then_g = helper.make_graph([helper.make_node("Relu", ["x"], ["t"])], "then", [],
                               [helper.make_tensor_value_info("t", TensorProto.FLOAT, [2])])
    else_g = helper.make_graph([helper.make_node("Neg", ["x"], ["e"])], "else", [],
                               [helper.make_tensor_value_info("e", TensorProto.FLOAT, [2])])
    g = helper.make_graph(
        [helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
         helper.make_node("Greater", ["s", "zero"], ["c"]),
         helper.make_node("If", ["c"], ["y"], name="branch", then_branch=then_g, else_branch=else_g)],
        "cf", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        [numpy_helper.from_array(np.array(0, np.float32), "zero")])
    p = tmp_path / "cf.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), p)
    graph = cleanup(hir.load(p))
    assert any(n.op_type == "If" for n in graph.nodes())
    for x in (np.array([1, -2], np.float32), np.array([-3, 1], np.float32)):
        assert np.array_equal(session(p).run(None, {"x": x})[0], session(hir.to_proto(graph)).run(None, {"x": x})[0])


def test_lint_catches_out_of_order_nodes(tmp_path):
    p = tmp_path / "m.onnx"
    onnx.save(conv_bn_model(), p)
    g = hir.load(p)
    nodes = g.nodes()
    g.main.remove(nodes[0])
    g.main.append(nodes[0])
    with pytest.raises(PassError, match="before it is defined"):
        g.lint()


def test_erase_refuses_node_with_users(tmp_path):
    p = tmp_path / "m.onnx"
    onnx.save(conv_bn_model(), p)
    g = hir.load(p)
    with pytest.raises(PassError, match="still used"):
        g.erase(g.node("conv1"))


def test_networkx_view(tmp_path):
    p = tmp_path / "m.onnx"
    onnx.save(conv_bn_model(), p)
    nxg = hir.load(p).to_networkx()
    assert list(nxg.successors("conv1")) == ["bn1"]
    assert nxg.nodes["relu1"]["op"] == "Relu"


def test_negative_dim_value_means_unknown_and_shape_override_fits(tmp_path):
    """PaddlePaddle exports (RapidOCR's classifier) declare the batch as dim_value -1."""
    from hwcompile.pipeline import CompileOptions, compile_model

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 3, None, None])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [-1, 3, None, None])
    model = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="relu")], "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "neg.onnx"
    onnx.save(model, path)
    graph = hir.load(path)
    dims = graph.model.graph.inputs[0].shape.dims
    assert not isinstance(dims[0], int) and dims[1] == 3
    out = tmp_path / "out"
    compile_model(path, "host-cpu", out, CompileOptions(repeats=2, warmup=1, per_layer_profile=False,
                                                         input_shapes={"x": [2, 3, 8, 8]}))
    assert (out / "model.onnx").exists()
