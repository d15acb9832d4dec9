"""The onnxruntime backend's session settings and weight formats: what it measures is what it ships."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from hwcompile.backends.onnxruntime import OnnxRuntimeBackend, session_options
from hwcompile.ir import from_proto
from hwcompile.contract import PrecisionPlan
from hwcompile.targets import load_target


def matmul_model() -> onnx.ModelProto:
    w = helper.make_tensor("w", TensorProto.FLOAT, [8, 4], np.ones((8, 4), np.float32))
    vi = lambda n, d: helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, d])
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "mm", [vi("x", 8)],
                          [vi("y", 4)], [w])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("spinning", [None, True])
def test_session_json_carries_spinning_and_the_profiled_session_uses_it(tmp_path, spinning):
    """The artifact's session.json says whether intra-op workers spin (off unless the target turns it
    on), and the session the backend builds from it follows it."""
    target = load_target("host-cpu")
    if spinning is not None:
        target = dataclasses.replace(target, settings={**target.settings, "allow_spinning": spinning})
    art = OnnxRuntimeBackend().lower(from_proto(matmul_model()), PrecisionPlan.uniform("fp32"), target, tmp_path / "a")
    settings = json.loads(art.path("session").read_text())
    assert settings["allow_spinning"] is bool(spinning)
    entry = session_options(settings).get_session_config_entry("session.intra_op.allow_spinning")
    assert entry == ("1" if spinning else "0")


@pytest.mark.parametrize("int8_dot", [False, True])
def test_weight_formats_follow_the_cpus_int8_dot_product(monkeypatch, int8_dot):
    """Without VNNI/AMX/ARM dot products (AVX2's u8 x s8 pair sums saturate int16), Conv weights stay
    in 7 bits and dynamic-INT8 GEMM weights are 7-bit int8; with them, full 8-bit weights are exact and
    used. What the QUANT_NOTES and the MiniLM 2x discussion rely on, on whichever CPU runs the tests."""
    import hwcompile.backends.onnxruntime as ortb
    from hwcompile.passes.quantize_dynamic import dynamic_weight_format

    monkeypatch.setattr(ortb, "cpu_has_int8_dot", lambda: int8_dot)
    style = OnnxRuntimeBackend().qdq_style(load_target("host-cpu"))
    assert style.reduce_range_conv is (not int8_dot)
    assert style.gemm_weight_dtype == ("int8" if int8_dot else "uint8")
    assert dynamic_weight_format(style) == (("int8", 8) if int8_dot else ("int8", 7))
