"""The integer dense kernel (kernels/tvm/int8_matmul.py) and its Relax rewrite (backends/tvm/int8_kernels.py):
exact int32 results against numpy on tile-edge shapes (odd K, N not a multiple of the tile, row counts
needing 4/2/1-row tiles, pairs that would saturate int16), and a Q/DQ model compiled for x86-tvm whose
output matches onnxruntime's while tvm.json names the layers that used the kernel."""
from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

try:
    import tvm
    from tvm import relax  # noqa: F401
except Exception as e:
    pytest.skip(f"apache-tvm is not importable: {type(e).__name__}: {e}", allow_module_level=True)

from hwcompile.backends.base import get_backend
from hwcompile.backends.tvm.build import tvm_target, TVMSettings
from hwcompile.backends.tvm.int8_kernels import kernel_module
from hwcompile.ir import from_proto
from hwcompile.contract import PrecisionPlan
from hwcompile.targets import load_target

km = kernel_module()
HOST = tvm.target.Target({"kind": "llvm", "mcpu": tvm.target.codegen.llvm_get_system_cpu()})
if km is None or not km.supported(HOST):
    pytest.skip("the int8 kernel needs the repository's kernels/ folder and an AVX2 x86 CPU", allow_module_level=True)


def _run_kernel(x: np.ndarray, zx: int, w: np.ndarray, scale: np.ndarray) -> np.ndarray:
    m, k = x.shape
    n = w.shape[1]
    mb = next(b for b in (km.MB, 2, 1) if m % b == 0)
    lib = tvm.compile(tvm.IRModule({"main": km.int8_matmul_func(k, n, str(x.dtype), mb)}), target=HOST)
    dev = tvm.cpu()
    args = [tvm.runtime.tensor(a, dev) for a in (x.reshape(m // mb, mb, k), np.array([zx], np.int32),
                                                  km.pack_weight(w), scale)]
    out = tvm.runtime.tensor(np.zeros((m // mb, mb, n), np.float32), dev)
    lib["main"](*args, out)
    return out.numpy().reshape(m, n)


@pytest.mark.parametrize("m,k,n,dtype", [(8, 64, 48, "uint8"), (7, 33, 20, "int8"), (6, 130, 100, "uint8"),
                                         (128, 96, 40, "uint8"), (1, 17, 3, "int8")])
def test_kernel_is_exact(m, k, n, dtype):
    rng = np.random.default_rng(m * 1000 + k)
    info = np.iinfo(dtype)
    x = rng.integers(info.min, info.max + 1, (m, k)).astype(dtype)
    w = rng.integers(-128, 128, (k, n)).astype(np.int8)
    zx = int(rng.integers(info.min, info.max + 1))
    scale = rng.uniform(1e-4, 1e-2, n).astype(np.float32)
    np.testing.assert_array_equal(_run_kernel(x, zx, w, scale), km.reference(x, zx, w, scale))


def test_kernel_does_not_saturate_int16_pairs():
    """255*127 + 255*127 = 64770 overflows int16 (vpmaddubsw would saturate it to 32767); int32 keeps it."""
    k, n = 64, 16
    x = np.full((4, k), 255, np.uint8)
    w = np.full((k, n), 127, np.int8)
    w[:, 1] = -128
    scale = np.ones(n, np.float32)
    got = _run_kernel(x, 0, w, scale)
    assert got[0, 0] == 255 * 127 * k and got[0, 1] == -255 * 128 * k
    np.testing.assert_array_equal(got, km.reference(x, 0, w, scale))


def _qdq_model(w_zero_point: int = 0, seed: int = 0) -> onnx.ModelProto:
    """x[N,16,64] -Q/DQ-> MatMul(DQ(W1 int8 [64,48], per column)) -> Reshape -Q/DQ-> Gemm transB(DQ(W2 int8 [20,48], per row)) -Q/DQ-> y."""
    rng = np.random.default_rng(seed)
    t = numpy_helper.from_array
    w1 = rng.integers(-127, 128, (64, 48)).astype(np.int8)
    w2 = rng.integers(-127, 128, (20, 48)).astype(np.int8)
    inits = [t(np.float32(0.02), "sx"), t(np.uint8(128), "zx"), t(np.float32(0.05), "sh"), t(np.uint8(120), "zh"),
             t(np.float32(0.1), "sy"), t(np.uint8(128), "zy"),
             t(w1, "w1"), t(rng.uniform(1e-3, 4e-3, 48).astype(np.float32), "sw1"),
             t(np.full(48, w_zero_point, np.int8), "zw1"),
             t(w2, "w2"), t(rng.uniform(1e-3, 4e-3, 20).astype(np.float32), "sw2"), t(np.zeros(20, np.int8), "zw2"),
             t(rng.standard_normal(20).astype(np.float32), "b2")]
    n = helper.make_node
    nodes = [n("QuantizeLinear", ["x", "sx", "zx"], ["xq"]), n("DequantizeLinear", ["xq", "sx", "zx"], ["xd"]),
             n("DequantizeLinear", ["w1", "sw1", "zw1"], ["w1d"], axis=1),
             n("MatMul", ["xd", "w1d"], ["h"], name="mm"),
             n("Reshape", ["h", "shape"], ["hf"]),
             n("QuantizeLinear", ["hf", "sh", "zh"], ["hq"]), n("DequantizeLinear", ["hq", "sh", "zh"], ["hd"]),
             n("DequantizeLinear", ["w2", "sw2", "zw2"], ["w2d"], axis=0),
             n("Gemm", ["hd", "w2d", "b2"], ["g"], transB=1, name="gemm"),
             n("QuantizeLinear", ["g", "sy", "zy"], ["yq"]), n("DequantizeLinear", ["yq", "sy", "zy"], ["y"])]
    inits.append(t(np.array([-1, 48], np.int64), "shape"))
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 20])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])


@pytest.fixture(scope="module")
def target():
    return load_target("x86-tvm")


def _build(model, target, tmp_path, **settings):
    tgt = dataclasses.replace(target, settings={**target.settings, **settings})
    backend = get_backend("tvm")
    art = backend.lower(from_proto(model), PrecisionPlan.uniform("int8"), tgt, tmp_path)
    return art, backend.load(art, tgt)


def _ort_fake_quant(model, feeds):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # Q/DQ as written, in float
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def test_qdq_model_uses_kernel_and_matches_onnxruntime(target, tmp_path):
    model = _qdq_model()
    art, run = _build(model, target, tmp_path / "k")
    used = art.info["tuning"]["int8_kernels"]["used"]
    assert [u["matmul"] for u in used] == [0, 1] and [u["trans_b"] for u in used] == [False, True]
    assert [(u["k"], u["n"]) for u in used] == [(64, 48), (48, 20)]
    assert "int8_matmul" in (art.directory / "model.so").read_bytes().decode("latin-1")  # the kernel is linked in
    x = np.random.default_rng(1).standard_normal((5, 16, 64)).astype(np.float32) * 2  # symbolic batch
    got, ref = run({"x": x})[0], _ort_fake_quant(model, {"x": x})
    step = 0.1  # the output's quantization step (sy)
    assert float(np.max(np.abs(got - ref))) <= step * 1.001
    assert np.mean(got != ref) < 0.01  # float rounding flips a rounding tie now and then, not more
    # the stock path gives the same answer
    art0, run0 = _build(model, target, tmp_path / "stock", int8_kernels=False)
    assert art0.info["tuning"]["int8_kernels"] == {"skipped": "backend_settings.int8_kernels = false"}
    assert float(np.max(np.abs(run0({"x": x})[0] - got))) <= step * 1.001


def test_profile_maps_kernel_to_layers(target, tmp_path):
    art, _ = _build(_qdq_model(), target, tmp_path)
    feeds = {"x": np.random.default_rng(2).standard_normal((1, 16, 64)).astype(np.float32)}
    prof = get_backend("tvm").profile(art, target, feeds, repeats=3, warmup=1)
    assert set(prof.layers_ms) == {"mm", "gemm"}, prof.info.get("per_layer")
    assert {k["kernel"] for k in prof.info["kernels"] if k["layer"]} == {"int8_matmul_k64_n48_u8_mb4",
                                                                        "int8_matmul_k48_n20_u8_mb1"}


def test_asymmetric_weights_are_declined_and_still_correct(target, tmp_path):
    model = _qdq_model(w_zero_point=3)
    art, run = _build(model, target, tmp_path)
    report = art.info["tuning"]["int8_kernels"]
    assert [u["matmul"] for u in report["used"]] == [1]
    assert report["declined"] == [{"matmul": 0, "reason": "weight zero point is not 0 (asymmetric weights)"}]
    x = np.random.default_rng(3).standard_normal((2, 16, 64)).astype(np.float32)
    assert float(np.max(np.abs(run({"x": x})[0] - _ort_fake_quant(model, {"x": x})))) <= 0.1 * 1.001


def test_setting_must_be_boolean(target):
    from hwcompile.errors import ConfigError

    with pytest.raises(ConfigError, match="int8_kernels"):
        TVMSettings.from_target(dataclasses.replace(target, settings={**target.settings, "int8_kernels": "yes"}))
