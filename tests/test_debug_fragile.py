"""`hwcompile debug` through the command line names the layer that was made fragile on purpose, first.

The model is a chain of six 3x3 convolutions (Relu between them). Layer ``conv{k}`` is made fragile:
the layer before it has a dead output channel (zero weights and bias, so 0 after Relu) and
``conv{k}`` reads that channel through a weight of 1000 in every output channel. The float model
is unchanged by it (1000 x 0), but a per-channel symmetric INT8 weight scale becomes 1000/127, so
every real weight of ``conv{k}`` (~0.2) rounds to zero: that layer alone destroys the output. Which
layer is fragile is a parameter, so the test cannot pass by ranking a fixed position first.
"""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from conftest import session
from hwcompile.cli import app

N_LAYERS, CH = 6, 8
runner = CliRunner()


def chain_model(fragile: int | None, seed: int = 0) -> onnx.ModelProto:
    """x[N,3,8,8] -> conv0 -> Relu -> ... -> conv5 -> y; ``conv{fragile}`` as in the module docstring."""
    rng = np.random.default_rng(seed)
    f = lambda name, a: numpy_helper.from_array(np.asarray(a, np.float32), name)
    inits, nodes, prev, cin = [], [], "x", 3
    for i in range(N_LAYERS):
        w = rng.standard_normal((CH, cin, 3, 3)) * (0.6 / np.sqrt(cin))
        b = rng.standard_normal(CH) * 0.05
        if fragile is not None and i == fragile - 1:      # dead output channel feeding the fragile layer
            w[CH - 1], b[CH - 1] = 0.0, 0.0
        if fragile is not None and i == fragile:
            w[:, CH - 1, 1, 1] = 1000.0
        inits += [f(f"w{i}", w), f(f"b{i}", b)]
        out = "y" if i == N_LAYERS - 1 else f"c{i}"
        nodes.append(helper.make_node("Conv", [prev, f"w{i}", f"b{i}"], [out], name=f"conv{i}", pads=[1] * 4))
        if i < N_LAYERS - 1:
            nodes.append(helper.make_node("Relu", [out], [f"r{i}"], name=f"relu{i}"))
            prev = f"r{i}"
        cin = CH
    g = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", CH, 8, 8])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _files(tmp_path, fragile: int | None):
    model = chain_model(fragile)
    m, c = tmp_path / "chain.onnx", tmp_path / "calib.npz"
    onnx.save(model, m)
    x = np.random.default_rng(1).standard_normal((48, 3, 8, 8)).astype(np.float32)
    np.savez(c, x=x)
    return model, m, c, x


def _debug(*args):
    r = runner.invoke(app, ["debug", *[str(a) for a in args]])
    assert r.exit_code == 0, r.output
    return r


@pytest.mark.parametrize("fragile", [2, 4])
def test_debug_names_the_fragile_layer_first(tmp_path, fragile):
    model, m, c, x = _files(tmp_path, fragile)
    # The sabotage leaves the float model intact: the dead channel is 0 after Relu.
    clean = session(chain_model(None)).run(None, {"x": x[:4]})[0]
    assert np.isfinite(session(model).run(None, {"x": x[:4]})[0]).all() and clean.shape == (4, CH, 8, 8)

    rep = json.loads(_debug(m, "--calib", c, "--json", "--samples", 16).stdout)
    names = [r["layer"] for r in rep["ranking"]]
    assert rep["culprit"] == f"conv{fragile}" and names[0] == f"conv{fragile}"
    assert set(names) == {f"conv{i}" for i in range(N_LAYERS)}
    first, rest = rep["ranking"][0], rep["ranking"][1:]
    assert first["snr_db"] < 10.0 and all(r["snr_db"] > 25.0 for r in rest)
    assert first["share_of_noise"] > 0.9
    assert f"conv{fragile}" in rep["advice"]

    # The human-readable table lists it in row 1 too.
    out = _debug(m, "--calib", c, "--samples", 16).stdout
    rows = [line for line in out.splitlines() if "conv" in line and "Conv" in line]
    assert rows and f"conv{fragile}" in rows[0].split()


def test_no_fragile_layer_no_dominant_culprit(tmp_path):
    """Without the sabotage every layer keeps INT8-level SNR and none takes most of the noise."""
    _, m, c, _ = _files(tmp_path, None)
    rep = json.loads(_debug(m, "--calib", c, "--json", "--samples", 16).stdout)
    assert len(rep["ranking"]) == N_LAYERS
    assert all(r["snr_db"] > 25.0 for r in rep["ranking"])
    assert rep["ranking"][0]["share_of_noise"] < 0.9
