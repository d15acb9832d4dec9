"""TensorRT engines on a real GPU: build, run, profile mapped to layer ids, timing cache reuse, 2:4 kernels.

Every test here but the first is marked ``gpu`` and skips, naming the reason (the real import or
Builder error), where TensorRT or an NVIDIA GPU is missing. ``benchmarks/gpu/run.sh`` runs them
with ``pytest -m gpu`` on a GPU machine.
"""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from hwcompile.backends.base import Artifact
from hwcompile.backends.tensorrt import TensorRTBackend
from hwcompile.backends.tensorrt.build import build_engine
from hwcompile.backends.tensorrt.profiler import profile_engine
from hwcompile.backends.tensorrt.rules import check_model, render
from hwcompile.backends.tensorrt.runtime import gpu_capability, load_engine, tensorrt_status
from hwcompile.cli import app
from hwcompile.targets import load_target


def qdq_conv_model(c: int = 16, hw: int = 16, sparse: bool = True) -> onnx.ModelProto:
    """x -> Q/DQ (int8, scale 1/32) -> Conv(int8 per-channel weights, 2:4 sparse if ``sparse``) -> Relu -> y."""
    rng = np.random.default_rng(0)
    w = rng.integers(-100, 100, size=(c, c, 3, 3)).astype(np.int8)
    w[w == 0] = 1
    if sparse:
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
    shape = [1, c, hw, hw]
    g = helper.make_graph(nodes, "qconv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)], initializer=inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_reference_model_is_valid_for_tensorrt_rules():
    m = qdq_conv_model()
    onnx.checker.check_model(m, full_check=True)
    assert check_model(m, sparsity="2:4") == [], render(check_model(m, sparsity="2:4"))
    dense = qdq_conv_model(sparse=False)
    assert [v.rule for v in check_model(dense, sparsity="2:4")] == ["sparsity-2-4"]


def _need_gpu() -> None:
    ok, reason = tensorrt_status()
    if not ok:
        pytest.skip(reason)


def _gpu_target() -> str:
    """The bundled target whose compute_capabilities list this GPU."""
    cap = gpu_capability()
    for name in ("nvidia-ampere", "nvidia-hopper"):
        if cap in load_target(name).settings["compute_capabilities"]:
            return name
    pytest.skip(f"no bundled TensorRT target lists compute capability {cap}")


@pytest.mark.gpu
def test_build_int8_engine_inspect_run_and_profile(tmp_path):
    _need_gpu()
    import onnxruntime as ort

    model = qdq_conv_model()
    onnx_path, plan, cache = tmp_path / "m.onnx", tmp_path / "m.plan", tmp_path / "timing.cache"
    onnx.save(model, onnx_path)
    res = build_engine(onnx_path, plan, timing_cache_path=cache, sparse_weights=True, workspace_mb=256)
    assert plan.stat().st_size > 0 and cache.stat().st_size > 0
    convs = [lay for lay in res.layers if "conv" in lay["onnx_nodes"]]
    assert convs and convs[0]["precision"] == "int8" and convs[0]["weights"] == "int8", res.layers
    assert res.build_seconds > 0 and res.tensorrt_version and res.summary()["int8_layers"]

    x = np.random.default_rng(1).normal(size=(1, 16, 16, 16)).astype(np.float32)
    (y,) = load_engine(plan)({"x": x})
    (ref,) = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    np.testing.assert_allclose(y, ref, rtol=1e-3, atol=1e-3)  # same quantized values: only the sum order differs

    prof = profile_engine(plan, {"x": x}, repeats=20, warmup=3)
    assert prof["latency_ms"] > 0 and prof["with_copies_ms"] >= prof["latency_ms"] * 0.5
    assert prof["layers_ms"] and all(v >= 0 for v in prof["layers_ms"].values())
    assert set(prof["layers_ms"]) & set(prof["layer_nodes"])  # profiler and inspector name layers alike


@pytest.mark.gpu
def test_timing_cache_is_created_then_reused(tmp_path):
    _need_gpu()
    onnx_path, cache = tmp_path / "m.onnx", tmp_path / "timing.cache"
    onnx.save(qdq_conv_model(c=32), onnx_path)
    first = build_engine(onnx_path, tmp_path / "a.plan", timing_cache_path=cache, workspace_mb=256)
    size = cache.stat().st_size
    second = build_engine(onnx_path, tmp_path / "b.plan", timing_cache_path=cache, workspace_mb=256)
    assert (first.timing_cache, second.timing_cache) == ("new", "loaded")
    assert cache.stat().st_size >= size > 0
    cache.write_bytes(b"not a timing cache")  # unreadable: replaced by an empty cache, the build goes on
    third = build_engine(onnx_path, tmp_path / "c.plan", timing_cache_path=cache, workspace_mb=256)
    assert third.timing_cache.startswith("dropped") and (tmp_path / "c.plan").stat().st_size > 0


@pytest.mark.gpu
def test_inspector_reports_sparse_kernels_for_2_4_weights_only(tmp_path):
    """A 2:4 INT8 conv big enough for sparse tensor cores to pay gets a sparse tactic; a dense one does not."""
    _need_gpu()
    chosen = {}
    for sparse in (True, False):
        onnx_path = tmp_path / f"{sparse}.onnx"
        onnx.save(qdq_conv_model(c=256, hw=56, sparse=sparse), onnx_path)
        res = build_engine(onnx_path, tmp_path / f"{sparse}.plan", sparse_weights=True, workspace_mb=1024)
        chosen[sparse] = [lay for lay in res.layers if lay["sparse"]]
    assert chosen[True], "TensorRT chose no sparse kernel for a 256-channel 2:4 INT8 conv"
    assert not chosen[False]


@pytest.mark.gpu
def test_build_dynamic_batch_engine_with_default_profile(tmp_path):
    _need_gpu()
    model = qdq_conv_model(c=8)
    for v in (*model.graph.input, *model.graph.output):
        v.type.tensor_type.shape.dim[0].dim_param = "N"
    onnx_path = tmp_path / "dyn.onnx"
    onnx.save(model, onnx_path)
    build_engine(onnx_path, tmp_path / "dyn.plan", max_batch=4, workspace_mb=256)
    run = load_engine(tmp_path / "dyn.plan")
    for n in (1, 3):
        (y,) = run({"x": np.ones((n, 8, 16, 16), np.float32)})
        assert y.shape == (n, 8, 16, 16)


@pytest.mark.gpu
def test_compile_builds_engine_and_profile_maps_to_layer_ids(tmp_path, monkeypatch):
    """``hwcompile compile`` for this GPU's target builds the engine; its profile is keyed by layer ids."""
    _need_gpu()
    monkeypatch.setenv("HWCOMPILE_CACHE_DIR", str(tmp_path / "cache"))
    target = _gpu_target()
    out = tmp_path / "trt"
    r = CliRunner().invoke(app, ["compile", "--target", target, "--precision", "int8", "--out", str(out),
                                 "--repeats", "5"])
    assert r.exit_code == 0, r.output
    info = json.loads((out / "tensorrt.json").read_text())
    assert info["engine_built"] is True, info.get("engine_reason")
    assert info["engine"]["gpu"] and info["engine"]["timing_cache"] in ("new", "loaded")
    assert (tmp_path / "cache" / "tensorrt" / "timing.cache").is_file()
    art = Artifact(directory=out, backend="tensorrt", target=target,
                   files={"model": "model.onnx", "engine": "model.plan"}, info=info)
    golden = np.load(out / "golden.npz")
    feeds = {k.split(":", 1)[1]: golden[k] for k in golden.files if k.startswith("input:")}
    backend = TensorRTBackend()
    prof = backend.profile(art, load_target(target), feeds, repeats=10, warmup=2)
    layer_ids = set(info["node_layers"].values())
    assert prof.layers_ms and set(prof.layers_ms) <= layer_ids, (prof.layers_ms, prof.unmapped_ms)
    assert prof.info["device"] == "gpu" and prof.timing.latency_ms > 0
    got = backend.load(art, load_target(target))(feeds)
    want = [golden[k] for k in golden.files if k.startswith("output:")]
    for g, w in zip(got, want):  # INT8 on the GPU vs CPU fake-quant: a value on a rounding edge may move one step
        assert np.abs(g - w).max() <= 0.05 * np.abs(w).max() + 1e-3
