"""Dynamic dimensions, Constant-node weights and literal brackets, as the corpus met them: a
dynamic-length model is measured at the data's shape or refused with the input, dimension and
--shape named; `profile --shape` prints what it ran; inspect/analyze count Constant weights;
messages and help keep their [...] text."""
from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from hwcompile.cli import app

runner = CliRunner()


def _run(*args):
    return runner.invoke(app, [str(a) for a in args])


def reflect_pad_model(constant_weights: bool = False) -> onnx.ModelProto:
    """x[N, L] -> Pad(reflect, 2 each side) -> Unsqueeze -> Conv1d(4 filters, k=5) -> y[N, 4, L]: like
    silero's STFT front end, it fails at L = 1 (reflect needs L >= 3 here)."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 1, 5)).astype(np.float32), "w")
    pads = numpy_helper.from_array(np.array([0, 2, 0, 2], np.int64), "pads")
    ax = numpy_helper.from_array(np.array([1], np.int64), "ax")
    nodes = [helper.make_node("Pad", ["x", "pads"], ["xp"], name="pad", mode="reflect"),
             helper.make_node("Unsqueeze", ["xp", "ax"], ["x3"], name="unsqueeze"),
             helper.make_node("Conv", ["x3", "w"], ["y"], name="conv")]
    inits = [pads, ax]
    if constant_weights:
        nodes.insert(0, helper.make_node("Constant", [], ["w"], name="w_const", value=w))
    else:
        inits.append(w)
    g = helper.make_graph(nodes, "reflect", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "L"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, "L"])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _model(tmp_path, **kw):
    p = tmp_path / "m.onnx"
    onnx.save(reflect_pad_model(**kw), p)
    return p


def test_dynamic_length_without_data_names_input_dimension_and_shape_option(tmp_path):
    out = tmp_path / "out"
    r = _run("compile", _model(tmp_path), "--out", out, "--repeats", 3)
    assert r.exit_code == 2, r.output
    assert "input 'x' dimension 1 (L)" in r.output and "--shape x=1,N" in r.output
    assert not out.exists()


def test_dynamic_length_is_taken_from_the_eval_data_and_recorded(tmp_path):
    data = tmp_path / "eval.npz"
    np.savez(data, x=np.random.default_rng(1).standard_normal((6, 40)).astype(np.float32))
    out = tmp_path / "out"
    r = _run("compile", _model(tmp_path), "--eval", data, "--out", out, "--repeats", 3)
    assert r.exit_code == 0, r.output
    rep = json.loads((out / "report.json").read_text())
    assert rep["compiled"]["input_shapes"] == {"x": [1, 40]}
    r = _run("profile", out, "--repeats", 3, "--json")  # a compiled folder re-runs its compile's shapes
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["input_shapes"] == {"x": [1, 40]}


def test_profile_takes_shape_and_prints_it(tmp_path):
    m = _model(tmp_path)
    r = _run("profile", m, "--repeats", 3)
    assert r.exit_code == 2 and "--shape" in r.output
    r = _run("profile", m, "--repeats", 3, "--shape", "x=2,64")
    assert r.exit_code == 0, r.output
    assert "inputs: x [2, 64]" in r.output


def test_inspect_and_analyze_count_constant_node_weights(tmp_path):
    m = _model(tmp_path, constant_weights=True)
    r = _run("inspect", m, "--json")
    assert r.exit_code == 0, r.output
    s = json.loads(r.output)
    assert s["params"] == 4 * 5 + 4 + 1 and s["constant_nodes_lifted"] == 1  # w, pads, ax
    r = _run("analyze", m, "--json", "--min-size", 1)
    assert r.exit_code == 0, r.output
    assert "w" in [row["name"] for row in json.loads(r.output)["tensors"]]


def test_missing_input_lists_the_arrays_the_file_holds_brackets_intact(tmp_path):
    data = tmp_path / "calib.npz"
    np.savez(data, audio=np.zeros((2, 8), np.float32), lengths=np.ones(2))
    r = _run("compile", _model(tmp_path), "--precision", "int8", "--calib", data, "--out", tmp_path / "o")
    assert r.exit_code == 2, r.output
    assert "no data for model input(s) ['x'] (the file has ['audio', 'lengths'])" in " ".join(r.output.split())


def test_help_keeps_bracketed_text():
    r = _run("compile", "--help")
    assert r.exit_code == 0
    assert "the target's [quant]" in " ".join(r.output.split())
