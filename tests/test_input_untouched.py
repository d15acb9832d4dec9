"""Every subcommand only reads its inputs: model, external-data file, data and plan files keep their
bytes and their modification times, and nothing new appears beside them."""
from __future__ import annotations

import hashlib

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from hwcompile.cli import app

from conftest import conv_bn_model

runner = CliRunner()


def _snapshot(folder):
    return {p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns, p.stat().st_mode)
            for p in sorted(folder.iterdir())}


@pytest.fixture()
def inputs(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    onnx.save_model(conv_bn_model(), d / "model.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=0)
    rng = np.random.default_rng(0)
    np.savez(d / "calib.npz", x=rng.standard_normal((8, 3, 8, 8)).astype(np.float32))
    return d


def _cases(d, out):
    m = d / "model.onnx"
    return {
        "compile-fp32": ["compile", m, "--out", out / "a", "--repeats", 2],
        "compile-int8": ["compile", m, "--out", out / "b", "--repeats", 2, "--precision", "int8",
                         "--calib", d / "calib.npz", "--eval", d / "calib.npz"],
        "compile-int4w": ["compile", m, "--out", out / "c", "--repeats", 2, "--precision", "int4w",
                          "--calib", d / "calib.npz"],
        "compile-2:4": ["compile", m, "--out", out / "d", "--repeats", 2, "--sparsity", "2:4",
                        "--calib", d / "calib.npz"],
        "inspect": ["inspect", m, "--json"],
        "analyze": ["analyze", m, "--json", "--min-size", 1],
        "debug": ["debug", m, "--calib", d / "calib.npz", "--samples", 4, "--json"],
        "profile": ["profile", m, "--repeats", 2, "--json"],
        "check": ["check", m, "--json"],
    }


@pytest.mark.parametrize("case", ["compile-fp32", "compile-int8", "compile-int4w", "compile-2:4", "inspect",
                                  "analyze", "debug", "profile", "check"])
def test_subcommand_leaves_inputs_untouched(inputs, tmp_path, case):
    out = tmp_path / "out"
    out.mkdir()
    before = _snapshot(inputs)
    r = runner.invoke(app, [str(a) for a in _cases(inputs, out)[case]])
    assert r.exit_code in (0, 3), r.output  # check exits 3 when the model breaks a deployment rule
    assert "internal error" not in r.output
    assert _snapshot(inputs) == before


def test_plan_file_and_compiled_folder_untouched(inputs, tmp_path):
    out = tmp_path / "out"
    m = inputs / "model.onnx"
    assert runner.invoke(app, ["compile", str(m), "--out", str(out), "--repeats", "2"]).exit_code == 0
    plan = tmp_path / "plan.json"
    plan.write_bytes((out / "plan.json").read_bytes())
    compiled = _snapshot(out)
    for args in (["profile", str(out), "--repeats", "2", "--json"], ["verify", str(out), "--json"],
                 ["check", str(out / "model.onnx"), "--json"], ["inspect", str(out / "model.onnx")]):
        r = runner.invoke(app, args)
        assert r.exit_code in (0, 1), r.output
        assert _snapshot(out) == compiled, args
    before, plan_before = _snapshot(inputs), _snapshot(tmp_path / "out")
    r = runner.invoke(app, ["compile", str(m), "--out", str(tmp_path / "out2"), "--plan", str(plan), "--repeats", "2"])
    assert r.exit_code == 0, r.output
    assert _snapshot(inputs) == before and _snapshot(tmp_path / "out") == plan_before
    assert plan.read_bytes() == (out / "plan.json").read_bytes()
