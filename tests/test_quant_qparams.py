"""Scale / zero-point math against closed forms, and the numpy Q/DQ reference against onnxruntime."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from hwcompile.errors import ConfigError, DataError
from hwcompile.quant.qparams import (
    QParams,
    blockwise_qparams,
    dequantize,
    fake_quant,
    mse_optimal_symmetric_scale,
    qparams_from_range,
    quantize,
    weight_qparams,
)

_ONNX_TYPE = {"int8": TensorProto.INT8, "uint8": TensorProto.UINT8, "int4": TensorProto.INT4,
              "uint4": TensorProto.UINT4}


def test_symmetric_int8_closed_form():
    qp = qparams_from_range(-2.0, 3.0, bits=8, symmetric=True, signed=True)
    assert qp.scale == np.float32(3.0 / 127) and qp.zero_point == 0
    assert (qp.qmin, qp.qmax) == (-128, 127)
    x = np.array([-3.0, 3.0, -4.0, 4.0], np.float32)
    np.testing.assert_array_equal(quantize(x, qp), [-127, 127, -128, 127])  # saturate to the type range


def test_asymmetric_closed_form():
    qp = qparams_from_range(-1.0, 3.0, bits=8, symmetric=False, signed=False)
    assert qp.scale == np.float32(4.0 / 255) and qp.zero_point == 64  # round(63.75)
    qp = qparams_from_range(-1.0, 3.0, bits=8, symmetric=False, signed=True)
    assert qp.zero_point == -128 + 64
    qp = qparams_from_range(1.0, 3.0, bits=8, symmetric=False, signed=False)  # widened to [0, 3]
    assert qp.scale == np.float32(3.0 / 255) and qp.zero_point == 0
    assert quantize(np.float32(0.0), qp) == 0 and dequantize(quantize(np.float32(0.0), qp), qp) == 0.0
    qp = qparams_from_range(0.0, 0.0, bits=8, symmetric=True)
    assert qp.scale == 1.0
    qp = qparams_from_range(-1.0, 1.0, bits=4, symmetric=True, signed=False)
    assert qp.zero_point == 8 and qp.scale == np.float32(1.0 / 7)
    qp = qparams_from_range([-1.0, -4.0], [2.0, 1.0], bits=8, symmetric=True, axis=0)
    np.testing.assert_array_equal(qp.scale, np.float32([2.0 / 127, 4.0 / 127]))


def test_round_half_to_even():
    qp = QParams(np.float32(1.0), np.int64(0), 8, True)
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, 127.5, -128.5], np.float32)
    np.testing.assert_array_equal(quantize(x, qp), [0, 2, 2, 0, -2, -2, 126, 127, -128])
    qp = QParams(np.float32(0.5), np.int64(3), 8, False)
    np.testing.assert_array_equal(quantize(np.array([0.25, 0.75, -1.75, -2.0], np.float32), qp), [3, 5, 0, 0])


def test_weight_qparams_per_channel_and_tensor():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(6, 3, 3, 3)).astype(np.float32) * np.arange(1, 7)[:, None, None, None]
    qp = weight_qparams(w, bits=8, axis=0)
    np.testing.assert_allclose(qp.scale, np.abs(w).reshape(6, -1).max(1) / 127, rtol=1e-6)
    assert qp.scale.shape == (6,) and np.all(qp.zero_point == 0)
    err = np.abs(fake_quant(w, qp) - w)
    assert np.all(err <= qp.scale[:, None, None, None] / 2 * (1 + 1e-5))
    qp1 = weight_qparams(w, bits=8, axis=-3)
    assert qp1.axis == 1 and qp1.scale.shape == (3,)
    np.testing.assert_allclose(qp1.scale, np.abs(w).max(axis=(0, 2, 3)) / 127, rtol=1e-6)
    qpt = weight_qparams(w, bits=8, axis=None)
    assert qpt.scale.shape == () and qpt.scale == np.float32(np.abs(w).max() / 127)
    qpa = weight_qparams(w, bits=8, axis=0, symmetric=False)
    assert qpa.signed is False
    np.testing.assert_allclose(fake_quant(w, qpa), w, atol=float(qpa.scale.max()) * 0.51)


def _brute_force_err(row: np.ndarray, bits: int) -> float:
    half = 2 ** (bits - 1) - 1
    best = np.inf
    for t in np.linspace(1e-3, 1.0, 4000) * np.abs(row).max():
        qp = QParams(np.float32(t / half), np.int64(0), bits, True)
        best = min(best, float(((fake_quant(row, qp) - row) ** 2).sum()))
    return best


@pytest.mark.parametrize("bits", [4, 8])
def test_mse_scale_beats_minmax_and_matches_brute_force(bits):
    rng = np.random.default_rng(1)
    w = rng.standard_t(3, size=(4, 256)).astype(np.float32)
    s = mse_optimal_symmetric_scale(w, bits, axis=0)
    assert s.shape == (4,)
    qp = QParams(s, np.zeros(4, np.int64), bits, True, 0)
    mm = weight_qparams(w, bits, axis=0)
    e_mse = ((fake_quant(w, qp) - w) ** 2).sum(1)
    e_mm = ((fake_quant(w, mm) - w) ** 2).sum(1)
    assert np.all(e_mse <= e_mm)
    if bits == 4:  # heavy tails at 4 bits: clipping pays off clearly
        assert np.all(e_mse < 0.9 * e_mm)
    for c in range(2):
        assert e_mse[c] <= _brute_force_err(w[c], bits) * 1.001
    via = weight_qparams(w, bits, axis=0, method="mse")
    np.testing.assert_allclose(via.scale, s, rtol=1e-6)
    asym = weight_qparams(w, bits, axis=0, symmetric=False, method="mse")
    e_asym = ((fake_quant(w, asym) - w) ** 2).sum(1)
    e_asym_mm = ((fake_quant(w, weight_qparams(w, bits, axis=0, symmetric=False)) - w) ** 2).sum(1)
    assert np.all(e_asym <= e_asym_mm)


def test_blockwise_closed_form():
    rng = np.random.default_rng(2)
    w = rng.normal(size=(5, 70)).astype(np.float32)
    qp = blockwise_qparams(w, bits=4, block_size=32, axis=1)
    assert qp.scale.shape == (5, 3) and qp.block_size == 32 and qp.axis == 1
    for b, (s, e) in enumerate([(0, 32), (32, 64), (64, 70)]):
        np.testing.assert_allclose(qp.scale[:, b], np.abs(w[:, s:e]).max(1) / 7, rtol=1e-6)
    q = quantize(w, qp)
    assert q.shape == w.shape and q.min() >= -8 and q.max() <= 7
    qp0 = blockwise_qparams(w, bits=4, block_size=4, axis=0)
    assert qp0.scale.shape == (2, 70)
    np.testing.assert_allclose(qp0.scale[1], np.abs(w[4]) / 7, rtol=1e-6)
    qpu = blockwise_qparams(w, bits=4, block_size=32, axis=1, symmetric=False)
    assert qpu.dtype_name == "uint4" and qpu.zero_point.min() >= 0 and qpu.zero_point.max() <= 15


def test_errors():
    with pytest.raises(ConfigError):
        qparams_from_range(-1, 1, bits=1)
    with pytest.raises(ConfigError, match="conv1.w"):
        weight_qparams(np.ones((2, 2)), axis=3, name="conv1.w")
    with pytest.raises(DataError, match="fc.w"):
        weight_qparams(np.array([1.0, np.inf]), name="fc.w")
    with pytest.raises(ConfigError):
        QParams(np.float32(0.0), np.int64(0))
    with pytest.raises(ConfigError):
        quantize(np.ones((3, 4)), QParams(np.ones(3, np.float32), np.zeros(3), axis=1))


# -- onnxruntime equivalence ---------------------------------------------------------------

def _ort_qdq(x: np.ndarray, qp: QParams, opset: int) -> np.ndarray:
    attrs = {}
    if qp.axis is not None:
        attrs["axis"] = qp.axis
    if qp.block_size is not None:
        attrs["block_size"] = qp.block_size
    s = numpy_helper.from_array(qp.scale.astype(np.float32), "s")
    z = helper.make_tensor("z", _ONNX_TYPE[qp.dtype_name], qp.zero_point.shape, qp.zero_point.reshape(-1).tolist())
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], **attrs),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], **attrs)]
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, x.shape)], [s, z])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10 if opset >= 21 else 8
    onnx.checker.check_model(model)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def _probe(shape: tuple[int, ...], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_t(3, size=shape) * rng.uniform(0.1, 3.0)).astype(np.float32)


def _with_ties(x: np.ndarray, qp: QParams) -> np.ndarray:
    """Overwrite some entries with exact half-step values (k + 1/2) * s to exercise tie rounding."""
    x = x.copy()
    scale = np.broadcast_to(qp.scale.reshape(-1)[0], x.shape)
    k = np.arange(x.size).reshape(x.shape) % 41 - 20
    ties = ((k + 0.5) * scale).astype(np.float32)
    pick = np.arange(x.size).reshape(x.shape) % 3 == 0
    return np.where(pick, ties, x).astype(np.float32)


@pytest.mark.parametrize("symmetric,signed", [(True, True), (False, False), (False, True)])
def test_per_tensor_matches_onnxruntime(symmetric, signed):
    x = _probe((4, 33), 3)
    qp = qparams_from_range(0.7 * x.min(), 0.7 * x.max(), 8, symmetric, signed)  # clipped: saturation exercised
    x = _with_ties(x, qp)
    np.testing.assert_array_equal(_ort_qdq(x, qp, 13), fake_quant(x, qp))


@pytest.mark.parametrize("axis", [0, 1, 3])
def test_per_axis_matches_onnxruntime(axis):
    w = _probe((8, 6, 3, 3), 4 + axis)
    qp = weight_qparams(w, 8, axis=axis)
    qp_clip = QParams(qp.scale * np.float32(0.6), qp.zero_point, 8, True, axis)
    for q in (qp, qp_clip):
        np.testing.assert_array_equal(_ort_qdq(w, q, 13), fake_quant(w, q))


@pytest.mark.parametrize("axis,symmetric", [(1, True), (0, True), (1, False)])
def test_blocked_int4_matches_onnxruntime(axis, symmetric):
    w = _probe((16, 70), 7)
    qp = blockwise_qparams(w, bits=4, block_size=16, axis=axis, symmetric=symmetric)
    qp_clip = QParams(qp.scale * np.float32(0.7), qp.zero_point, 4, qp.signed, qp.axis, qp.block_size)
    for q in (qp, qp_clip):
        np.testing.assert_array_equal(_ort_qdq(w, q, 21), fake_quant(w, q))
