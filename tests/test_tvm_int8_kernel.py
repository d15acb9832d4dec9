"""The integer dense kernels of the TVM kernel table (backends/tvm/kernels/) and their Relax rewrite:
each ISA variant exact against numpy's integer reference on tile-edge shapes (odd K, N not a multiple of
the tile, row counts needing 4/2/1-row tiles, pairs that would saturate int16), run where this CPU has
the instruction and otherwise checked for the instruction in the generated assembly; the table's
choice by CPU features; and a Q/DQ model compiled for x86-tvm whose output matches onnxruntime's while
tvm.json names the kernel and the layers that used it."""
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
from hwcompile.backends.tvm import kernels
from hwcompile.backends.tvm.build import TVMSettings
from hwcompile.backends.tvm.kernels import int8_dense
from hwcompile.ir import from_proto
from hwcompile.contract import PrecisionPlan
from hwcompile.targets import load_target

HOST = tvm.target.Target({"kind": "llvm", "mcpu": tvm.target.codegen.llvm_get_system_cpu()})
#: a target per kernel where LLVM can generate its instruction (the host when it has it)
CODEGEN = {"int8_dense_avx2": {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "haswell"},
           "int8_dense_vnni": {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "icelake-server"},
           "int8_dense_sdot": {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a76"}}
ENTRIES = {k.name: k for k in kernels.TABLE if k.pattern == "int8_dense"}
RUNS_HERE = {name for name, k in ENTRIES.items() if k.check(HOST) is None}
SHAPES = [(8, 64, 48, "uint8"), (7, 33, 20, "int8"), (6, 130, 100, "uint8"), (128, 96, 40, "uint8"), (1, 17, 3, "int8")]


def _run_kernel(isa, x: np.ndarray, zx: int, w: np.ndarray, scale: np.ndarray) -> np.ndarray:
    m, k = x.shape
    n = w.shape[1]
    mb = next(b for b in (int8_dense.MB, 2, 1) if m % b == 0)
    lib = tvm.compile(tvm.IRModule({"main": int8_dense.int8_dense_func(isa, k, n, str(x.dtype), mb)}), target=HOST)
    dev = tvm.cpu()
    args = [tvm.runtime.tensor(a, dev) for a in (x.reshape(m // mb, mb, k), np.array([zx], np.int32),
                                                  int8_dense.pack_weight(isa, w), int8_dense.column_sums(w), scale)]
    out = tvm.runtime.tensor(np.zeros((m // mb, mb, n), np.float32), dev)
    lib["main"](*args, out)
    return out.numpy().reshape(m, n)


def _case(m, k, n, dtype):
    rng = np.random.default_rng(m * 1000 + k)
    info = np.iinfo(dtype)
    x = rng.integers(info.min, info.max + 1, (m, k)).astype(dtype)
    w = rng.integers(-128, 128, (k, n)).astype(np.int8)
    zx = int(rng.integers(info.min, info.max + 1))
    return x, zx, w, rng.uniform(1e-4, 1e-2, n).astype(np.float32)


@pytest.mark.parametrize("name", sorted(ENTRIES))
@pytest.mark.parametrize("m,k,n,dtype", SHAPES)
def test_kernel_is_exact(name, m, k, n, dtype):
    if name not in RUNS_HERE:
        pytest.skip(f"{name} cannot run on this CPU ({ENTRIES[name].check(HOST)}); "
                    "test_kernel_emits_its_instruction checks its code")
    x, zx, w, scale = _case(m, k, n, dtype)
    np.testing.assert_array_equal(_run_kernel(ENTRIES[name].kernel, x, zx, w, scale), int8_dense.reference(x, zx, w, scale))


@pytest.mark.parametrize("name", sorted(ENTRIES))
def test_kernel_emits_its_instruction(name):
    """On a target whose CPU has the instruction (cross-compiled when not this one), the assembly uses it."""
    entry, target = ENTRIES[name], tvm.target.Target(CODEGEN[name])
    assert entry.check(target) is None
    lib = tvm.compile(tvm.IRModule({"main": int8_dense.int8_dense_func(entry.kernel, 130, 40, "uint8", 4)}), target=target)
    assert entry.kernel.instruction in lib.mod.inspect_source("s")


@pytest.mark.parametrize("spec,want", [
    ({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "icelake-server"}, "int8_dense_vnni"),
    ({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "haswell"}, "int8_dense_avx2"),
    ({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "sandybridge"}, None),
    ({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a76"}, "int8_dense_sdot"),
    ({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72"}, None),  # Armv8.0: no dot product
])
def test_table_chooses_by_cpu_features(spec, want):
    kernel, passed = kernels.choose("int8_dense", tvm.target.Target(spec))
    assert (kernel.name if kernel else None) == want
    if want is None:
        assert set(passed) == set(ENTRIES) and all(passed.values())


def test_kernel_does_not_saturate_int16_pairs():
    """255*127 + 255*127 = 64770 overflows int16 (vpmaddubsw would saturate it to 32767); int32 keeps it."""
    k, n = 64, 16
    x = np.full((4, k), 255, np.uint8)
    w = np.full((k, n), 127, np.int8)
    w[:, 1] = -128
    scale = np.ones(n, np.float32)
    for name in sorted(RUNS_HERE):
        got = _run_kernel(ENTRIES[name].kernel, x, 0, w, scale)
        assert got[0, 0] == 255 * 127 * k and got[0, 1] == -255 * 128 * k, name
        np.testing.assert_array_equal(got, int8_dense.reference(x, 0, w, scale))


needs_kernel = pytest.mark.skipif(not RUNS_HERE, reason="no integer dense kernel runs on this CPU")


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


@needs_kernel
def test_qdq_model_uses_kernel_and_matches_onnxruntime(target, tmp_path):
    model = _qdq_model()
    art, run = _build(model, target, tmp_path / "k")
    chosen, _ = kernels.choose("int8_dense", HOST)
    report = art.info["tuning"]["kernels"]["int8_dense"]
    assert report["kernel"] == chosen.name and art.info["kernels_used"] == [chosen.name]
    used = report["used"]
    assert [u["matmul"] for u in used] == [0, 1] and [u["trans_b"] for u in used] == [False, True]
    assert [(u["k"], u["n"]) for u in used] == [(64, 48), (48, 20)]
    assert chosen.name in (art.directory / "model.so").read_bytes().decode("latin-1")  # the kernel is linked in
    x = np.random.default_rng(1).standard_normal((5, 16, 64)).astype(np.float32) * 2  # symbolic batch
    got, ref = run({"x": x})[0], _ort_fake_quant(model, {"x": x})
    step = 0.1  # the output's quantization step (sy)
    assert float(np.max(np.abs(got - ref))) <= step * 1.001
    assert np.mean(got != ref) < 0.01  # float rounding flips a rounding tie now and then, not more
    # the stock path gives the same answer
    art0, run0 = _build(model, target, tmp_path / "stock", int8_kernels=False)
    assert art0.info["tuning"]["kernels"] == {"skipped": "backend_settings.int8_kernels = false"}
    assert art0.info["kernels_used"] == []
    assert float(np.max(np.abs(run0({"x": x})[0] - got))) <= step * 1.001


@needs_kernel
def test_profile_maps_kernel_to_layers(target, tmp_path):
    art, _ = _build(_qdq_model(), target, tmp_path)
    feeds = {"x": np.random.default_rng(2).standard_normal((1, 16, 64)).astype(np.float32)}
    prof = get_backend("tvm").profile(art, target, feeds, repeats=3, warmup=1)
    assert set(prof.layers_ms) == {"mm", "gemm"}, prof.info.get("per_layer")
    name = kernels.choose("int8_dense", HOST)[0].name
    assert {k["kernel"] for k in prof.info["kernels"] if k["layer"]} == {f"{name}_k64_n48_u8_mb4", f"{name}_k48_n20_u8_mb1"}


@needs_kernel
def test_asymmetric_weights_are_declined_and_still_correct(target, tmp_path):
    model = _qdq_model(w_zero_point=3)
    art, run = _build(model, target, tmp_path)
    report = art.info["tuning"]["kernels"]["int8_dense"]
    assert [u["matmul"] for u in report["used"]] == [1]
    assert report["declined"] == [{"matmul": 0, "reason": "weight zero point is not 0 (asymmetric weights)"}]
    x = np.random.default_rng(3).standard_normal((2, 16, 64)).astype(np.float32)
    assert float(np.max(np.abs(run({"x": x})[0] - _ort_fake_quant(model, {"x": x})))) <= 0.1 * 1.001


def test_setting_must_be_boolean(target):
    from hwcompile.errors import ConfigError

    with pytest.raises(ConfigError, match="int8_kernels"):
        TVMSettings.from_target(dataclasses.replace(target, settings={**target.settings, "int8_kernels": "yes"}))
