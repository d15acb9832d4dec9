"""Every onnxruntime run and profile has a time limit, and onnxruntime failures are HwcompileErrors:
a model whose run never ends is stopped (RunTimeout, exit 2) instead of hanging the compile."""
from __future__ import annotations

import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from typer.testing import CliRunner

from hwcompile import ort_guard
from hwcompile.cli import app
from hwcompile.errors import ConfigError, DeviceError, ModelLoadError, RunTimeout


def _endless_loop(path):
    """y = x + 1 + 1 + ... for 2**62 iterations: a run that does not end in any test's lifetime."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Add", ["v_in", "one"], ["v_out"])], "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_in", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])])
    g = helper.make_graph(
        [helper.make_node("Loop", ["n", "c", "x"], ["y"], body=body, name="forever")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor("n", TensorProto.INT64, [], [2 ** 62]), helper.make_tensor("c", TensorProto.BOOL, [], [True])])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_endless_run_is_stopped(tmp_path, monkeypatch):
    monkeypatch.setenv("HWCOMPILE_RUN_TIMEOUT_S", "1")
    import onnxruntime as ort

    sess = ort_guard.session(str(_endless_loop(tmp_path / "loop.onnx")), ort.SessionOptions(),
                             ["CPUExecutionProvider"], where="loop.onnx")
    t0 = time.monotonic()
    with pytest.raises(RunTimeout, match="longer than 1 s") as e:
        ort_guard.run(sess, None, {"x": np.zeros((1, 64), np.float32)}, where="loop.onnx")
    assert time.monotonic() - t0 < 60 and "loop.onnx" in str(e.value)
    assert isinstance(e.value, DeviceError)


def test_profile_cli_times_out_with_exit_2(tmp_path, monkeypatch):
    monkeypatch.setenv("HWCOMPILE_RUN_TIMEOUT_S", "1")
    r = CliRunner().invoke(app, ["profile", str(_endless_loop(tmp_path / "loop.onnx")), "--repeats", "2"])
    assert r.exit_code == 2, r.output
    assert "longer than 1 s" in r.output and "internal error" not in r.output


def test_bad_timeout_setting(monkeypatch):
    monkeypatch.setenv("HWCOMPILE_RUN_TIMEOUT_S", "soon")
    with pytest.raises(ConfigError, match="HWCOMPILE_RUN_TIMEOUT_S"):
        ort_guard.run_timeout_s()


def test_runtime_rejections_are_load_and_device_errors(tmp_path):
    import onnxruntime as ort

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    shape = helper.make_tensor("s", TensorProto.INT64, [1], [7])
    g = helper.make_graph([helper.make_node("Reshape", ["x", "s"], ["y"], name="reshape7")], "g", [x], [y], [shape])
    sess = ort_guard.session(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString(),
                             ort.SessionOptions(), ["CPUExecutionProvider"], where="m.onnx")
    with pytest.raises(DeviceError, match="reshape7"):
        ort_guard.run(sess, None, {"x": np.zeros((2, 3), np.float32)}, where="m.onnx")
    with pytest.raises(ModelLoadError, match="onnxruntime cannot load the model"):
        ort_guard.session(b"not a model", ort.SessionOptions(), ["CPUExecutionProvider"], where="m.onnx")
