"""Per-layer sensitivity: a layer made fragile on purpose ranks first; figures match independent runs."""
from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import session
from hwcompile.analysis.sensitivity import debug_report, layer_sensitivity
from hwcompile.backends.base import get_backend
from hwcompile.data import Dataset
from hwcompile.ir import from_proto
from hwcompile.metrics import snr_db
from hwcompile.contract import PrecisionPlan, LayerChoice
from hwcompile.search.candidates import Candidate, target_candidates, weight_bytes
from hwcompile.targets import load_target
from hwcompile.passes.plan import apply_plan

TARGET = load_target("host-cpu")
BACKEND = get_backend("onnxruntime")


def fragile_model(seed: int = 0) -> onnx.ModelProto:
    """x -> conv_a -> Relu -> conv_b -> Relu -> conv_c -> y.

    conv_a's output channel 7 is dead (zero weights and bias, so always 0 after Relu). conv_b reads
    it through a weight of 1000 in every output channel: the float model ignores it (it multiplies
    0), but a per-channel INT8 weight scale of 1000/127 rounds all of conv_b's real weights (~0.2)
    to zero. conv_b is the fragile layer.
    """
    rng = np.random.default_rng(seed)
    f = lambda name, a: numpy_helper.from_array(np.asarray(a, np.float32), name)
    wa = rng.standard_normal((8, 3, 3, 3)) * 0.3
    wa[7] = 0.0
    wb = rng.standard_normal((8, 8, 3, 3)) * 0.2
    wb[:, 7, 1, 1] = 1000.0
    wc = rng.standard_normal((4, 8, 1, 1)) * 0.5
    inits = [f("wa", wa), f("ba", np.r_[rng.standard_normal(7) * 0.1, 0.0]), f("wb", wb),
             f("bb", rng.standard_normal(8) * 0.1), f("wc", wc), f("bc", np.zeros(4))]
    nodes = [helper.make_node("Conv", ["x", "wa", "ba"], ["a"], name="conv_a", pads=[1] * 4),
             helper.make_node("Relu", ["a"], ["ra"], name="relu_a"),
             helper.make_node("Conv", ["ra", "wb", "bb"], ["b"], name="conv_b", pads=[1] * 4),
             helper.make_node("Relu", ["b"], ["rb"], name="relu_b"),
             helper.make_node("Conv", ["rb", "wc", "bc"], ["y"], name="conv_c")]
    g = helper.make_graph(nodes, "fragile", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def mlp_model(seed: int = 0) -> onnx.ModelProto:
    """x[N,64] -> MatMul(64x128) -> Relu -> Gemm(128x10): layers for int8dyn and int4w."""
    rng = np.random.default_rng(seed)
    f = lambda name, a: numpy_helper.from_array(np.asarray(a, np.float32), name)
    inits = [f("w1", rng.standard_normal((64, 128)) * 0.15), f("w2", rng.standard_normal((128, 10)) * 0.1),
             f("b2", np.zeros(10))]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], name="fc2")]
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def data(shape, n=64, seed=1) -> Dataset:
    return Dataset({"x": np.random.default_rng(seed).standard_normal((n, *shape)).astype(np.float32)}, source="rand")


@pytest.fixture(scope="module")
def fragile():
    model = fragile_model()
    graph = from_proto(model)
    calib = data((3, 8, 8))
    cache: dict = {}
    table = layer_sensitivity(graph, TARGET, BACKEND, calib, samples=32, cache=cache)
    return model, graph, calib, table, cache


def test_fragile_layer_ranks_first_for_int8(fragile):
    _, _, _, table, _ = fragile
    ranked = table.ranked("int8")
    assert [r.layer for r in ranked][0] == "conv_b"
    assert {r.layer for r in ranked} == {"conv_a", "conv_b", "conv_c"}
    # conv_b loses its whole signal; the others keep INT8-level SNR (tens of dB)
    assert ranked[0].snr_db < 10.0
    assert all(r.snr_db > 20.0 for r in ranked[1:])
    # FP16 damages every layer far less than INT8 (11 vs 8 bits of mantissa/levels)
    for r in ranked[1:]:
        assert table.lookup(r.layer, "fp16").snr_db > r.snr_db + 15.0


def test_debug_report_names_the_culprit(fragile):
    _, _, _, table, _ = fragile
    rep = debug_report(table, "int8")
    assert rep["culprit"] == "conv_b" and rep["ranking"][0]["layer"] == "conv_b"
    assert "conv_b" in rep["advice"]
    total = sum(r.damage for r in table.ranked("int8"))
    assert rep["predicted_snr_db_all"] == pytest.approx(-10 * np.log10(total))
    assert sum(r["share_of_noise"] for r in rep["ranking"]) == pytest.approx(1.0)
    assert debug_report(table, "int4w")["culprit"] is None        # Conv layers take no int4w


def test_figures_match_an_independent_run(fragile):
    # Re-apply conv_b=int8 ourselves and run the saved model with a plain onnxruntime session.
    model, graph, calib, table, cache = fragile
    plan = PrecisionPlan.uniform("fp32").with_layer("conv_b", LayerChoice.from_candidate("int8"))
    g = apply_plan(graph.clone(), plan, BACKEND.qdq_style(TARGET), calib, cache=cache)
    from hwcompile.ir import to_proto

    x = calib.inputs["x"][:32]
    ref = session(model).run(None, {"x": x})
    out = session(to_proto(g)).run(None, {"x": x})
    row = table.lookup("conv_b", "int8")
    assert row.snr_db == pytest.approx(snr_db(ref, out), abs=1e-6)
    mse = float(np.mean((ref[0].astype(np.float64) - out[0]) ** 2))
    assert row.mse == pytest.approx(mse, rel=1e-6)
    assert row.damage == pytest.approx(mse / float(np.mean(ref[0].astype(np.float64) ** 2)), rel=1e-6)
    assert table.samples == 32


def test_calibration_statistics_are_collected_once(fragile):
    _, _, _, _, cache = fragile
    assert len(cache) == 1          # one float-graph calibration shared by every INT8 candidate


def test_matmul_candidates_and_noise_additivity():
    model = mlp_model()
    graph = from_proto(model)
    calib = data((64,))
    table = layer_sensitivity(graph, TARGET, BACKEND, calib, samples=64)
    # int8dyn applies to MatMul and Gemm, int4w only to MatMul
    assert table.lookup("fc1", "int8dyn") and table.lookup("fc2", "int8dyn")
    assert table.lookup("fc1", "int4w") and table.lookup("fc2", "int4w") is None
    assert "fc2|int4w" in table.skipped
    # 4-bit weights are much noisier than 8-bit ones: about 6 dB per bit
    assert table.lookup("fc1", "int4w").snr_db < table.lookup("fc1", "int8dyn").snr_db - 12.0
    # independent noise adds: both layers INT8 together ~ -10 log10(d1 + d2)
    plan = PrecisionPlan.uniform("int8")
    g = apply_plan(graph.clone(), plan, BACKEND.qdq_style(TARGET), calib)
    from hwcompile.ir import to_proto

    x = calib.inputs["x"]
    both = snr_db(session(model).run(None, {"x": x}), session(to_proto(g)).run(None, {"x": x}))
    predicted = -10 * np.log10(table.lookup("fc1", "int8").damage + table.lookup("fc2", "int8").damage)
    assert abs(both - predicted) < 2.0


def test_candidates_and_weight_bytes():
    caps = BACKEND.capabilities(TARGET)
    names = [c.name for c in target_candidates(TARGET, caps)]
    assert names[0] == "fp32" and {"fp16", "int8", "int8dyn", "int4w"} <= set(names)
    assert not any("+" in n for n in names)      # onnxruntime CPU runs dense kernels: no 2:4 by default
    sparse = dataclasses.replace(caps, sparse_kernels=("2:4",))   # a backend with 2:4 kernels gets 2:4 candidates
    assert {"fp32+2:4", "int8+2:4"} <= {c.name for c in target_candidates(TARGET, sparse)}
    graph = from_proto(mlp_model())
    fc1 = graph.node("fc1")
    assert weight_bytes(graph, fc1, Candidate("fp32")) == 64 * 128 * 4
    assert weight_bytes(graph, fc1, Candidate("fp16")) == 64 * 128 * 2
    assert weight_bytes(graph, fc1, Candidate("int8")) == 64 * 128 + 4 * 128          # + per-column scales
    assert weight_bytes(graph, fc1, Candidate("int4w")) == 64 * 128 // 2 + 4 * 128 * 2  # 2 blocks of 32 along K


def test_snr_ignores_padding_positions_an_attention_mask_marks():
    """Outputs at padded token positions are never used: errors there must not count, errors on
    real tokens must, and outputs that are not per-token are compared whole."""
    from hwcompile.metrics import output_weights, snr_db

    rng = np.random.default_rng(0)
    mask = np.zeros((2, 8), np.int64)
    mask[:, :3] = 1
    ref = rng.standard_normal((2, 8, 4)).astype(np.float32)
    pooled = rng.standard_normal((2, 4)).astype(np.float32)
    noisy_pad = ref.copy()
    noisy_pad[:, 3:] += 10.0                              # garbage on padding only
    w = output_weights({"input_ids": mask * 7, "attention_mask": mask}, [ref, pooled])
    assert w[1] is None and w[0].shape == (2, 8, 1)
    assert snr_db([ref, pooled], [noisy_pad, pooled], w) == 200.0
    assert snr_db([ref, pooled], [noisy_pad, pooled]) < 0.0          # unmasked, the garbage dominates
    noisy_real = ref.copy()
    noisy_real[:, :3] += 0.1
    sig = float(np.sum(ref[:, :3].astype(np.float64) ** 2) + np.sum(pooled.astype(np.float64) ** 2))
    expect = 10 * np.log10(sig / (0.1 ** 2 * 2 * 3 * 4))
    assert abs(snr_db([ref, pooled], [noisy_real, pooled], w) - expect) < 1e-3
    assert output_weights({"input_ids": mask}, [ref]) == [None]       # no mask input: everything counts
