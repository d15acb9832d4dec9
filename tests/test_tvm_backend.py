"""The TVM backend on this CPU: numerics against onnxruntime (FP32 and INT8 fake-quant), per-layer
profile mapped to layer ids, static-batch libraries, settings errors, refusals, a real local TVM
RPC server (the code path of a remote board), the arm64 cross build, and the tuning database."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import assert_close

try:
    import tvm  # noqa: F401
    from tvm import relax  # noqa: F401
except Exception as e:  # the real reason, not a generic "not installed"
    pytest.skip(f"apache-tvm is not importable: {type(e).__name__}: {e}", allow_module_level=True)

from hwcompile.backends.base import get_backend
from hwcompile.backends.tvm import TVMSettings
from hwcompile.backends.tvm import tune as tune_mod
from hwcompile.data import as_feeds
from hwcompile.errors import BackendUnavailable, ConfigError, UnsupportedError
from hwcompile.ir import from_proto
from hwcompile.models import default_model
from hwcompile.pipeline import CompileOptions, build, prepare
from hwcompile.contract import PrecisionPlan
from hwcompile.targets import load_target

CROSS_CC = "aarch64-linux-gnu-g++"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Cleaned default model, its data, and the backend; tuning records go to a private cache."""
    cache = tmp_path_factory.mktemp("cache")
    old = os.environ.get("HWCOMPILE_CACHE_DIR")
    os.environ["HWCOMPILE_CACHE_DIR"] = str(cache)
    d = default_model()
    graph, _, calib, evald = prepare(d.model, CompileOptions(calib=d.calib, eval=d.eval, labels=d.labels))
    yield {"graph": graph, "calib": calib, "eval": evald, "backend": get_backend("tvm"),
           "target": load_target("x86-tvm"), "tmp": tmp_path_factory.mktemp("tvm"), "cache": cache}
    if old is None:
        os.environ.pop("HWCOMPILE_CACHE_DIR", None)
    else:
        os.environ["HWCOMPILE_CACHE_DIR"] = old


@pytest.fixture(scope="module")
def built(env):
    """fp32 and int8 builds of the default model for x86-tvm."""
    out = {}
    for prec in ("fp32", "int8"):
        _, out[prec] = build(env["graph"], PrecisionPlan.uniform(prec), env["target"], env["backend"],
                             env["tmp"] / prec, env["calib"])
    return out


def _ort(path, optimize: bool = True):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if not optimize:  # Q/DQ exactly as written: float fake-quantization
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _eval_feeds(env, n=64):
    return dict(as_feeds(next(env["eval"].batches(n)), env["graph"]))


def _with(base, **settings):
    return dataclasses.replace(base, settings={**base.settings, **settings})


def test_fp32_matches_onnxruntime(env, built):
    art = built["fp32"]
    assert (art.directory / "model.so").is_file() and (art.directory / "tvm.json").is_file()
    feeds = _eval_feeds(env)  # batch 64 through a library built with a symbolic batch
    got = env["backend"].load(art, env["target"])(feeds)
    ref = _ort(art.path("model")).run(None, feeds)
    assert_close(ref, got, rel=1e-4)


def test_int8_matches_onnxruntime_fake_quant(env, built):
    art = built["int8"]
    model = onnx.load(str(art.path("model")))
    assert sum(n.op_type == "QuantizeLinear" for n in model.graph.node) >= 5, "the int8 plan inserted no Q/DQ"
    feeds = _eval_feeds(env)
    got = env["backend"].load(art, env["target"])(feeds)[0]
    ref = _ort(art.path("model"), optimize=False).run(None, feeds)[0]
    # the output is dequantized INT8: at most a rounding tie apart, one quantization step
    step = float(np.min(np.diff(np.unique(ref))))
    assert float(np.max(np.abs(got - ref))) <= step * 1.001
    assert np.mean(np.abs(got - ref) > 1e-6) < 0.01
    labels = env["eval"].take(64).labels if hasattr(env["eval"], "take") else None
    assert np.mean(got.argmax(1) == ref.argmax(1)) >= 0.98


def test_profile_maps_kernels_to_layer_ids(env, built):
    art = built["fp32"]
    feeds = _eval_feeds(env, 1)
    prof = env["backend"].profile(art, env["target"], feeds, repeats=5, warmup=1)
    assert prof.timing.latency_ms > 0 and prof.timing.repeats == 5
    heads = {n.name for n in env["graph"].main if n.op_type in ("Conv", "Gemm", "MatMul")}
    assert set(prof.layers_ms) == heads, prof.info.get("per_layer")
    assert all(v >= 0 for v in prof.layers_ms.values())
    mapped = {k["layer"] for k in prof.info["kernels"] if k["layer"]}
    assert mapped == heads and all(k["kernel"] for k in prof.info["kernels"])


def test_static_batch_library_runs_any_batch(env):
    """A library built for batch 8 (as tuning requires static shapes) runs 13 and 64 samples in slices."""
    plan = PrecisionPlan.uniform("fp32", input_shapes={"input": [8, 1, 8, 8]})
    _, art = build(env["graph"], plan, env["target"], env["backend"], env["tmp"] / "static8", None)
    assert json.loads((art.directory / "tvm.json").read_text())["input_shapes"] == {"input": [8, 1, 8, 8]}
    run = env["backend"].load(art, env["target"])
    ref_sess = _ort(art.path("model"))
    for n in (13, 64):
        feeds = _eval_feeds(env, n)
        assert_close(ref_sess.run(None, feeds), run(feeds), rel=1e-4)


@pytest.mark.parametrize("settings, field", [
    ({"tune_trails": 8}, "backend_settings"),                      # typo: unknown key
    ({"tune_trials": -1}, "backend_settings.tune_trials"),
    ({"tune_trials": "8"}, "backend_settings.tune_trials"),
    ({"rpc_host": "localhost"}, "backend_settings.rpc_host"),       # no port
    ({"target": "llvm -mcpu=znver3"}, "backend_settings.target"),  # CLI strings are gone in TVM 0.27
    ({"target": {"kind": "no-such-kind"}}, "backend_settings.target"),
    ({"target": {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "host"}}, "backend_settings.target.mcpu"),
])
def test_bad_settings_name_the_field(env, settings, field):
    target = _with(env["target"], **settings)
    with pytest.raises(ConfigError) as e:
        from hwcompile.backends.tvm.build import tvm_target

        tvm_target(TVMSettings.from_target(target))
    assert field in (e.value.where or ""), e.value.render()
    ok, why = env["backend"].status(target)
    assert not ok and field in why


def test_int4_blockwise_refused_naming_the_node(env):
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((64, 16)).astype(np.float32), "w")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="proj")], "mm",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])], [w])
    graph = from_proto(helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)]))
    with pytest.raises(UnsupportedError) as e:
        build(graph, PrecisionPlan.uniform("int4w"), env["target"], env["backend"], env["tmp"] / "int4", None)
    assert "block" in e.value.message and "DequantizeLinear" in (e.value.where or "")
    assert not (env["tmp"] / "int4" / "model.so").exists()


@pytest.fixture()
def rpc_server():
    from tvm import rpc

    server = rpc.Server(host="127.0.0.1", port=9190, port_end=9290)
    yield server
    server.terminate()


def test_run_and_profile_over_rpc(env, built, rpc_server):
    """The same code path as a board: upload model.so to a real RPC server, run and time it there."""
    art = built["fp32"]
    target = _with(env["target"], rpc_host=f"127.0.0.1:{rpc_server.port}")
    feeds = _eval_feeds(env, 4)
    got = env["backend"].load(art, target)(feeds)
    assert_close(_ort(art.path("model")).run(None, feeds), got, rel=1e-4)
    prof = env["backend"].profile(art, target, _eval_feeds(env, 1), repeats=5, warmup=1)
    assert prof.info["device"].startswith("rpc server@127.0.0.1") and prof.timing.repeats == 5
    assert prof.timing.latency_ms > 0
    assert prof.layers_ms == {} and "not measured" in prof.info["per_layer"]


def test_unreachable_rpc_device_is_named(env, built):
    target = _with(env["target"], rpc_host="127.0.0.1:1", rpc_timeout_s=5)
    with pytest.raises(BackendUnavailable) as e:
        env["backend"].load(built["fp32"], target)
    assert e.value.where == "backend_settings.rpc_host" and "127.0.0.1:1" in e.value.message


@pytest.mark.skipif(shutil.which(CROSS_CC) is None,
                    reason=f"{CROSS_CC} not on PATH (Debian: apt-get install g++-aarch64-linux-gnu)")
def test_arm64_cross_build_is_an_aarch64_library(env):
    target = load_target("arm64-tvm")
    ok, why = env["backend"].status(target)
    assert ok and "rpc_host" in why  # builds here; running needs the board
    _, art = build(env["graph"], PrecisionPlan.uniform("int8"), target, env["backend"], env["tmp"] / "arm64", env["calib"])
    head = art.path("engine").read_bytes()[:20]
    assert head[:4] == b"\x7fELF" and head[4] == 2  # 64-bit
    assert int.from_bytes(head[18:20], "little") == 183  # e_machine EM_AARCH64
    info = json.loads(art.path("info").read_text())
    assert info["cross"] and info["target"]["mtriple"] == "aarch64-linux-gnu"
    with pytest.raises(BackendUnavailable) as e:
        env["backend"].load(art, target)
    assert e.value.where == "backend_settings.rpc_host"


def test_cross_compiler_missing_is_named(env):
    target = _with(load_target("arm64-tvm"), cc="no-such-aarch64-g++")
    ok, why = env["backend"].status(target)
    assert not ok and "no-such-aarch64-g++" in why and "backend_settings.cc" in why


def test_tuning_crash_keeps_saved_records(env, tmp_path, monkeypatch):
    """A tuning child that dies by a signal after committing records: the parent names the signal and
    the records, which stay on disk for the next build."""
    db = tmp_path / "db"
    db.mkdir()
    (db / "database_tuning_record.json").write_text('["earlier"]\n')
    crash = textwrap.dedent(f"""
        import os, signal
        with open({str(db / "database_tuning_record.json")!r}, "a") as f:
            f.write('["new"]\\n')
        os.kill(os.getpid(), signal.SIGSEGV)
    """)
    real_run = subprocess.run
    monkeypatch.setattr(tune_mod.subprocess, "run",
                        lambda cmd, **kw: real_run([sys.executable, "-c", crash], **kw))
    with pytest.raises(BackendUnavailable) as e:
        tune_mod.tune_in_child(tmp_path / "m.onnx", {}, TVMSettings(tune_trials=4), db, tmp_path / "tvm.log")
    assert "SIGSEGV" in e.value.message and "keeps 2 records (1 from this run)" in e.value.message
    assert str(tmp_path / "tvm.log") in e.value.message
    assert e.value.where == "backend_settings.tune_trials"
    assert (db / "database_tuning_record.json").read_text().count("\n") == 2


@pytest.mark.slow
def test_tuning_database_persists_and_is_reused(env):
    """MetaSchedule with a tiny budget writes records under the cache; a second build (no trials) applies them."""
    tuned = _with(env["target"], tune_trials=6, tune_trials_per_task=1)
    _, art = build(env["graph"], PrecisionPlan.uniform("fp32"), tuned, env["backend"], env["tmp"] / "tuned", None)
    info = json.loads(art.path("info").read_text())["tuning"]
    db = info["database"]
    assert db.startswith(str(env["cache"])) and info["records"] > 0 and info["new_records"] > 0 and info["applied"]
    lines = open(os.path.join(db, "database_tuning_record.json")).read().splitlines()
    assert len(lines) == info["records"]
    again = _with(env["target"], tune_trials=0)
    plan = PrecisionPlan.uniform("fp32", input_shapes={"input": [1, 1, 8, 8]})  # the shapes the records were tuned for
    _, art2 = build(env["graph"], plan, again, env["backend"], env["tmp"] / "reuse", None)
    info2 = json.loads(art2.path("info").read_text())["tuning"]
    assert info2["database"] == db and info2["records"] == info["records"] and info2["applied"]
    feeds = _eval_feeds(env, 3)
    assert_close(_ort(art2.path("model")).run(None, feeds), env["backend"].load(art2, again)(feeds), rel=1e-4)


def _shape_reshape_model() -> onnx.ModelProto:
    """x[N,8,4,4] -> GlobalAveragePool -> Reshape to Concat(Cast(Slice(Cast(Shape)))), [-1]) -> Relu: how
    exported classifiers (RapidOCR's direction classifier) flatten, which TVM's frontend cannot follow."""
    n = helper.make_node
    t = numpy_helper.from_array
    nodes = [n("GlobalAveragePool", ["x"], ["p"], name="pool"), n("Shape", ["p"], ["s"], name="shape"),
             n("Cast", ["s"], ["s32"], to=TensorProto.INT32, name="cast_a"),
             n("Slice", ["s32", "zero", "one", "zero"], ["n32"], name="slice"),
             n("Cast", ["n32"], ["n64"], to=TensorProto.INT64, name="cast_b"),
             n("Concat", ["n64", "minus1"], ["shp"], axis=0, name="concat"),
             n("Reshape", ["p", "shp"], ["r"], name="flatten"), n("Relu", ["r"], ["y"], name="relu")]
    inits = [t(np.array([0], np.int64), "zero"), t(np.array([1], np.int64), "one"), t(np.array([-1], np.int64), "minus1")]
    g = helper.make_graph(nodes, "flatten", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, 4, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_shape_computation_folds_for_static_shapes(env, tmp_path):
    model = _shape_reshape_model()
    plan = PrecisionPlan.uniform("fp32", input_shapes={"x": [2, 8, 4, 4]})
    _, art = build(from_proto(model), plan, env["target"], env["backend"], tmp_path / "static", None)
    assert art.info["shape_nodes_folded"] == 5  # Shape, Cast, Slice, Cast, Concat
    lowered = onnx.load(str(art.path("model")))
    assert not {"Shape", "Cast", "Slice", "Concat"} & {n.op_type for n in lowered.graph.node}
    x = np.random.default_rng(0).standard_normal((2, 8, 4, 4)).astype(np.float32)
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    assert_close(ref, env["backend"].load(art, env["target"])({"x": x}), rel=1e-5)


def test_frontend_failure_names_node_and_op_and_tvm_output_goes_to_the_log(env, tmp_path, capfd):
    """With a symbolic batch the shape cannot fold: refused naming the Reshape node, and TVM's own
    messages (the frontend prints the op it failed on) stay off the terminal."""
    with pytest.raises(UnsupportedError) as e:
        build(from_proto(_shape_reshape_model()), PrecisionPlan.uniform("fp32"), env["target"], env["backend"],
              tmp_path / "dynamic", None)
    assert e.value.where == "node 'flatten' (Reshape)", e.value.render()
    assert "--shape" in (e.value.hint or "") and "x" in e.value.hint
    out, err = capfd.readouterr()
    assert "Error converting operator" not in out + err and "Warning" not in out + err


def test_build_writes_tvm_log_and_names_kernels(env, built):
    art = built["int8"]
    assert art.files["log"] == "tvm.log" and art.path("log").is_file()
    versions = env["backend"].versions()
    from hwcompile.backends.tvm import kernels

    assert all(k.name in versions["tvm_kernels"] for k in kernels.TABLE)
    used = art.info["kernels_used"]
    assert set(used) <= {k.name for k in kernels.TABLE}
    assert used == sorted({r["kernel"] for r in art.info["tuning"]["kernels"].values() if r.get("used")})


def test_rapidocr_direction_classifier_builds_with_static_shape(env, tmp_path):
    rapidocr = pytest.importorskip("rapidocr_onnxruntime")
    from pathlib import Path

    path = Path(rapidocr.__file__).parent / "models" / "ch_ppocr_mobile_v2.0_cls_infer.onnx"
    model = onnx.load(str(path))
    plan = PrecisionPlan.uniform("fp32", input_shapes={"x": [1, 3, 48, 192]})
    _, art = build(from_proto(model), plan, env["target"], env["backend"], tmp_path / "cls", None)
    x = np.random.default_rng(0).standard_normal((1, 3, 48, 192)).astype(np.float32)
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    assert_close(ref, env["backend"].load(art, env["target"])({"x": x}), rel=1e-4)
