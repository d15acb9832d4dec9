"""Quantize-or-prune analysis: sampled SNRs vs closed forms, numerical integration and the paper."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from hwcompile.analysis.quant_vs_prune import (
    BITS,
    SNR_CAP_DB,
    QvPConfig,
    analytic_snr,
    analyze_model_weights,
    analyze_tensor,
    optimal_scale,
    prune_mse,
    quantize_uniform,
    sample_kurtosis,
)
from hwcompile.errors import ConfigError, DataError

N = 10**6


def _stratified(ppf, n: int = N, seed: int = 0) -> np.ndarray:
    """n points at the quantiles (i + 1/2)/n, shuffled: a sample whose empirical CDF is within 1/n
    of the true one everywhere, so it carries no sampling noise."""
    x = ppf((np.arange(n) + 0.5) / n)
    return np.random.default_rng(seed).permutation(x)


@pytest.fixture(scope="module")
def gauss_random():
    return analyze_tensor("gauss", np.random.default_rng(1).standard_normal(N).astype(np.float32))


@pytest.fixture(scope="module")
def analytic():
    return {key: {b: analytic_snr(key[0], b, key[1]) for b in BITS}
            for key in (("gaussian", None), ("student_t", 3.0), ("student_t", 8.0))}


# --- the paper's picture ---------------------------------------------------------------------

def test_gaussian_quantization_wins_at_every_bit_width(gauss_random, analytic):
    for b in BITS:
        entry = gauss_random["bits"][str(b)]
        assert entry["better"] == "quantize", b
        assert entry["quant_snr_db"] > entry["prune_snr_db"] + 4.0
        assert entry["sparsity"] == pytest.approx(1 - b / 16)
        assert analytic[("gaussian", None)][b]["better"] == "quantize"


def test_student_t3_pruning_wins_at_high_compression(analytic):
    """Paper: heavy tails make pruning better only at very high compression (2-3 bits)."""
    w = np.random.default_rng(2).standard_t(3.0, N)
    res = analyze_tensor("t3", w)
    assert res["kurtosis"] > 20  # population kurtosis is infinite for df <= 4
    for b in (3, 2):
        assert res["bits"][str(b)]["better"] == "prune"
        assert analytic[("student_t", 3.0)][b]["better"] == "prune"
    assert res["bits"]["2"]["prune_snr_db"] > res["bits"]["2"]["quant_snr_db"] + 1.0
    # moderate compression: quantization still wins for the population
    for b in (8, 4):
        assert analytic[("student_t", 3.0)][b]["better"] == "quantize"
    assert analytic_snr("student_t", 2, 2.5)["better"] == "prune"


# --- sampled vs numerically integrated --------------------------------------------------------

@pytest.mark.parametrize("dist,df", [("gaussian", None), ("student_t", 8.0)])
def test_stratified_sample_matches_integration_at_every_bit_width(dist, df, analytic):
    ppf = stats.norm.ppf if df is None else (lambda p: stats.t.ppf(p, df))
    res = analyze_tensor(dist, _stratified(ppf))
    for b in BITS:
        ref, got = analytic[(dist, df)][b], res["bits"][str(b)]
        assert got["quant_snr_db"] == pytest.approx(ref["quant_snr_db"], abs=0.3), b
        assert got["prune_snr_db"] == pytest.approx(ref["prune_snr_db"], abs=0.3), b
        assert got["better"] == ref["better"]


@pytest.mark.parametrize("dist,df", [("gaussian", None), ("student_t", 8.0)])
def test_random_sample_matches_integration(dist, df, analytic, gauss_random):
    """At 8 bits the optimal clip sits in the far tail (~1e-4 of the mass, tens of samples), so a
    random 1e6 sample's 8-bit SNR scatters by ~0.2 dB around the population value; 4/3/2 bits
    and pruning are tight."""
    res = gauss_random if df is None else analyze_tensor("t8", np.random.default_rng(3).standard_t(df, N))
    for b in BITS:
        ref, got = analytic[(dist, df)][b], res["bits"][str(b)]
        assert got["prune_snr_db"] == pytest.approx(ref["prune_snr_db"], abs=0.3), b
        tol = 1.0 if b == 8 else 0.3
        assert got["quant_snr_db"] == pytest.approx(ref["quant_snr_db"], abs=tol), b


def test_analytic_gaussian_matches_closed_form():
    """Gaussian cell integrals in closed form: int_a^b (x - c)^2 phi(x) dx with Phi and phi."""
    phi, Phi = stats.norm.pdf, stats.norm.cdf

    def cell(a, b, c):
        m0 = Phi(b) - Phi(a)
        m1 = phi(a) - phi(b)
        m2 = m0 - (b * phi(b) if np.isfinite(b) else 0.0) + (a * phi(a) if np.isfinite(a) else 0.0)
        return m2 - 2 * c * m1 + c * c * m0

    for b in BITS:
        ref = analytic_snr("gaussian", b)
        k_neg, k_pos = 2 ** (b - 1), 2 ** (b - 1) - 1

        def mse(s):
            edges = [-np.inf] + [(k + 0.5) * s for k in range(-k_neg, k_pos)] + [np.inf]
            return sum(cell(edges[i], edges[i + 1], (i - k_neg) * s) for i in range(len(edges) - 1))

        s = ref["quant_scale"]
        assert 10 * math.log10(1 / mse(s)) == pytest.approx(ref["quant_snr_db"], abs=1e-6)
        assert mse(s) <= min(mse(s * 1.01), mse(s * 0.99))  # a minimum
        tau = stats.norm.ppf(1 - b / 32)
        pruned = (2 * Phi(tau) - 1) - 2 * tau * phi(tau)
        assert ref["prune_snr_db"] == pytest.approx(10 * math.log10(1 / pruned), abs=1e-6)


def test_ternary_gaussian_is_max_lloyd_optimum():
    """Restricted 2-bit grid = {-s, 0, s}; Max (1960): optimal 3-level quantizer of N(0,1) has
    output 1.2240, threshold 0.6120 (midway, hence uniform) and MSE 0.1902."""
    ref = analytic_snr("gaussian", 2, grid="restricted")
    assert ref["quant_scale"] == pytest.approx(1.2240, abs=2e-3)
    assert ref["quant_snr_db"] == pytest.approx(10 * math.log10(1 / 0.1902), abs=0.01)
    w = _stratified(stats.norm.ppf, 200_000)
    s, _ = optimal_scale(w, 2, "restricted")
    assert s == pytest.approx(1.2240, abs=0.01)


# --- exact small cases --------------------------------------------------------------------------

def test_kurtosis():
    assert sample_kurtosis(np.array([-1.0, 1.0])) == pytest.approx(1.0)
    assert sample_kurtosis(np.array([0.0, 0, 0, 1, -1])) == pytest.approx(2.5)
    assert sample_kurtosis(np.full(7, 3.0)) is None
    x = np.random.default_rng(4).standard_t(8, 5000)
    assert sample_kurtosis(x) == pytest.approx(stats.kurtosis(x, fisher=True, bias=True) + 3)


def test_gaussian_kurtosis_is_three(gauss_random):
    assert gauss_random["kurtosis"] == pytest.approx(3.0, abs=0.05)


def test_quantize_uniform_grid():
    q = quantize_uniform(np.array([0.3, -1.0, 2.0, -2.0]), 0.5, 2)  # levels {-2,-1,0,1} * 0.5
    np.testing.assert_allclose(q, [0.5, -1.0, 0.5, -1.0])
    q = quantize_uniform(np.array([0.3, -1.0, 2.0]), 0.5, 2, "restricted")  # {-1,0,1} * 0.5
    np.testing.assert_allclose(q, [0.5, -0.5, 0.5])


def test_tensor_on_grid_is_lossless_and_capped():
    w = 0.25 * np.tile(np.arange(-8, 8), 64).astype(np.float32)  # exactly the 4-bit signed grid
    res = analyze_tensor("ongrid", w)
    assert res["bits"]["4"]["quant_snr_db"] == SNR_CAP_DB
    assert res["bits"]["4"]["quant_scale"] == pytest.approx(0.25)
    assert res["bits"]["8"]["quant_snr_db"] == SNR_CAP_DB  # 0.25 is a multiple of 2/128
    assert res["bits"]["2"]["quant_snr_db"] < 60
    json.dumps(res, allow_nan=False)


def test_prune_snr_closed_form():
    w = np.arange(1.0, 17.0)
    res = analyze_tensor("ramp", w)
    total = float(np.sum(w**2))
    assert res["bits"]["8"]["prune_snr_db"] == pytest.approx(10 * math.log10(total / np.sum(w[:8] ** 2)))
    assert res["bits"]["4"]["prune_snr_db"] == pytest.approx(10 * math.log10(total / np.sum(w[:12] ** 2)))
    assert prune_mse(w, 1.0) == 0.0 and prune_mse(w, 0.0) == pytest.approx(total / 16)
    half_zero = np.concatenate([np.zeros(8), w[:8]])
    assert analyze_tensor("hz", half_zero)["bits"]["8"]["prune_snr_db"] == SNR_CAP_DB


def test_zero_tensor_and_bad_inputs():
    res = analyze_tensor("zeros", np.zeros((4, 4)))
    assert all(e["quant_snr_db"] == SNR_CAP_DB and e["better"] == "quantize" for e in res["bits"].values())
    assert res["kurtosis"] is None
    json.dumps(res, allow_nan=False)
    with pytest.raises(DataError, match="badw"):
        analyze_tensor("badw", np.array([1.0, np.nan]))
    with pytest.raises(DataError, match="empty"):
        analyze_tensor("e", np.zeros(0))
    with pytest.raises(ConfigError, match="grid"):
        QvPConfig(grid="affine")
    with pytest.raises(ConfigError, match="bits"):
        QvPConfig(bits=(1,))
    with pytest.raises(ConfigError, match="df"):
        analytic_snr("student_t", 4, df=2.0)
    with pytest.raises(ConfigError, match="dist"):
        analytic_snr("laplace", 4)


def test_analyze_model_weights_skips_and_summarizes():
    rng = np.random.default_rng(5)
    named = [("conv.w", rng.standard_normal((16, 8, 3, 3)).astype(np.float32)),
             ("conv.b", rng.standard_normal(16).astype(np.float32)),
             ("emb.ids", np.arange(5000, dtype=np.int64)),
             ("fc.w", rng.standard_t(2.2, (64, 64)))]
    cfg = QvPConfig(bits=(4, 2), max_elements=2000)
    out = analyze_model_weights(named, min_size=1024, config=cfg)
    assert [t["name"] for t in out["tensors"]] == ["conv.w", "fc.w"]
    assert out["skipped"] == ["conv.b", "emb.ids"]
    assert out["tensors"][0]["shape"] == [16, 8, 3, 3]
    assert out["tensors"][1]["elements"] == 4096 and out["tensors"][1]["elements_used"] == 2000
    assert set(out["tensors"][0]["bits"]) == {"4", "2"}
    for b in ("4", "2"):
        verdicts = [t["bits"][b]["better"] for t in out["tensors"]]
        assert out["summary"][b] == {"quantize": verdicts.count("quantize"), "prune": verdicts.count("prune")}
    json.dumps(out, allow_nan=False)
