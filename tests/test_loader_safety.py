"""The loader refuses external data that leaves the model's folder or does not match its tensor, inline
tensors whose bytes disagree with their shape, and graphs past the caps; external tensors stay in
their files (memory-mapped), so a large model is not held in memory twice."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

import hwcompile.ir as hir
from hwcompile.cli import app
from hwcompile.errors import ModelLoadError
from hwcompile.ir import safety

ROOT = Path(__file__).resolve().parents[1]


def _model(w: TensorProto, nodes=None, inputs=None) -> onnx.ModelProto:
    g = helper.make_graph(nodes or [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
                          inputs or [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [w])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _external(tmp_path, location="w.bin", data=None, offset=None, length=None):
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    onnx.external_data_helper.set_external_data(w, location=location, offset=offset, length=length)
    w.ClearField("raw_data")
    d = tmp_path / "model"
    d.mkdir(exist_ok=True)
    if data is not None:
        (d / "w.bin").write_bytes(data)
    (d / "m.onnx").write_bytes(_model(w).SerializeToString())
    return d / "m.onnx"


W = np.arange(16, dtype=np.float32).tobytes()


def _refused(path, match):
    with pytest.raises(ModelLoadError, match=match) as e:
        hir.load(path)
    assert str(path) in str(e.value) and "'w'" in str(e.value)


@pytest.mark.parametrize("location", ["../secret.bin", "/etc/passwd", "sub/../../secret.bin", "C:secret.bin",
                                      "..\\secret.bin", "w.bin\0x"])
def test_locations_leaving_the_folder(tmp_path, location):
    (tmp_path / "secret.bin").write_bytes(W)
    _refused(_external(tmp_path, location, W), "leaves the model's folder")


def test_symlinked_folder_and_file(tmp_path):
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "w.bin").write_bytes(W)
    p = _external(tmp_path, "sub/w.bin")
    os.symlink(tmp_path / "outside", p.parent / "sub")
    _refused(p, "symlink")


def test_device_and_pipe_are_not_read(tmp_path):
    p = _external(tmp_path, "w.bin")
    os.mkfifo(p.parent / "w.bin")
    _refused(p, "not a regular file")  # a read would block forever


def test_directory_as_location(tmp_path):
    p = _external(tmp_path, "w.bin")
    (p.parent / "w.bin").mkdir()
    _refused(p, "not a regular file")


@pytest.mark.parametrize("data, offset, length, match", [
    (W[:40], None, None, "external data has 40 bytes"),
    (W, 8, None, "external data has 56 bytes"),
    (W, 0, 128, "truncated"),
    (W, 60, 64, "truncated"),
    (W + W, 0, 32, "external data has 32 bytes"),
])
def test_external_size_must_match_the_tensor(tmp_path, data, offset, length, match):
    _refused(_external(tmp_path, "w.bin", data, offset, length), match)


def test_missing_external_file(tmp_path):
    _refused(_external(tmp_path, "w.bin"), "missing")


def test_external_offset_inside_a_shared_file_loads(tmp_path):
    p = _external(tmp_path, "w.bin", b"\0" * 64 + W, 64, 64)
    g = hir.load(p)
    assert np.array_equal(g.main.initializers["w"].const_value.numpy().reshape(-1), np.arange(16))


def test_inline_bytes_must_match_the_shape(tmp_path):
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    w.raw_data = w.raw_data[:-4]
    p = tmp_path / "m.onnx"
    p.write_bytes(_model(w).SerializeToString())
    _refused(p, r"declares shape \[4, 4\] \(64 bytes\) but holds 60 bytes")
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 4], [1.0] * 16)
    del w.float_data[-1]
    p.write_bytes(_model(w).SerializeToString())
    _refused(p, r"\(16 values\) but holds 15")


def test_huge_declared_input_is_refused(tmp_path):
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1 << 20, 1 << 20, 4])
    p = tmp_path / "m.onnx"
    p.write_bytes(_model(w, inputs=[x]).SerializeToString())
    with pytest.raises(ModelLoadError, match="input 'x' declares shape"):
        hir.load(p)


def _nested_if(depth: int) -> onnx.ModelProto:
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    body = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "leaf", [], [out])
    for i in range(depth):
        node = helper.make_node("If", ["c"], ["y"], then_branch=body, else_branch=body, name=f"if{i}")
        body = helper.make_graph([node], f"level{i}", [], [out])
    g = helper.make_graph(body.node, "main", [helper.make_tensor_value_info("c", TensorProto.BOOL, []),
                                              helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])], [out])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_subgraph_depth_cap(tmp_path):
    p = tmp_path / "deep.onnx"
    p.write_bytes(_nested_if(safety.MAX_DEPTH + 2).SerializeToString())
    with pytest.raises(ModelLoadError, match="nested deeper than"):
        hir.load(p)
    p.write_bytes(_nested_if(3).SerializeToString())
    hir.load(p)


def test_node_cap(tmp_path, monkeypatch):
    monkeypatch.setattr(safety, "MAX_NODES", 3)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    nodes = [helper.make_node("Relu", [f"t{i}" if i else "x"], [f"t{i + 1}" if i < 3 else "y"]) for i in range(4)]
    g = helper.make_graph(nodes, "g", [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])])
    p = tmp_path / "m.onnx"
    p.write_bytes(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    with pytest.raises(ModelLoadError, match="more than 3 nodes"):
        hir.load(p)


def test_cli_names_the_file_and_tensor(tmp_path):
    p = _external(tmp_path, "../secret.bin", W)
    r = CliRunner().invoke(app, ["compile", str(p), "--out", str(tmp_path / "out")])
    assert r.exit_code == 2 and "m.onnx" in r.output and "'w'" in r.output and "internal error" not in r.output
    assert not (tmp_path / "out").exists()


def test_external_tensors_are_memory_mapped_not_copied(tmp_path):
    """A model with 64 MiB of external weights loads with far less than 64 MiB of new resident memory
    (the old path held the bytes in the proto and again in shape inference's copy), and compiles."""
    d = tmp_path / "big"
    d.mkdir()
    n = 4096
    w = numpy_helper.from_array(np.full((n, n), 0.5, np.float32), "w")
    onnx.save_model(_model(w, inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, n])],
                           nodes=[helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")]),
                    d / "m.onnx", save_as_external_data=True, location="w.bin", size_threshold=0)
    code = f"""
import resource, sys
import numpy as np
import onnx_ir as ir
import hwcompile.ir as hir
from hwcompile.pipeline import CompileOptions
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
g = hir.load({str(d / 'm.onnx')!r})
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
t = g.main.initializers["w"].const_value
assert isinstance(t, ir.LazyTensor), type(t)
a = t.numpy()
assert a.shape == ({n}, {n}) and not a.flags.writeable and float(a[7, 9]) == 0.5
print(grown)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr
    grown_kib = int(r.stdout.split()[-1])
    assert grown_kib < 16 * 1024, f"loading grew peak RSS by {grown_kib} KiB"
