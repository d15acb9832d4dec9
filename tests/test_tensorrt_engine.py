"""TensorRT engine builder: availability reporting, the pure helpers, and (on a GPU) a real build."""
from __future__ import annotations

import importlib
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from hwcompile.backends.tensorrt.engine import (EngineBuildResult, build_engine, default_profiles, load_engine,
                                                 profile_engine, summarize_layers, tensorrt_status, validate_profiles,
                                                 write_atomic)
from hwcompile.backends.tensorrt.rules import check_model, render
from hwcompile.errors import BackendUnavailable, ConfigError


def test_status_reason_is_the_real_error():
    ok, reason = tensorrt_status()
    assert reason
    if ok:
        assert importlib.import_module("tensorrt").__version__ in reason
        return
    try:
        importlib.import_module("tensorrt")
    except Exception as e:  # the import itself is what fails here: the reason quotes it verbatim
        assert str(e) in reason and type(e).__name__ in reason
    else:  # tensorrt imports but no builder: the reason comes from trt.Builder
        assert "trt.Builder" in reason


def test_build_without_tensorrt_raises_backend_unavailable_with_the_same_reason(tmp_path):
    ok, reason = tensorrt_status()
    if ok:
        pytest.skip("TensorRT works on this machine")
    (tmp_path / "m.onnx").write_bytes(b"")
    with pytest.raises(BackendUnavailable) as e:
        build_engine(tmp_path / "m.onnx", tmp_path / "m.plan")
    assert e.value.message == reason
    assert not (tmp_path / "m.plan").exists()


# -- inspector summary ----------------------------------------------------------------------------
INSPECTOR_JSON = json.dumps({"Layers": [
    {"Name": "x_q + conv + relu", "LayerType": "CaskConvolution",
     "Inputs": [{"Name": "x_q", "Location": "Device", "Dimensions": [1, 16, 8, 8],
                 "Format/Datatype": "Thirty-two wide channel vectorized row major Int8 format"}],
     "Outputs": [{"Name": "y", "Dimensions": [1, 16, 8, 8], "Format/Datatype": "Row major linear FP32"}],
     "Weights": {"Type": "Int8", "Count": 2304},
     "TacticName": "sm80_xmma_fprop_sparse_conv_interleaved_i8i8_i8i32_f32_nchw_vect_c_32kcrs_vect_c_32",
     "Metadata": "[ONNX Layer: dq_w]\x1f[ONNX Layer: conv]\x1f[ONNX Layer: relu]"},
    {"Name": "Reformatting CopyNode for Input Tensor 0 to head", "LayerType": "Reformat",
     "Inputs": [{"Name": "y", "Format/Datatype": "Row major linear FP16 format"}],
     "Outputs": [{"Name": "y2", "Format/Datatype": "Row major linear FP32"}], "Metadata": ""},
    {"Name": "mm", "LayerType": "gemm", "Inputs": [{"Format/Datatype": "Half"}, {"Format/Datatype": "Int4"}],
     "Outputs": [], "Weights": {"Type": "Int4", "Count": 32}, "TacticName": "sm80_xmma_gemm_f16f16",
     "Metadata": "[ONNX Layer: mm]"},
    {"Name": "const", "LayerType": "Constant", "Inputs": [],
     "Outputs": [{"Format/Datatype": "Channel major BFloat16 format where channel % 8 == 0"}]},
], "Bindings": ["x", "y2"]})


def test_summarize_layers_reads_types_sparsity_and_onnx_nodes():
    s = summarize_layers(INSPECTOR_JSON)
    assert [(r["name"], r["precision"], r["weights"], r["sparse"]) for r in s] == [
        ("x_q + conv + relu", "int8", "int8", True),
        ("Reformatting CopyNode for Input Tensor 0 to head", "fp16", "", False),
        ("mm", "fp16", "int4", False),
        ("const", "bf16", "", False),
    ]
    assert s[0]["onnx_nodes"] == ["dq_w", "conv", "relu"] and s[2]["onnx_nodes"] == ["mm"]
    assert s[0]["type"] == "CaskConvolution"


def test_engine_summary_counts_int8_and_sparse_layers(tmp_path):
    res = EngineBuildResult(plan_path=tmp_path / "m.plan", layers=summarize_layers(INSPECTOR_JSON))
    summ = res.to_dict()["summary"]
    assert summ["layers"] == 4 and summ["by_precision"] == {"int8": 1, "fp16": 2, "bf16": 1}
    assert summ["int8_layers"] == ["x_q + conv + relu"] and summ["sparse_layers"] == ["x_q + conv + relu"]


def test_summarize_layers_names_only_engine():
    s = summarize_layers(json.dumps({"Layers": ["a", "b"], "Bindings": []}))
    assert [(r["name"], r["precision"], r["sparse"]) for r in s] == [("a", "unknown", False), ("b", "unknown", False)]


# -- profiles and files ---------------------------------------------------------------------------
def test_validate_profiles():
    inputs = {"x": (-1, 3, 224, 224), "mask": (1, 8)}
    validate_profiles(inputs, {"x": ((1, 3, 224, 224), (4, 3, 224, 224), (8, 3, 224, 224))})
    bad = [
        ({}, "profiles.x"),                                                          # dynamic without profile
        ({"y": ((1,), (1,), (1,))}, "profiles.y"),                                   # unknown input
        ({"x": ((2, 3, 224, 224), (1, 3, 224, 224), (8, 3, 224, 224))}, "profiles.x"),  # min > opt
        ({"x": ((1, 3, 224, 224), (1, 3, 200, 224), (1, 3, 224, 224))}, "profiles.x"),  # static dim changed
        ({"x": ((1, 3, 224), (1, 3, 224), (1, 3, 224))}, "profiles.x"),              # wrong rank
    ]
    for profiles, where in bad:
        with pytest.raises(ConfigError) as e:
            validate_profiles(inputs, profiles)
        assert e.value.where == where, (profiles, e.value)


def test_default_profiles_fill_a_dynamic_batch_only():
    inputs = {"input_ids": (-1, 128), "mask": (-1, 128), "x": (1, 3), "odd": (2, -1)}
    got = default_profiles(inputs, {"mask": ((1, 128), (2, 128), (4, 128))}, max_batch=8)
    assert got["input_ids"] == ((1, 128), (1, 128), (8, 128))
    assert got["mask"] == ((1, 128), (2, 128), (4, 128))       # a given profile is kept
    assert "x" not in got and "odd" not in got                   # static: none needed; other dynamic dims: not guessed
    with pytest.raises(ConfigError) as e:
        validate_profiles(inputs, got)
    assert e.value.where == "profiles.odd"
    validate_profiles({k: v for k, v in inputs.items() if k != "odd"}, got)
    with pytest.raises(ConfigError):
        default_profiles(inputs, None, max_batch=0)


def test_write_atomic_replaces_and_leaves_no_temporaries(tmp_path):
    target = tmp_path / "cache" / "timing.cache"
    write_atomic(target, b"first")
    write_atomic(target, b"second")
    assert target.read_bytes() == b"second"
    assert [p.name for p in target.parent.iterdir()] == ["timing.cache"]

    with pytest.raises(TypeError):
        write_atomic(target, object())  # type: ignore[arg-type]  # the write fails: old content survives
    assert target.read_bytes() == b"second"
    assert [p.name for p in target.parent.iterdir()] == ["timing.cache"]


# -- a real build (only where a GPU and TensorRT exist) -------------------------------------------
def qdq_conv_model(c: int = 16) -> onnx.ModelProto:
    """x -> Q/DQ (int8, scale 1/32) -> Conv(int8 per-channel weights, 2:4 sparse) -> Relu -> y."""
    rng = np.random.default_rng(0)
    w = rng.integers(-100, 100, size=(c, c, 3, 3)).astype(np.int8)
    w[:, 1::4] = 0
    w[:, 2::4] = 0
    inits = [numpy_helper.from_array(np.float32(1 / 32), "s_x"), numpy_helper.from_array(np.int8(0), "zp_x"),
             numpy_helper.from_array(w, "w_q"), numpy_helper.from_array(np.full(c, 0.01, np.float32), "s_w"),
             numpy_helper.from_array(np.zeros(c, np.int8), "zp_w")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s_x", "zp_x"], ["xq"], name="q_x"),
             helper.make_node("DequantizeLinear", ["xq", "s_x", "zp_x"], ["xd"], name="dq_x"),
             helper.make_node("DequantizeLinear", ["w_q", "s_w", "zp_w"], ["wd"], name="dq_w", axis=0),
             helper.make_node("Conv", ["xd", "wd"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["y"], name="relu")]
    shape = [1, c, 16, 16]
    g = helper.make_graph(nodes, "qconv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)], initializer=inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_reference_model_is_valid_for_tensorrt_rules():
    m = qdq_conv_model()
    onnx.checker.check_model(m, full_check=True)
    assert check_model(m, sparsity="2:4") == [], render(check_model(m, sparsity="2:4"))


@pytest.mark.gpu
def test_build_int8_engine_inspect_run_and_profile(tmp_path):
    ok, reason = tensorrt_status()
    if not ok:
        pytest.skip(reason)
    import onnxruntime as ort

    model = qdq_conv_model()
    onnx_path, plan, cache = tmp_path / "m.onnx", tmp_path / "m.plan", tmp_path / "timing.cache"
    onnx.save(model, onnx_path)
    res = build_engine(onnx_path, plan, timing_cache_path=cache, sparse_weights=True, profiles=None, workspace_mb=256)
    assert plan.stat().st_size > 0 and cache.stat().st_size > 0
    convs = [lay for lay in res.layers if "conv" in lay["onnx_nodes"]]
    assert convs and convs[0]["precision"] == "int8" and convs[0]["weights"] == "int8", res.layers
    assert res.build_seconds > 0 and res.tensorrt_version

    x = np.random.default_rng(1).normal(size=(1, 16, 16, 16)).astype(np.float32)
    (y,) = load_engine(plan)({"x": x})
    (ref,) = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    # same quantized inputs and weights: only float accumulation order differs
    np.testing.assert_allclose(y, ref, rtol=1e-3, atol=1e-3)

    prof = profile_engine(plan, {"x": x}, repeats=20, warmup=3)
    assert prof["latency_ms"] > 0 and prof["with_copies_ms"] >= prof["latency_ms"] * 0.5
    assert prof["layers_ms"] and all(v >= 0 for v in prof["layers_ms"].values())
    assert set(prof["layers_ms"]) & set(prof["layer_nodes"])  # profiler and inspector name layers alike

    rebuilt = build_engine(onnx_path, tmp_path / "m2.plan", timing_cache_path=cache, workspace_mb=256)
    assert rebuilt.plan_path.exists()  # the saved timing cache loads back
    assert res.summary()["int8_layers"], res.layers


@pytest.mark.gpu
def test_build_dynamic_batch_engine_with_default_profile(tmp_path):
    ok, reason = tensorrt_status()
    if not ok:
        pytest.skip(reason)
    model = qdq_conv_model(c=8)
    for v in (*model.graph.input, *model.graph.output):
        v.type.tensor_type.shape.dim[0].dim_param = "N"
    onnx_path = tmp_path / "dyn.onnx"
    onnx.save(model, onnx_path)
    build_engine(onnx_path, tmp_path / "dyn.plan", max_batch=4, workspace_mb=256)
    run = load_engine(tmp_path / "dyn.plan")
    for n in (1, 3):
        (y,) = run({"x": np.zeros((n, 8, 16, 16), np.float32)})
        assert y.shape == (n, 8, 16, 16)


def test_parser_errors_name_the_onnx_node():
    # the formatting of TensorRT's IParserError list (real objects need TensorRT; this is not a build)
    from hwcompile.backends.tensorrt.engine import _parser_errors

    class Err:
        def __init__(self, name, op, idx, desc):
            self.args = (name, op, idx, desc)

        def node_name(self):
            return self.args[0]

        def node_operator(self):
            return self.args[1]

        def node(self):
            return self.args[2]

        def desc(self):
            return self.args[3]

        def code(self):
            return "ErrorCode.UNSUPPORTED_NODE"

    class Parser:
        errors = [Err("conv_7", "ConvInteger", 7, "no importer"), Err("", "", 3, "bad graph")]
        num_errors = 2

        def get_error(self, i):
            return self.errors[i]

    lines = _parser_errors(Parser())
    assert lines[0] == "  node 'conv_7' (ConvInteger): no importer [ErrorCode.UNSUPPORTED_NODE]"
    assert lines[1].startswith("  node #3: bad graph")
