"""`hwcompile analyze MODEL --json` as a user meets it: schema, verdicts, independent numbers, bad files.

The model is two MatMuls built with onnx.helper: one weight drawn from a standard normal, one from
a Student-t with 3 degrees of freedom (heavy tails, the example of Kuzmin et al. 2023). The
Gaussian must be quantized at every width; the Student-t must be pruned at 2 bits (population
SNRs: quantize 4.6 dB, prune 6.0 dB). Pruning SNR, sparsity and kurtosis are recomputed here from
the raw weights with plain numpy / scipy. The quantization SNR is recomputed independently by brute
force (a dense scan of scales, then a finer scan around the best; no optimizer) and must agree
within 0.3 dB; it is also checked against the SNR of a simple max-abs scale (the MSE-optimal scale
can only be better), against the Gaussian's population values (paper) and, for the Student-t at
2 bits, against population SNRs integrated here over scipy.stats.t's density.
"""
from __future__ import annotations

import json
import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from scipy import stats
from typer.testing import CliRunner

from hwcompile.cli import app

runner = CliRunner()
D = 256
BITS = ("8", "4", "3", "2")
#: Population SNRs (dB) of a standard normal at 8/4/3/2 bits, MSE-optimal scale, signed grid (paper, Fig. 1).
GAUSS_QUANT_DB = {"8": 40.6, "4": 19.3, "3": 13.9, "2": 8.3}


@pytest.fixture(scope="module")
def weights() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"w_gauss": rng.standard_normal((D, D)).astype(np.float32),
            "w_student_t": rng.standard_t(3.0, (D, D)).astype(np.float32),
            "bias_small": rng.standard_normal(D).astype(np.float32)}   # < min_size: skipped


@pytest.fixture(scope="module")
def model_path(tmp_path_factory, weights):
    nodes = [helper.make_node("MatMul", ["x", "w_gauss"], ["h"], name="mm_gauss"),
             helper.make_node("MatMul", ["h", "w_student_t"], ["h2"], name="mm_t"),
             helper.make_node("Add", ["h2", "bias_small"], ["y"], name="add_bias")]
    graph = helper.make_graph(nodes, "qvp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, D])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, D])],
                              [numpy_helper.from_array(v, k) for k, v in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    path = tmp_path_factory.mktemp("analyze") / "qvp.onnx"
    onnx.save(model, path)
    return path


@pytest.fixture(scope="module")
def report(model_path) -> dict:
    r = runner.invoke(app, ["analyze", str(model_path), "--json"])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def brute(weights) -> dict[tuple[str, str], float]:
    return {(n, b): _brute_quant_snr_db(weights[n], int(b)) for n in ("w_gauss", "w_student_t") for b in BITS}


def _by_name(report: dict) -> dict[str, dict]:
    return {t["name"]: t for t in report["tensors"]}


def _prune_snr_db(w: np.ndarray, bits: int) -> float:
    """Keep the round(n b / 16) largest |w|: SNR = 10 log10(sum w^2 / sum of the pruned w^2)."""
    sq = np.sort(np.square(w.astype(np.float64).ravel()))
    n_keep = int(math.floor(sq.size * bits / 16 + 0.5))
    return 10 * math.log10(sq.sum() / sq[: sq.size - n_keep].sum())


def _brute_quant_snr_db(w: np.ndarray, bits: int) -> float:
    """Best SNR over a scan of 100 log-spaced scales in [amax/k / 100, amax/k], then 100 linear ones
    between the best point's neighbours; grid -2^(b-1)..2^(b-1)-1, round to nearest."""
    x = w.astype(np.float64).ravel()
    k = 2 ** (bits - 1) - 1

    def err(s: float) -> float:
        e = x - np.clip(np.rint(x / s), -k - 1, k) * s
        return float(e @ e)

    coarse = np.geomspace(np.abs(x).max() / k / 100, np.abs(x).max() / k, 100)
    errs = [err(s) for s in coarse]
    i = int(np.argmin(errs))
    assert 0 < i < len(coarse) - 1, "optimum at the edge of the scanned range"
    fine = np.linspace(coarse[max(i - 1, 0)], coarse[min(i + 1, len(coarse) - 1)], 100)
    return 10 * math.log10(float(x @ x) / min(min(errs), *(err(s) for s in fine)))


def _population_t_snr_db(bits: int, df: float = 3.0) -> tuple[float, float]:
    """(quantize, prune) SNR of a Student-t population: the quantization error integrated cell by
    cell over scipy.stats.t.pdf at each of 150 scales (best kept); pruning below |w| < tau with
    P(|w| > tau) = b/16."""
    from scipy import integrate

    var, k = df / (df - 2), 2 ** (bits - 1) - 1
    pdf = stats.t(df).pdf
    best = math.inf
    for s in np.geomspace(0.05, 10.0, 150):
        edges = [-math.inf, *((j + 0.5) * s for j in range(-k - 1, k)), math.inf]
        e = sum(integrate.quad(lambda x, c=c: (x - c * s) ** 2 * pdf(x), lo, hi, limit=200)[0]
                for c, lo, hi in zip(range(-k - 1, k + 1), edges[:-1], edges[1:]))
        best = min(best, e)
    tau = stats.t.ppf(1 - bits / 32, df)
    pruned = 2 * integrate.quad(lambda x: x * x * pdf(x), 0, tau)[0]
    return 10 * math.log10(var / best), 10 * math.log10(var / pruned)


def _maxabs_quant_snr_db(w: np.ndarray, bits: int) -> float:
    """Scale amax / (2^(b-1) - 1), grid -2^(b-1)..2^(b-1)-1, round to nearest: a feasible, non-optimal scale."""
    x = w.astype(np.float64).ravel()
    k = 2 ** (bits - 1) - 1
    s = np.abs(x).max() / k
    q = np.clip(np.rint(x / s), -k - 1, k) * s
    return 10 * math.log10(np.sum(x * x) / np.sum((x - q) ** 2))


def test_schema(report):
    assert isinstance(report["tensors"], list)
    for t in report["tensors"]:
        assert {"name", "shape", "kurtosis", "bits"} <= set(t)
        assert isinstance(t["name"], str) and isinstance(t["shape"], list)
        assert all(isinstance(d, int) for d in t["shape"])
        assert isinstance(t["kurtosis"], float)
        assert list(t["bits"]) == list(BITS)
        for b in BITS:
            e = t["bits"][b]
            assert {"quant_snr_db", "prune_snr_db", "sparsity", "better"} <= set(e)
            assert all(isinstance(e[k], float) for k in ("quant_snr_db", "prune_snr_db", "sparsity"))
            assert e["better"] in ("quantize", "prune")
            assert e["better"] == ("prune" if e["prune_snr_db"] > e["quant_snr_db"] else "quantize")


def test_tensors_listed_and_small_ones_skipped(report, weights):
    by = _by_name(report)
    assert set(by) == {"w_gauss", "w_student_t"}          # the 256-element bias is under --min-size 1024
    assert by["w_gauss"]["shape"] == [D, D] and by["w_student_t"]["shape"] == [D, D]


def test_gaussian_quantize_at_every_width(report, weights):
    t = _by_name(report)["w_gauss"]
    for b in BITS:
        e = t["bits"][b]
        assert e["better"] == "quantize", b
        # 8 bits: the error is set by the few largest samples (n = 65,536), hence the wider band
        assert e["quant_snr_db"] == pytest.approx(GAUSS_QUANT_DB[b], abs=0.6 if b == "8" else 0.2), b


def test_heavy_tailed_prune_at_2_bits(report):
    t = _by_name(report)["w_student_t"]
    assert t["bits"]["2"]["better"] == "prune"
    assert t["bits"]["2"]["prune_snr_db"] > t["bits"]["2"]["quant_snr_db"] + 0.5
    assert t["kurtosis"] > 3.0 + 3.0 > _by_name(report)["w_gauss"]["kurtosis"]


def test_numbers_match_independent_computation(report, weights, brute):
    for name, t in _by_name(report).items():
        w = weights[name]
        assert t["kurtosis"] == pytest.approx(float(stats.kurtosis(w.ravel().astype(np.float64), fisher=False)),
                                              rel=1e-9)
        for b in BITS:
            e = t["bits"][b]
            assert e["sparsity"] == pytest.approx(1 - int(b) / 16, abs=1e-12)
            assert e["prune_snr_db"] == pytest.approx(_prune_snr_db(w, int(b)), abs=1e-6)
            assert e["quant_snr_db"] >= _maxabs_quant_snr_db(w, int(b)) - 1e-9
            assert e["quant_snr_db"] == pytest.approx(brute[name, b], abs=0.3), (name, b)


def test_independent_verdicts(weights, brute):
    """The paper's picture from the independent computations alone: Gaussian quantizes at every
    width, the Student-t prunes at 2 bits (same samples as the report)."""
    for b in BITS:
        assert brute["w_gauss", b] > _prune_snr_db(weights["w_gauss"], int(b)), b
    assert _prune_snr_db(weights["w_student_t"], 2) > brute["w_student_t", "2"]


def test_student_t_matches_population_at_2_bits(report):
    q_pop, p_pop = _population_t_snr_db(2)
    assert p_pop > q_pop + 1.0                             # the population prunes at 2 bits too
    e = _by_name(report)["w_student_t"]["bits"]["2"]
    assert e["quant_snr_db"] == pytest.approx(q_pop, abs=0.3)
    assert e["prune_snr_db"] == pytest.approx(p_pop, abs=0.3)


def test_min_size_option(model_path):
    r = runner.invoke(app, ["analyze", str(model_path), "--json", "--min-size", "100"])
    assert r.exit_code == 0, r.output
    assert {t["name"] for t in json.loads(r.stdout)["tensors"]} == {"w_gauss", "w_student_t", "bias_small"}


@pytest.mark.parametrize("content", [b"\x08\x07garbage that is not a protobuf\xff\xfe" * 4, b""])
def test_corrupt_file_exits_2(tmp_path, content):
    p = tmp_path / "bad.onnx"
    p.write_bytes(content)
    r = runner.invoke(app, ["analyze", str(p), "--json"])
    assert r.exit_code == 2, r.output
    assert r.stdout.strip() == "" or not r.stdout.lstrip().startswith("{")


def test_truncated_model_exits_2(tmp_path, model_path):
    p = tmp_path / "truncated.onnx"
    p.write_bytes(model_path.read_bytes()[: 1000])
    r = runner.invoke(app, ["analyze", str(p), "--json"])
    assert r.exit_code == 2, r.output


def test_missing_file_exits_2(tmp_path):
    r = runner.invoke(app, ["analyze", str(tmp_path / "nope.onnx"), "--json"])
    assert r.exit_code == 2, r.output
