"""TensorRT engine builder: availability reporting, the pure helpers, and (on a GPU) a real build."""
from __future__ import annotations

import importlib
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from hwcompile.backends.tensorrt.build import EngineBuildResult, build_engine, parser_errors
from hwcompile.backends.tensorrt.files import write_bytes_atomic as write_atomic
from hwcompile.backends.tensorrt.inspector import summarize_layers
from hwcompile.backends.tensorrt.runtime import load_engine, tensorrt_status
from hwcompile.backends.tensorrt.shapes import default_profiles, validate_profiles
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


def test_summarize_layers_reads_the_tensorrt_11_schema():
    info = json.dumps({"Layers": [
        {"Name": "conv", "LayerType": "CaskConvolution", "TacticName": "sm90_xmma_fprop_sparse_conv_i8i8",
         "Inputs": [{"Name": "x_q", "DataType": "Int8", "Format": "Thirty-two wide channel vectorized row major"}],
         "Outputs": [{"Name": "y", "DataType": "Half", "Format": "Row major linear"}],
         "Weights": {"Type": "Int8", "Count": 9}, "Metadata": "[ONNX Layer: conv]"},
        {"Name": "head", "LayerType": "gemm", "Inputs": [{"DataType": "Half"}], "Metadata": "[ONNX Layer: fc]"}],
        "I/O Tensors": [{"Name": "x", "IOMode": "Input", "DataType": "Float"}]})
    s = summarize_layers(info)
    assert [(r["name"], r["precision"], r["weights"], r["sparse"], r["onnx_nodes"]) for r in s] == [
        ("conv", "int8", "int8", True, ["conv"]), ("head", "fp16", "", False, ["fc"])]


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


def test_parser_errors_name_the_onnx_node():
    # the formatting of TensorRT's IParserError list (real objects need TensorRT; this is not a build)

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

    lines = parser_errors(Parser())
    assert lines[0] == "  node 'conv_7' (ConvInteger): no importer [ErrorCode.UNSUPPORTED_NODE]"
    assert lines[1].startswith("  node #3: bad graph")


def test_network_flags_strongly_typed_on_10_only():
    from types import SimpleNamespace

    from hwcompile.backends.tensorrt.build import _network_flags

    flags = SimpleNamespace(STRONGLY_TYPED=5)
    assert _network_flags(SimpleNamespace(__version__="10.16.1.11", NetworkDefinitionCreationFlag=flags)) == 1 << 5
    assert _network_flags(SimpleNamespace(__version__="11.4.0.106", NetworkDefinitionCreationFlag=flags)) == 0
    assert _network_flags(SimpleNamespace(__version__="10.0.1", NetworkDefinitionCreationFlag=SimpleNamespace())) == 0
