"""Observers: exact mergeability of TensorStats and the clipping ranges against independent references."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from hwcompile.errors import ConfigError, DataError
from hwcompile.quant.observers import METHODS, TensorStats, calibrate_range, entropy
from hwcompile.quant.qparams import fake_quant, qparams_from_range


def _data(seed: int = 0, n: int = 60_000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    edges = np.arange(-256, 256) / 64.0  # values exactly on bin edges of every grid that can occur here
    x = np.concatenate([rng.standard_t(4, n) * 0.7 + 0.3, rng.uniform(-0.01, 0.01, n // 10), np.zeros(500), edges])
    return x.astype(np.float32)


def _same(a: TensorStats, b: TensorStats) -> None:
    assert a.exponent == b.exponent and a.count == b.count
    assert a.min == b.min and a.max == b.max
    np.testing.assert_array_equal(a.hist, b.hist)


def _random_chunks(x: np.ndarray, k: int, rng: np.random.Generator) -> list[np.ndarray]:
    x = x[rng.permutation(len(x))]
    cuts = np.sort(rng.choice(np.arange(1, len(x)), size=k - 1, replace=False))
    chunks = np.split(x, cuts)
    return [chunks[i] for i in rng.permutation(k)]


def test_minmax_exact():
    x = _data()
    st = TensorStats().update(x)
    assert calibrate_range(st, "minmax", symmetric=False) == (float(x.min()), float(x.max()))
    amax = float(np.abs(x).max())
    assert calibrate_range(st, "minmax", symmetric=True) == (-amax, amax)
    pos = TensorStats().update(np.abs(x) + 1.0)  # range widened to contain 0
    assert calibrate_range(pos, "minmax") == (0.0, float((np.abs(x) + 1.0).max()))


def test_histogram_matches_numpy_histogram_after_regridding():
    x = _data(1).astype(np.float64)
    rng = np.random.default_rng(1)
    x = np.sort(np.abs(x)) * rng.choice([-1, 1], len(x))
    st = TensorStats(bins=512)
    for chunk in np.array_split(x, 50):  # absmax grows chunk by chunk: many regrids
        st.update(chunk)
    r = st.R
    assert r > np.abs(x).max() >= r / 2
    ref, _ = np.histogram(x, bins=512, range=(-r, r))
    np.testing.assert_array_equal(st.hist, ref)


def _close_to_np_percentile(got: float, x: np.ndarray, p: float, w: float) -> None:
    """Within one bin width of np.percentile, plus the gap between the order statistics around it
    (a histogram cannot place a value between two samples more finely; ~0 where data is dense)."""
    s = np.sort(x.astype(np.float64))
    k = int(np.floor(p / 100 * (len(s) - 1)))
    gap = s[min(k + 2, len(s) - 1)] - s[max(k - 1, 0)]
    assert abs(got - np.percentile(s, p)) <= w + gap


@pytest.mark.parametrize("p", [99.0, 99.9, 99.99])
def test_percentile_within_one_bin_of_numpy(p):
    x = _data(2)
    st = TensorStats().update(x)
    w = st.bin_width
    lo, hi = calibrate_range(st, "percentile", symmetric=True, percentile=p)
    assert lo == -hi
    _close_to_np_percentile(hi, np.abs(x), p, w)
    lo, hi = calibrate_range(st, "percentile", symmetric=False, percentile=p)
    _close_to_np_percentile(hi, x, p, w)
    _close_to_np_percentile(lo, x, 100 - p, w)
    if p <= 99.9:  # dense enough here: plain one-bin tolerance
        assert abs(hi - np.percentile(x, p)) <= w and abs(lo - np.percentile(x, 100 - p)) <= w


def test_chunking_and_order_invariance():
    x = _data(3)
    rng = np.random.default_rng(3)
    whole = TensorStats().update(x)
    chunked = TensorStats()
    for c in _random_chunks(x, 37, rng):
        chunked.update(c)
    _same(whole, chunked)
    for method in METHODS:
        for sym in (False, True):
            for bits in (8, 4):
                assert calibrate_range(whole, method, bits, sym) == calibrate_range(chunked, method, bits, sym)


def test_zeros_first_then_tiny_values_same_grid():
    tiny = np.array([1e-6, -3e-7], dtype=np.float32)
    a = TensorStats().update(np.zeros(10)).update(tiny)
    b = TensorStats().update(tiny).update(np.zeros(10))
    _same(a, b)
    assert a.R == 2.0 ** math.frexp(1e-6)[1]


def test_merge_equals_update_on_concatenation():
    x = _data(4)
    rng = np.random.default_rng(4)
    parts = _random_chunks(x, 9, rng)
    parts.append(np.full(7, 900.0))  # one part forces a large regrid at merge time
    direct = TensorStats().update(np.concatenate(parts))
    partial = [TensorStats().update(p) for p in parts] + [TensorStats()]  # an empty one merges as a no-op
    while len(partial) > 1:  # random merge tree
        i, j = sorted(rng.choice(len(partial), 2, replace=False))
        b = partial.pop(j)
        partial[i].merge(b)
    _same(partial[0], direct)


def test_memory_constant():
    st = TensorStats(bins=1024)
    rng = np.random.default_rng(5)
    size, nbytes = st.hist.size, st.hist.nbytes
    for i in range(200):
        st.update(rng.normal(size=1000) * (i + 1))
        assert st.hist.size == size and st.hist.nbytes == nbytes
    assert st.count == 200_000 and len(json.dumps(st.to_dict())) < 20_000


def test_json_roundtrip_and_validation():
    st = TensorStats(name="conv1_out").update(_data(6))
    back = TensorStats.from_dict(json.loads(json.dumps(st.to_dict())))
    _same(st, back)
    assert back.name == "conv1_out"
    empty = TensorStats.from_dict(json.loads(json.dumps(TensorStats().to_dict())))
    assert empty.count == 0 and empty.exponent is None
    bad = st.to_dict()
    bad["hist"][0] += 1
    with pytest.raises(ConfigError):
        TensorStats.from_dict(bad)
    with pytest.raises(ConfigError):
        TensorStats.from_dict({"format": "other"})


def test_errors_name_the_tensor():
    with pytest.raises(ConfigError):
        TensorStats(bins=2000)
    with pytest.raises(DataError, match="relu3"):  # inf/NaN are counted; asking for a range names the tensor
        calibrate_range(TensorStats(name="relu3").update(np.array([1.0, np.nan])), "minmax")
    with pytest.raises(DataError, match="relu4"):
        calibrate_range(TensorStats(name="relu4"), "minmax")
    with pytest.raises(ConfigError, match="calib_method"):
        calibrate_range(TensorStats().update([1.0]), "kl")


def test_all_zero_tensor():
    st = TensorStats().update(np.zeros(100))
    for m in METHODS:
        for sym in (False, True):
            assert calibrate_range(st, m, symmetric=sym) == (0.0, 0.0)


def _kl_threshold_reference(hist: np.ndarray, levels: int) -> int:
    """Plain-loop TensorRT KL calibration (reference): index i of the best threshold edge."""
    last = max(i for i in range(len(hist)) if hist[i] > 0) + 1
    best, best_i = math.inf, last
    for i in range(levels, last + 1):
        p = [float(v) for v in hist[:i]]
        p[-1] += float(sum(hist[i:]))
        merged = i // levels
        q = [0.0] * i
        for j in range(levels):
            start = j * merged
            end = i if j == levels - 1 else start + merged
            total = float(sum(hist[start:end]))
            nonzero = [k for k in range(start, end) if p[k] != 0]
            for k in nonzero:
                q[k] = total / len(nonzero)
        ps, qs = sum(p), sum(q)
        p = [v / ps for v in p]
        q = [v / qs for v in q]
        n0 = sum(1 for v in q if v == 0)
        if any(q[k] == 0 and p[k] > 0 for k in range(i)):
            n1 = i - n0
            q = [1e-4 if v == 0 else max(v - 1e-4 * n0 / n1, 1e-12) for v in q]
        kl = sum(pv * math.log(pv / qv) for pv, qv in zip(p, q) if pv > 0)
        if kl < best:
            best, best_i = kl, i
    return best_i


def test_entropy_matches_plain_loop_reference():
    rng = np.random.default_rng(7)
    x = np.concatenate([rng.laplace(size=20_000), rng.uniform(-40, 40, 30)])
    st = TensorStats(bins=256).update(x)
    counts, edges = st.abs_hist()
    for bits in (4, 5):
        i = _kl_threshold_reference(counts, 2 ** (bits - 1))
        lo, hi = entropy(st, bits, symmetric=True)
        assert hi == pytest.approx(min(edges[i], st.absmax)) and lo == -hi
        assert 3.0 < hi < 0.5 * st.absmax  # clips the sparse outliers, keeps the bulk


def test_entropy_keeps_full_range_of_uniform_data():
    x = np.random.default_rng(8).uniform(-1, 1, 50_000)
    st = TensorStats().update(x)
    lo, hi = calibrate_range(st, "entropy", 8, symmetric=True)
    assert hi >= 0.97 * st.absmax


def _data_mse(x: np.ndarray, lo: float, hi: float, bits: int, symmetric: bool) -> float:
    qp = qparams_from_range(lo, hi, bits, symmetric, signed=symmetric)
    return float(np.mean((fake_quant(x, qp).astype(np.float64) - x) ** 2))


@pytest.mark.parametrize("bits", [8, 4])
def test_mse_near_brute_force_optimum_on_samples(bits):
    x = _data(9).astype(np.float64)
    st = TensorStats().update(x)
    amax = st.absmax
    lo, hi = calibrate_range(st, "mse", bits, symmetric=True)
    got = _data_mse(x, lo, hi, bits, True)
    brute = min(_data_mse(x, -t, t, bits, True) for t in np.linspace(amax / 400, amax, 400))
    assert got <= brute * 1.01
    assert got < _data_mse(x, -amax, amax, bits, True)
    lo, hi = calibrate_range(st, "mse", bits, symmetric=False)
    got = _data_mse(x, lo, hi, bits, False)
    brute = min(_data_mse(x, r * x.min(), r * x.max(), bits, False) for r in np.linspace(0.01, 1, 200))
    assert got <= brute * 1.01
