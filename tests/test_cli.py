"""The command line as a user meets it: the default compile, outputs, and bad input."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from hwcompile.cli import app

from conftest import conv_bn_model

runner = CliRunner()


def _run(*args):
    return runner.invoke(app, [str(a) for a in args])


def _sha(p):
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_default_compile_reports_accuracy(tmp_path):
    out = tmp_path / "out"
    r = _run("compile", "--out", out, "--repeats", 5)
    assert r.exit_code == 0, r.output
    from hwcompile.report.timings import read_report

    rep = read_report(out)   # report.json with timings.json's measured times merged back
    assert "latency_ms" not in json.loads((out / "report.json").read_text())["compiled"]
    for key in ("model", "target", "backend", "baseline", "compiled", "layers", "versions"):
        assert key in rep
    for side in ("baseline", "compiled"):
        for key in ("latency_ms", "latency_ms_spread", "size_bytes", "metrics"):
            assert key in rep[side]
    assert rep["compiled"]["metrics"]["top1"] >= 0.95
    assert rep["versions"]["onnxruntime"] and rep["versions"]["hwcompile"]
    convs = [v for v in rep["layers"].values() if v["op"] == "Conv"]
    assert convs and all(v["flops"] > 0 and v["params"] > 0 and "latency_ms" in v for v in convs)
    assert {"model.onnx", "plan.json", "report.json", "report.html", "manifest.json"} <= {p.name for p in out.iterdir()}
    manifest = json.loads((out / "manifest.json").read_text())["files"]
    assert manifest["model.onnx"] == _sha(out / "model.onnx")


def test_default_int8_uses_shipped_calibration(tmp_path):
    r = _run("compile", "--precision", "int8", "--out", tmp_path / "o", "--repeats", 3, "--json")
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert rep["compiled"]["metrics"]["top1"] >= rep["baseline"]["metrics"]["top1"] - 0.02
    assert rep["compiled"]["size_bytes"] < 0.5 * rep["baseline"]["size_bytes"]
    # measured with onnxruntime's integer kernels: no u8*s8 saturation on CPUs without VNNI
    assert rep["compiled"]["metrics"]["snr_db"] >= 25


def test_inspect_json(tmp_path):
    p = tmp_path / "m.onnx"
    onnx.save(conv_bn_model(), p)
    r = _run("inspect", p, "--json")
    assert r.exit_code == 0
    d = json.loads(r.stdout)
    assert d["batchnorm"] == 2 and d["ops"]["Conv"] == 2 and d["inputs"][0]["shape"] == [1, 3, 8, 8]
    assert d["flops"] == 2 * 8 * 27 * 64 + 2 * 4 * 8 * 64


def test_profile_model_and_folder(tmp_path):
    p = tmp_path / "m.onnx"
    onnx.save(conv_bn_model(), p)
    r = _run("profile", p, "--repeats", 3, "--json")
    assert r.exit_code == 0, r.output
    layers = {row["layer"] for row in json.loads(r.stdout)["layers"]}
    assert "conv1" in layers
    _run("compile", "--out", tmp_path / "o", "--repeats", 2)
    r = _run("profile", tmp_path / "o", "--repeats", 3, "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["latency_ms"] > 0


def test_targets_lists_host_cpu():
    r = _run("targets", "--json")
    rows = {t["name"]: t for t in json.loads(r.stdout)}
    assert rows["host-cpu"]["can_build"] is True
    assert rows["nvidia-ampere"]["reason"] or rows["nvidia-ampere"]["can_build"]


def _bad_cases(tmp_path):
    trunc = tmp_path / "trunc.onnx"
    data = conv_bn_model().SerializeToString()
    trunc.write_bytes(data[: len(data) // 3])
    text = tmp_path / "text.onnx"
    text.write_text("hello")
    bad_op = conv_bn_model()
    bad_op.graph.node[2].op_type, bad_op.graph.node[2].domain = "Mystery", "x.y"
    bad_op.opset_import.append(onnx.helper.make_opsetid("x.y", 1))
    unsupported = tmp_path / "unsupported.onnx"
    onnx.save(bad_op, unsupported)
    good = tmp_path / "good.onnx"
    onnx.save(conv_bn_model(), good)
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, x=np.zeros((4, 3, 9, 9), np.float32))
    missing_input = tmp_path / "missing.npz"
    np.savez(missing_input, y=np.zeros((4, 3, 8, 8), np.float32))
    return [
        (["compile", tmp_path / "nope.onnx"], "not found"),
        (["compile", trunc], "truncated"),
        (["compile", text], "not"),
        (["compile", unsupported], "relu1"),
        (["compile", good, "--target", "no-such-device"], "unknown target"),
        (["compile", good, "--precision", "int3"], "--precision"),
        (["compile", good, "--precision", "int8"], "--calib"),
        (["compile", good, "--precision", "int8", "--calib", wrong], "dimension 2"),
        (["compile", good, "--precision", "int8", "--calib", missing_input], "no data for model input"),
        (["compile", good, "--sparsity", "5:4"], "sparsity"),
        (["compile", good, "--calib", tmp_path / "absent.npz", "--precision", "int8"], "not found"),
    ]


def test_bad_input_exits_2_with_one_line_and_no_output(tmp_path):
    for args, needle in _bad_cases(tmp_path):
        inputs = [a for a in args if str(a).endswith(".onnx") and a.exists()]
        before = {a: _sha(a) for a in inputs}
        out = tmp_path / "out"
        r = _run(*args, "--out", out)
        assert r.exit_code == 2, (args, r.output)
        err = r.stderr.strip()
        assert needle in err, (args, err)
        assert "Traceback" not in r.output and len(err.splitlines()) <= 3, err
        assert not out.exists(), args
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")], args
        assert {a: _sha(a) for a in inputs} == before


def test_spearman_metric_on_a_scoring_model(tmp_path):
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.array([[1.0], [2.0]], np.float32), "w")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["score"], name="head")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
                          [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N", 1])], [w])
    p = tmp_path / "s.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), p)
    x = np.random.default_rng(0).standard_normal((50, 2)).astype(np.float32)
    y = x @ np.array([1.0, 2.0]) + 0.01 * np.random.default_rng(1).standard_normal(50)
    np.savez(tmp_path / "e.npz", x=x, y=y)
    r = _run("compile", p, "--eval", tmp_path / "e.npz", "--labels", "y", "--metric", "spearman", "--out",
             tmp_path / "o", "--repeats", 2, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["compiled"]["metrics"]["spearman"] > 0.95


def test_target_quant_defaults_yield_to_the_command_line(tmp_path):
    """A target's [quant] table sets QuantSettings defaults (TensorRT: entropy calibration); a flag wins."""
    from hwcompile.ir import load as load_graph
    from hwcompile.pipeline import CompileOptions, make_plan
    from hwcompile.contract import QuantSettings
    from hwcompile.targets import load_target

    good = tmp_path / "good.onnx"
    onnx.save(conv_bn_model(), good)
    graph = load_graph(good)
    trt = load_target("nvidia-ampere")
    assert trt.quant == {"calib_method": "entropy"}
    assert make_plan(graph, CompileOptions(precision="int8"), trt).quant.calib_method == "entropy"
    given = CompileOptions(precision="int8", quant=QuantSettings(calib_method="mse"), quant_given=frozenset({"calib_method"}))
    assert make_plan(graph, given, trt).quant.calib_method == "mse"
    assert make_plan(graph, CompileOptions(precision="int8"), load_target("host-cpu")).quant.calib_method == "minmax"
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=np.random.default_rng(0).standard_normal((8, 1, 3, 8, 8)).astype(np.float32)[:, 0])
    r = _run("compile", good, "--target", "nvidia-ampere", "--precision", "int8", "--calib-method", "percentile",
             "--calib", calib, "--out", tmp_path / "o", "--repeats", 2)
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "o" / "plan.json").read_text())["quant"]["calib_method"] == "percentile"


@pytest.mark.parametrize("section, line, field", [
    ("quant", 'calib_method = "median"', "calib_method"),
    ("quant", "bits = 3", "bits"),
    ("backend_settings", 'allow_spinning = "no"', "allow_spinning"),
    ("backend_settings", "intra_op_num_threads = -1", "intra_op_num_threads"),
    ("backend_settings", 'graph_optimization_level = "max"', "graph_optimization_level")])
def test_bad_target_table_names_the_field(tmp_path, section, line, field):
    t = tmp_path / "dev.toml"
    t.write_text(f'name = "dev"\nbackend = "onnxruntime"\nprecisions = ["int8"]\n\n[{section}]\n{line}\n')
    r = _run("compile", "--target", t, "--precision", "int8", "--out", tmp_path / "o")
    assert r.exit_code == 2 and f"[{section}]" in r.output and field in r.output, r.output
    assert not (tmp_path / "o").exists()
