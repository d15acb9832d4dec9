"""Compensation: GPTQ vs round-to-nearest, bias correction, Hessian streaming, least-squares refit."""
from __future__ import annotations

import numpy as np
import pytest

from hwcompile.errors import ConfigError, DataError
from hwcompile.quant.compensate import (
    HessianAccumulator,
    bias_correction,
    column_quantizer,
    gptq_quantize,
    least_squares_refit,
    refit_from_gram,
    rows_to_weight,
    weight_to_rows,
)
from hwcompile.quant.qparams import blockwise_qparams, fake_quant, weight_qparams


def _correlated_problem(seed: int = 0, n: int = 2000, d_in: int = 96, d_out: int = 32):
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d_in, d_in)) / np.sqrt(d_in) + 0.5 * np.eye(d_in)
    z = rng.normal(size=(n, d_in)) * np.linspace(0.2, 3.0, d_in)  # uneven scales
    x = z @ mix + rng.normal(size=(1, d_in))  # correlated features with nonzero means
    w = rng.normal(size=(d_out, d_in))
    return x, w


def _hessian(x: np.ndarray, chunks: int = 7) -> np.ndarray:
    acc = HessianAccumulator()
    for part in np.array_split(x, chunks):
        acc.update(part)
    return acc.hessian()


def _out_err(x: np.ndarray, w: np.ndarray, wq: np.ndarray) -> float:
    return float(np.linalg.norm(x @ w.T - x @ wq.T))


@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_beats_round_to_nearest_per_row(act_order):
    x, w = _correlated_problem()
    qp = weight_qparams(w, bits=4, axis=0)
    rtn = fake_quant(w, qp).astype(np.float64)
    wq = gptq_quantize(w, _hessian(x), column_quantizer(qp), blocksize=32, act_order=act_order)
    assert wq.shape == w.shape
    np.testing.assert_array_equal(fake_quant(wq, qp), wq.astype(np.float32))  # on the quantization grid
    assert _out_err(x, w, wq) <= 0.8 * _out_err(x, w, rtn)


def test_gptq_beats_round_to_nearest_blockwise():
    x, w = _correlated_problem(1)
    qp = blockwise_qparams(w, bits=4, block_size=32, axis=1)
    rtn = fake_quant(w, qp).astype(np.float64)
    wq = gptq_quantize(w, _hessian(x), column_quantizer(qp), blocksize=64)
    np.testing.assert_array_equal(fake_quant(wq, qp), wq.astype(np.float32))
    assert _out_err(x, w, wq) <= 0.8 * _out_err(x, w, rtn)


def test_gptq_lazy_block_updates_are_exact():
    """Blocked (lazy) error propagation must equal the column-by-column update."""
    x, w = _correlated_problem(9, d_in=40, d_out=6)
    qp = weight_qparams(w, bits=4, axis=0)
    h = _hessian(x)
    ref = gptq_quantize(w, h, column_quantizer(qp), blocksize=1)
    for bs in (7, 40, 128):
        np.testing.assert_array_equal(gptq_quantize(w, h, column_quantizer(qp), blocksize=bs), ref)


def test_gptq_with_diagonal_hessian_is_round_to_nearest():
    """H diagonal: H^-1's Cholesky factor is diagonal, so no error is fed forward."""
    rng = np.random.default_rng(2)
    w = rng.normal(size=(8, 40))
    qp = weight_qparams(w, bits=4, axis=0)
    wq = gptq_quantize(w, np.diag(rng.uniform(0.5, 2.0, 40)), column_quantizer(qp), blocksize=16)
    np.testing.assert_array_equal(wq, fake_quant(w, qp).astype(np.float64))


def test_gptq_dead_inputs_and_quantizer_sees_original_index():
    x, w = _correlated_problem(3, d_in=24, d_out=4)
    x[:, 5] = 0.0
    seen = []
    qp = weight_qparams(w, bits=8, axis=0)
    base = column_quantizer(qp)

    def quant(col, j):
        seen.append(j)
        return base(col, j)

    wq = gptq_quantize(w, _hessian(x), quant, act_order=True)
    assert sorted(seen) == list(range(24)) and seen != list(range(24))
    assert np.all(wq[:, 5] == 0.0)
    with pytest.raises(DataError):
        gptq_quantize(w, np.eye(5), quant)


def test_hessian_accumulator_exact_and_mergeable():
    x, _ = _correlated_problem(4, n=500, d_in=16)
    ref = 2.0 * x.T @ x / len(x)
    whole = HessianAccumulator().update(x)
    np.testing.assert_allclose(whole.hessian(), ref, rtol=1e-12)
    np.testing.assert_allclose(whole.mean(), x.mean(0), rtol=1e-12)
    a = HessianAccumulator().update(x[:123])
    b = HessianAccumulator(16).update(x[123:300]).update(x[300:])
    merged = HessianAccumulator().merge(b).merge(a)
    assert merged.count == 500
    np.testing.assert_allclose(merged.hessian(), ref, rtol=1e-12)
    with pytest.raises(DataError):
        a.update(np.ones((3, 7)))
    with pytest.raises(DataError):
        HessianAccumulator().hessian()


def _conv2d(x: np.ndarray, w: np.ndarray, b: np.ndarray, groups: int = 1) -> np.ndarray:
    """Reference valid conv, stride 1: explicit loops over kernel offsets and groups."""
    n, c, hh, ww = x.shape
    k, cg, kh, kw = w.shape
    ho, wo = hh - kh + 1, ww - kw + 1
    out = np.zeros((n, k, ho, wo))
    kg = k // groups
    for g in range(groups):
        xs = x[:, g * cg:(g + 1) * cg]
        for i in range(kh):
            for j in range(kw):
                out[:, g * kg:(g + 1) * kg] += np.einsum("nchw,kc->nkhw", xs[:, :, i:i + ho, j:j + wo],
                                                         w[g * kg:(g + 1) * kg, :, i, j])
    return out + b[None, :, None, None]


@pytest.mark.parametrize("groups", [1, 2])
def test_bias_correction_conv_zeroes_mean_output_error(groups):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(6, 4, 9, 9)) + rng.normal(size=(1, 4, 1, 1)) * 2.0
    w = rng.normal(size=(6, 4 // groups, 3, 3))
    b = rng.normal(size=6)
    qp = weight_qparams(w, bits=4, axis=0)
    wq = fake_quant(w, qp).astype(np.float64)
    y, yq = _conv2d(x, w, b, groups), _conv2d(x, wq, b, groups)
    # E[x] per (channel, kernel position) over the positions the conv actually reads: exact.
    m = np.array([[x[:, :, i:i + 7, j:j + 7].mean(axis=(0, 2, 3)) for j in range(3)] for i in range(3)])
    m = m.transpose(2, 0, 1)  # [C, kh, kw]
    delta = bias_correction(w, qp, m, "conv", groups=groups)
    before = (yq - y).mean(axis=(0, 2, 3))
    after = (yq + delta[None, :, None, None] - y).mean(axis=(0, 2, 3))
    assert np.abs(before).max() > 1e-2
    np.testing.assert_allclose(after, 0.0, atol=1e-10)
    # per-channel means: border effects only
    delta_c = bias_correction(w, wq, x.mean(axis=(0, 2, 3)), "conv", groups=groups)
    after_c = (yq + delta_c[None, :, None, None] - y).mean(axis=(0, 2, 3))
    assert np.abs(after_c).max() < 0.2 * np.abs(before).max()


@pytest.mark.parametrize("layout", ["gemm_nt", "matmul"])
def test_bias_correction_dense_layouts(layout):
    x, w_rows = _correlated_problem(6, n=300, d_in=20, d_out=7)
    w = w_rows if layout == "gemm_nt" else w_rows.T.copy()
    qp = weight_qparams(w, bits=4, axis=0 if layout == "gemm_nt" else 1)
    wq = fake_quant(w, qp).astype(np.float64)
    y = x @ w.T if layout == "gemm_nt" else x @ w
    yq = x @ wq.T if layout == "gemm_nt" else x @ wq
    delta = bias_correction(w, wq, x.mean(0), layout)
    assert np.abs((yq - y).mean(0)).max() > 1e-2
    np.testing.assert_allclose((yq + delta - y).mean(0), 0.0, atol=1e-10)
    with pytest.raises(DataError):
        bias_correction(w, wq, np.ones(3), layout)
    with pytest.raises(ConfigError):
        bias_correction(w, wq, x.mean(0), "gemm")


@pytest.mark.parametrize("layout,shape", [("conv", (4, 3, 2, 2)), ("gemm_nt", (5, 7)), ("matmul", (7, 5))])
def test_rows_roundtrip(layout, shape):
    w = np.arange(np.prod(shape), dtype=np.float64).reshape(shape)
    rows = weight_to_rows(w, layout)
    assert rows.shape[0] == (shape[1] if layout == "matmul" else shape[0])
    np.testing.assert_array_equal(rows_to_weight(rows, layout, shape), w)


def test_least_squares_recovers_dense_and_masked():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(200, 30))
    w_true = rng.normal(size=(9, 30))
    w = least_squares_refit(x, x @ w_true.T, ridge=1e-12)
    np.testing.assert_allclose(w, w_true, atol=1e-8)
    mask = rng.random((9, 30)) < 0.5
    mask[3] = mask[4]  # shared pattern
    mask[8] = False  # fully pruned row
    sparse_true = np.where(mask, w_true, 0.0)
    w = least_squares_refit(x, x @ sparse_true.T, mask=mask, ridge=1e-12)
    np.testing.assert_allclose(w, sparse_true, atol=1e-8)
    assert np.all(w[~mask] == 0.0)


def test_least_squares_masked_matches_lstsq_on_noisy_data():
    rng = np.random.default_rng(8)
    x = rng.normal(size=(150, 12))
    y = x @ rng.normal(size=(12, 5)) + rng.normal(size=(150, 5))
    mask = rng.random((5, 12)) < 0.6
    w = least_squares_refit(x, y, mask=mask, ridge=0.0)
    for r in range(5):
        free = np.nonzero(mask[r])[0]
        ref = np.linalg.lstsq(x[:, free], y[:, r], rcond=None)[0]
        np.testing.assert_allclose(w[r, free], ref, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(refit_from_gram(x.T @ x, x.T @ y, mask, 0.0), w, rtol=1e-12, atol=1e-12)
    with pytest.raises(DataError):
        least_squares_refit(x, y, mask=mask.T)
