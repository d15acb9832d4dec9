"""Mixed precision end to end: the feedback loop on a synthetic device, and a real compile.

The synthetic device reports latency from a fixed table, plus a cost per layer-to-layer edge whose
two layers take different candidates that its per-layer profile does not show (as format conversions
at precision boundaries are on real devices), and its numerics from a fixed damage table: a build's
output is the FP32 output plus deterministic noise whose power is the summed damage of the layers'
choices (noise powers add, the planner's model), so every SNR the search sees is exact. The tests
assert what the search must do, independently of this machine's timing and of its integer kernels
(the same INT8 layer measured 24 dB with AVX2's saturating u8*s8 pairs and 39 dB with VNNI).
"""
from __future__ import annotations

import dataclasses

import itertools
import json

import numpy as np
import pytest

from hwcompile.backends.base import QDQStyle, Profile, Timing
from hwcompile.backends.onnxruntime import OnnxRuntimeBackend
from hwcompile.data import Dataset
from hwcompile.errors import ConfigError
from hwcompile.ir import from_proto
from hwcompile.pipeline import CompileOptions, compile_model
from hwcompile.contract import PrecisionPlan
from hwcompile.search.driver import SearchOptions, plan_mixed
from hwcompile.targets import load_target
from test_sensitivity import fragile_model, mlp_model

TARGET = load_target("host-cpu")
LAYERS = ["conv_a", "conv_b", "conv_c"]
EDGES = [("conv_a", "conv_b"), ("conv_b", "conv_c")]


#: Output SNR (dB) of each layer alone under each candidate: conv_b is the fragile layer, conv_a too
#: noisy for the default 30 dB floor, conv_c fine in INT8; FP16 is near lossless.
DAMAGE_DB = {("conv_a", "int8"): 24.0, ("conv_b", "int8"): 3.0, ("conv_c", "int8"): 45.0,
             ("conv_b", "fp32+2:4"): 18.0, ("conv_c", "fp32+2:4"): 12.0,
             **{(l, "fp16"): 80.0 for l in LAYERS}}


def choice_name(c) -> str:
    return c.candidate + ("" if c.sparsity == "dense" else f"+{c.sparsity}")


class SyntheticRunner:
    """FP32 outputs of the fragile model plus noise of power ``sum_i 10^(-snr_i/10)`` times the signal's."""

    def __init__(self, choices: dict[str, str]):
        import onnxruntime as ort

        # a choice without an entry leaves the layer as it is (the prune pass keeps conv_a's 3 input
        # channels dense)
        self.damage = sum(10.0 ** (-DAMAGE_DB[(l, c)] / 10.0) for l, c in choices.items() if (l, c) in DAMAGE_DB)
        self.sess = ort.InferenceSession(fragile_model().SerializeToString(), providers=["CPUExecutionProvider"])

    def outputs(self, x: np.ndarray) -> list[np.ndarray]:
        (y,) = self.sess.run(None, {"x": x})
        noise = np.random.default_rng(7).standard_normal(y.shape)
        noise /= np.sqrt(np.mean(noise ** 2))                 # unit power exactly: the SNR is exact
        return [(y + np.sqrt(self.damage * np.mean(y.astype(np.float64) ** 2)) * noise).astype(np.float32)]

    def run(self, data: Dataset) -> list[np.ndarray]:
        return self.outputs(data.inputs["x"])


class SyntheticDevice(OnnxRuntimeBackend):
    """Latency = base + sum of per-layer table entries + boundary_ms per mixed edge (not profiled);
    numerics from ``DAMAGE_DB`` (``SyntheticRunner``)."""

    def __init__(self, table: dict[str, float], boundary_ms: float, base_ms: float = 0.2, fail_on_mixed: bool = False,
                 mixed_ms: float = 0.0):
        self.table, self.boundary_ms, self.base_ms, self.fail_on_mixed = table, boundary_ms, base_ms, fail_on_mixed
        self.mixed_ms = mixed_ms

    def qdq_style(self, target):
        return QDQStyle(activation_dtype="uint8", weight_dtype="int8", gemm_weight_dtype="int8")

    def choices(self, plan) -> dict[str, str]:
        return {lid: plan.choice(lid).candidate for lid in LAYERS}

    def lower(self, graph, plan, target, out_dir):
        art = super().lower(graph, plan, target, out_dir)
        art.info["choices"] = self.choices(plan)
        return art

    def graph_runner(self, graph, target):
        return SyntheticRunner(self.choices(graph.meta["plan"]) if "plan" in graph.meta else {})

    def load(self, artifact, target):
        runner = SyntheticRunner(artifact.info["choices"])
        return lambda feeds: runner.outputs(feeds["x"])

    def profile(self, artifact, target, feeds, *, repeats=50, warmup=10, per_layer=True):
        ch = artifact.info["choices"]
        if self.fail_on_mixed and len(set(ch.values())) > 1:
            raise KeyboardInterrupt  # the user presses Ctrl-C once the search builds its first mixed plan
        layers = {lid: self.table[ch[lid]] for lid in LAYERS}
        b = sum(ch[i] != ch[j] for i, j in EDGES)
        e2e = self.base_ms + sum(layers.values()) + self.boundary_ms * b + (self.mixed_ms if b else 0.0)
        return Profile(timing=Timing(e2e, 0.0, e2e, e2e, repeats, warmup, 1), layers_ms=layers if per_layer else {})


def search(device, tmp_path, monkeypatch, so: SearchOptions | None = None, **opts):
    monkeypatch.setenv("HWCOMPILE_CACHE_DIR", str(tmp_path / "cache"))
    graph = from_proto(fragile_model())
    calib = Dataset({"x": np.random.default_rng(1).standard_normal((64, 3, 8, 8)).astype(np.float32)}, source="r")
    options = CompileOptions(precision="mixed", repeats=1, warmup=0, **opts)
    base = dataclasses.replace(PrecisionPlan.uniform("fp32"), target=TARGET.name)
    return plan_mixed(graph, base, TARGET, device, calib, None, options, None, None, tmp_path, lambda s: None,
                      so or SearchOptions(use_cache=False, boundary_probe=False))


def test_feedback_learns_the_boundary_cost(tmp_path, monkeypatch):
    # Per layer: fp32 1.0, fp16 0.8, int8 0.3 ms; a precision change between layers costs 0.6 ms.
    # Default constraint (no labels): SNR >= 30 dB, so conv_a (24 dB) and conv_b (3 dB) cannot be INT8.
    # Blind to boundaries, fp16-fp16-int8 looks best (2.1 ms) but measures 2.7; all-fp16 is 2.6.
    dev = SyntheticDevice({"fp32": 1.0, "fp16": 0.8, "int8": 0.3}, boundary_ms=0.6)
    plan, info = search(dev, tmp_path, monkeypatch)
    fb = info["feedback"]
    assert fb[0]["plan_summary"] == {"fp16": 2, "int8": 1}
    assert fb[0]["predicted_latency_ms"] == pytest.approx(2.1) and fb[0]["measured_latency_ms"] == pytest.approx(2.7)
    # one mixed measurement (1 boundary, 0.6 ms over the tables): split between t and m at minimum norm
    corr = info["search"]["corrections"]
    assert corr["boundary_ms"] == pytest.approx(0.3, abs=1e-6) and corr["mixed_ms"] == pytest.approx(0.3, abs=1e-6)
    assert fb[1]["repeated"] and fb[1]["plan_summary"] == {"fp16": 3}
    assert fb[1]["predicted_latency_ms"] == pytest.approx(fb[1]["measured_latency_ms"])
    assert {lid: c.candidate for lid, c in plan.layers.items()} == {l: "fp16" for l in LAYERS}
    assert all(c.reason.startswith("fp16: saves 0.2000 ms") for c in plan.layers.values())
    assert plan.notes["min_snr_db"] == 30.0 and "SNR >= 30" in plan.notes["default_accuracy"]
    # uniform references measured in the same run; INT8 breaks the floor, so it is not chosen
    uni = {u["name"]: u for u in info["uniform"]}
    assert set(uni) == {"fp32", "fp16", "int8"}
    assert uni["int8"]["latency_ms"] == pytest.approx(1.1) and uni["int8"]["metrics"]["snr_db"] < 30
    assert info["accuracy_metric"] == "snr_db"
    assert [p["latency_ms"] for p in info["pareto"]] == sorted(p["latency_ms"] for p in info["pareto"])
    assert info["sensitivity"]["rows"][0]["layer"] == "conv_b"
    saved = json.loads((tmp_path / "search" / "progress.json").read_text())
    assert saved["stage"] == "done" and saved["plan"]["layers"] == plan.to_dict()["layers"]


def test_boundary_probe_prices_boundaries_before_the_first_solve(tmp_path, monkeypatch):
    # The device of test_feedback_learns_the_boundary_cost. The probe alternates the fastest uniform
    # candidate (int8) with fp32: int8-fp32-int8, 2 boundaries, measured 0.2 + 0.3 + 1.0 + 0.3 + 2 * 0.6
    # = 3.0 ms against 1.8 predicted from the per-layer tables. One mixed measurement: its 1.2 ms are
    # split at minimum norm, t = 1.2 * 2 / 5 = 0.48 per boundary and m = 1.2 / 5 = 0.24, so the first
    # solve already sees fp16-fp16-int8 at 2.82 ms and picks all-fp16 (2.6), predicted exactly.
    dev = SyntheticDevice({"fp32": 1.0, "fp16": 0.8, "int8": 0.3}, boundary_ms=0.6)
    plan, info = search(dev, tmp_path, monkeypatch, so=SearchOptions(use_cache=False))
    probe = [p for p in info["measured"] if p["source"].startswith("boundary probe")]
    assert len(probe) == 1 and probe[0]["source"] == "boundary probe (int8/fp32 alternating)"
    assert [probe[0]["assignment"][l] for l in LAYERS] == ["int8", "fp32", "int8"]
    assert probe[0]["latency_ms"] == pytest.approx(3.0)
    assert probe[0]["predicted_latency_ms"] == pytest.approx(1.8)
    fb = info["feedback"]
    assert fb[0]["plan_summary"] == {"fp16": 3}
    assert fb[0]["corrections_used"]["boundary_ms"] == pytest.approx(0.48, abs=1e-6)
    assert fb[0]["corrections_used"]["mixed_ms"] == pytest.approx(0.24, abs=1e-6)
    assert fb[0]["predicted_latency_ms"] == pytest.approx(fb[0]["measured_latency_ms"]) == pytest.approx(2.6)
    assert {lid: c.candidate for lid, c in plan.layers.items()} == {l: "fp16" for l in LAYERS}
    # switched off, the first solve is blind to boundaries (the test above)
    _, blind = search(dev, tmp_path / "off", monkeypatch, so=SearchOptions(use_cache=False, boundary_probe=False))
    assert blind["feedback"][0]["plan_summary"] == {"fp16": 2, "int8": 1}
    assert not any(p["source"].startswith("boundary probe") for p in blind["measured"])


def test_feedback_learns_a_fixed_cost_of_mixed_plans(tmp_path, monkeypatch):
    # The device charges 0.2 ms per boundary and 0.3 ms once for any mixed plan. The probe
    # (int8-fp32-int8, 2 boundaries) measures 0.7 ms over the per-layer tables: with one mixed
    # measurement it is split at minimum norm (t = 0.7 * 2 / 5 = 0.28, m = 0.14). The first solve
    # (conv_a, conv_b cannot be INT8) picks fp16-fp16-int8, predicted 2.52, measured 2.6 (1 boundary):
    # two mixed plans with different boundary counts give t = 0.2 and m = 0.3 exactly.
    dev = SyntheticDevice({"fp32": 1.0, "fp16": 0.9, "int8": 0.1}, boundary_ms=0.2, mixed_ms=0.3)
    plan, info = search(dev, tmp_path, monkeypatch, so=SearchOptions(use_cache=False))
    fb = info["feedback"]
    assert fb[0]["corrections_used"]["boundary_ms"] == pytest.approx(0.28, abs=1e-6)
    assert fb[0]["corrections_used"]["mixed_ms"] == pytest.approx(0.14, abs=1e-6)
    assert fb[0]["plan_summary"] == {"fp16": 2, "int8": 1}
    assert fb[0]["predicted_latency_ms"] == pytest.approx(2.52) and fb[0]["measured_latency_ms"] == pytest.approx(2.6)
    corr = info["search"]["corrections"]
    assert corr["boundary_ms"] == pytest.approx(0.2, abs=1e-6) and corr["mixed_ms"] == pytest.approx(0.3, abs=1e-6)
    for p in info["measured"]:   # every measured plan is now predicted exactly
        b = sum(p["assignment"][i] != p["assignment"][j] for i, j in EDGES)
        assert p["latency_ms"] == pytest.approx(0.2 + sum(dev.table[c] for c in p["assignment"].values())
                                                + 0.2 * b + (0.3 if b else 0.0))
    assert {lid: c.candidate for lid, c in plan.layers.items()} == {"conv_a": "fp16", "conv_b": "fp16",
                                                                     "conv_c": "int8"}


class SparseDevice(SyntheticDevice):
    """The synthetic device whose table is keyed by candidate name including sparsity ('fp32+2:4')."""

    def choices(self, plan) -> dict[str, str]:
        return {lid: choice_name(plan.choice(lid)) for lid in LAYERS}


def test_sparsity_candidates_join_the_search(tmp_path, monkeypatch):
    # 2:4 halves a layer's time on this device. conv_a reads 3 channels (no 2:4 group), so only
    # conv_b and conv_c are offered 'fp32+2:4'. A 2.8 ms budget (all-fp32: 3.2) needs exactly one
    # sparse layer: the planner takes the one whose measured damage is smaller, and the search
    # measures it; the plan says why.
    dev = SparseDevice({"fp32": 1.0, "fp32+2:4": 0.5}, boundary_ms=0.0)
    plan, info = search(dev, tmp_path, monkeypatch, so=SearchOptions(use_cache=False, boundary_probe=False,
                                                                     candidates=("fp32", "fp32+2:4")),
                        latency_budget_ms=2.8)
    rows = {(r["layer"], r["candidate"]): r for r in info["sensitivity"]["rows"]}
    assert ("conv_a", "fp32+2:4") not in rows
    assert {("conv_b", "fp32+2:4"), ("conv_c", "fp32+2:4")} <= set(rows)
    sparse = {lid for lid, c in plan.layers.items() if c.sparsity == "2:4"}
    cheaper = min(("conv_b", "conv_c"), key=lambda l: rows[(l, "fp32+2:4")]["damage"])
    assert sparse == {cheaper}
    assert plan.layers[cheaper].reason
    assert info["search"]["chosen"]["latency_ms"] == pytest.approx(2.7)


class DriftingDevice(SyntheticDevice):
    """The synthetic device on a shared machine: every timing is multiplied by a load factor that
    changes every ``period`` profiler calls (another process starting and stopping)."""

    def __init__(self, *a, loads=(1.0, 2.5, 1.3, 1.8), period=10, **kw):
        super().__init__(*a, **kw)
        self.loads, self.period, self.calls = loads, period, 0

    def profile(self, artifact, target, feeds, **kw):
        prof = super().profile(artifact, target, feeds, **kw)
        f = self.loads[(self.calls // self.period) % len(self.loads)]
        self.calls += 1
        t = prof.timing
        prof.timing = Timing(t.latency_ms * f, 0.0, t.p10_ms * f, t.p90_ms * f, t.repeats, t.warmup, t.threads)
        return prof


def test_load_changes_cancel_against_the_fp32_reference(tmp_path, monkeypatch):
    # Same device as test_feedback_learns_the_boundary_cost, but the machine's load swings by up to
    # 2.5x while the search runs. Each plan alternates with FP32 in 5 rounds; a load change falls in
    # at most one of them, so the median ratio is exact and the search reaches the same plan and the
    # same boundary cost (in FP32 units) as on a quiet machine.
    dev = DriftingDevice({"fp32": 1.0, "fp16": 0.8, "int8": 0.3}, boundary_ms=0.6)
    plan, info = search(dev, tmp_path, monkeypatch, so=SearchOptions(use_cache=False, rounds=5, boundary_probe=False))
    ref = info["search"]["fp32_reference_ms"]
    fb = info["feedback"]
    assert fb[0]["plan_summary"] == {"fp16": 2, "int8": 1}
    assert fb[0]["ratio_to_fp32"] == pytest.approx(2.7 / 3.2)
    assert fb[0]["measured_latency_ms"] == pytest.approx(2.7 / 3.2 * ref)
    uni = {u["name"]: u for u in info["uniform"]}
    assert uni["int8"]["ratio_to_fp32"] == pytest.approx(1.1 / 3.2)
    assert uni["fp32"]["latency_ms"] == pytest.approx(ref)
    # the raw medians did see the load: without the reference they would disagree with the table
    raw = [p["latency_ms_raw"] / p["ratio_to_fp32"] for p in info["measured"]]
    assert max(raw) / min(raw) > 1.2
    corr = info["search"]["corrections"]   # one 1-boundary plan measured: its residual split at minimum norm
    assert corr["boundary_ms"] + corr["mixed_ms"] == pytest.approx(0.6 / 3.2 * ref, rel=1e-6)
    assert {c.candidate for c in plan.layers.values()} == {"fp16"}
    # after feedback, predictions made before measuring a plan match the measurement
    check = info["search"]["prediction_check"]
    assert check["before_feedback"] and abs(check["before_feedback"][0]["error_pct"]) > 10
    assert all(abs(r["error_pct"]) < 1e-6 for r in check["after_feedback"])


def test_candidates_within_noise_of_fp32_are_not_offered(tmp_path, monkeypatch):
    # fp16 saves 2 % per layer (below min_layer_saving = 5 %): minimizing latency would otherwise put
    # conv_a and conv_b (too noisy for INT8 under the 30 dB floor) in fp16 for that noise-level gain.
    dev = SyntheticDevice({"fp32": 1.0, "fp16": 0.98, "int8": 0.3}, boundary_ms=0.0)
    plan, info = search(dev, tmp_path, monkeypatch)
    assert {lid: c.candidate for lid, c in plan.layers.items()} == {"conv_a": "fp32", "conv_b": "fp32",
                                                                    "conv_c": "int8"}
    assert all(f["plan_summary"].get("fp16", 0) == 0 for f in info["feedback"])
    # with the margin off, the same search takes the 2 %
    plan2, _ = search(dev, tmp_path / "b", monkeypatch, so=SearchOptions(use_cache=False, min_layer_saving=0.0,
                                                                       min_plan_gain=0.0, boundary_probe=False))
    assert plan2.layers["conv_a"].candidate == "fp16" and plan2.layers["conv_b"].candidate == "fp16"


class NoisyLayerProfileDevice(SyntheticDevice):
    """End to end, fp16 is exactly as fast as fp32; its per-layer profile shows conv_a 15 % faster (the
    kind of reading noise gives one layer in a profile) and conv_b 15 % slower."""

    def profile(self, artifact, target, feeds, *, repeats=50, warmup=10, per_layer=True):
        prof = super().profile(artifact, target, feeds, repeats=repeats, warmup=warmup, per_layer=per_layer)
        if per_layer and set(artifact.info["choices"].values()) == {"fp16"}:
            prof.layers_ms = {**prof.layers_ms, "conv_a": 0.85, "conv_b": 1.15}
        return prof


def test_candidate_whose_uniform_build_is_not_faster_is_not_offered(tmp_path, monkeypatch):
    dev = NoisyLayerProfileDevice({"fp32": 1.0, "fp16": 1.0, "int8": 0.3}, boundary_ms=0.0)
    plan, info = search(dev, tmp_path, monkeypatch)
    assert "fp16" in info["search"]["not_offered"] and "1.000x" in info["search"]["not_offered"]["fp16"]
    assert all(f["plan_summary"].get("fp16", 0) == 0 for f in info["feedback"])
    assert {c.candidate for c in plan.layers.values()} <= {"fp32", "int8"}
    # the per-layer reading alone puts conv_a (too noisy for INT8) in fp16 in the solver's plans (the
    # final choice may still be a measured plan of equal latency and better SNR)
    plan2, info2 = search(dev, tmp_path / "b", monkeypatch, so=SearchOptions(use_cache=False, min_plan_gain=0.0,
                                                                             boundary_probe=False))
    assert info2["search"]["not_offered"] == {} and info2["feedback"][0]["assignment"]["conv_a"] == "fp16"


def test_never_slower_than_fp32(tmp_path, monkeypatch):
    # Every change of precision costs 3 ms, so the only SNR-valid INT8 (conv_c) loses; fp16 is slower.
    dev = SyntheticDevice({"fp32": 1.0, "fp16": 1.1, "int8": 0.2}, boundary_ms=3.0)
    plan, info = search(dev, tmp_path, monkeypatch)
    fp32 = next(u for u in info["uniform"] if u["name"] == "fp32")
    assert info["feedback"][0]["measured_latency_ms"] > fp32["latency_ms"]
    assert all(c.candidate == "fp32" for c in plan.layers.values())
    assert info["search"]["chosen"]["latency_ms"] <= fp32["latency_ms"]
    # fp16 is slower everywhere; INT8 is faster per layer but too noisy (conv_a, conv_b) or, with the
    # boundary cost the feedback measured, slower overall (conv_c)
    assert all(c.reason.startswith("fp32: int8 would save 0.8000 ms") for c in plan.layers.values())
    corr = info["search"]["corrections"]   # one 1-boundary plan measured: 3 ms split at minimum norm
    assert corr["boundary_ms"] == pytest.approx(1.5, abs=1e-6) and corr["mixed_ms"] == pytest.approx(1.5, abs=1e-6)


def test_a_plan_within_noise_of_fp32_is_not_chosen(tmp_path, monkeypatch):
    # INT8 on conv_c saves 0.5 % end to end (0.02 ms of 3.2): within noise, so FP32 is emitted with the
    # reason; with a 0.1 % margin the same search emits the INT8 plan.
    dev = SyntheticDevice({"fp32": 1.0, "fp16": 1.1, "int8": 0.98}, boundary_ms=0.0)
    so = SearchOptions(use_cache=False, min_layer_saving=0.0, boundary_probe=False)
    plan, info = search(dev, tmp_path, monkeypatch, so=so)
    assert all(c.candidate == "fp32" for c in plan.layers.values())
    assert info["search"]["chosen"]["source"] == "uniform:fp32"
    assert "by less than 2 %" in info["search"]["fallback"]
    so_loose = SearchOptions(use_cache=False, min_layer_saving=0.0, min_plan_gain=0.001, boundary_probe=False)
    plan2, _ = search(dev, tmp_path / "b", monkeypatch, so=so_loose)
    assert plan2.layers["conv_c"].candidate == "int8"


def test_latency_budget_minimizes_damage(tmp_path, monkeypatch):
    # No boundary cost: the per-layer tables are exact, so the first plan must be the brute-force
    # optimum over all 27 assignments: least summed damage with 0.2 + sum(latency) <= 2.9 ms.
    table = {"fp32": 1.0, "fp16": 0.8, "int8": 0.3}
    dev = SyntheticDevice(table, boundary_ms=0.0)
    plan, info = search(dev, tmp_path, monkeypatch, latency_budget_ms=2.9)
    damage = {(r["layer"], r["candidate"]): r["damage"] for r in info["sensitivity"]["rows"]}
    best = min((a for a in itertools.product(table, repeat=3) if 0.2 + sum(table[c] for c in a) <= 2.9 + 1e-9),
               key=lambda a: sum(damage.get((l, c), 0.0) for l, c in zip(LAYERS, a)))
    fb = info["feedback"][0]
    assert fb["plan_summary"] == {c: best.count(c) for c in sorted(set(best))}
    assert fb["predicted_latency_ms"] == pytest.approx(fb["measured_latency_ms"])   # nothing to correct
    assert "stop" not in info["search"]["converged"] and "within 5%" in info["search"]["converged"]
    assert info["search"]["objective"] == "minimize output noise" and info["search"]["budget_met"]
    assert info["search"]["chosen"]["latency_ms"] <= 2.9
    assert plan.layers["conv_b"].candidate != "int8"


def test_infeasible_budget_is_a_config_error(tmp_path, monkeypatch):
    dev = SyntheticDevice({"fp32": 1.0, "fp16": 0.8, "int8": 0.3}, boundary_ms=0.0)
    with pytest.raises(ConfigError) as e:
        search(dev, tmp_path, monkeypatch, latency_budget_ms=0.5)   # all-int8 is 1.1 ms
    assert e.value.where == "--latency-budget" and "1.1" in e.value.message


def test_interrupted_search_leaves_a_result(tmp_path, monkeypatch):
    dev = SyntheticDevice({"fp32": 1.0, "fp16": 0.8, "int8": 0.3}, boundary_ms=0.6, fail_on_mixed=True)
    with pytest.raises(KeyboardInterrupt):
        search(dev, tmp_path, monkeypatch)
    saved = json.loads((tmp_path / "search" / "progress.json").read_text())
    assert saved["stage"] != "done"
    assert PrecisionPlan.from_dict(saved["plan"]).layers          # a loadable plan, best so far
    assert len(saved["uniform"]) == 3 and saved["pareto"]


def test_mixed_compile_end_to_end(tmp_path, monkeypatch):
    """A real compile with labels: report sections, reasons in plan.json, logic of the choice."""
    monkeypatch.setenv("HWCOMPILE_CACHE_DIR", str(tmp_path / "cache"))
    import onnx
    import onnxruntime as ort

    model = mlp_model()
    path = tmp_path / "mlp.onnx"
    onnx.save(model, path)
    x = np.random.default_rng(3).standard_normal((96, 64)).astype(np.float32)
    labels = ort.InferenceSession(str(path)).run(None, {"x": x})[0].argmax(1)
    calib = Dataset({"x": x[:48]}, source="calib")
    evald = Dataset({"x": x[48:]}, labels=labels[48:], source="eval")
    res = compile_model(path, "host-cpu", tmp_path / "out", CompileOptions(
        precision="mixed", calib=calib, eval=evald, repeats=5, warmup=1))
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    assert rep["accuracy_metric"] == "top1"
    assert {u["name"] for u in rep["uniform"]} == {"fp32", "fp16", "int8", "int8dyn", "int4w"}
    assert rep["pareto"] and all({"latency_ms", "size_bytes", "metrics", "plan_summary"} <= set(p) for p in rep["pareto"])
    assert rep["feedback"] and [f["iteration"] for f in rep["feedback"]] == list(range(1, len(rep["feedback"]) + 1))
    assert all({"predicted_latency_ms", "measured_latency_ms", "metrics"} <= set(f) for f in rep["feedback"])
    plan = json.loads((tmp_path / "out" / "plan.json").read_text())
    assert set(plan["layers"]) == {"fc1", "fc2"}
    for lid, c in plan["layers"].items():
        cand = res.plan.layers[lid].candidate
        assert c["reason"].startswith(f"{cand}:"), c["reason"]
    # never slower than the FP32 build measured in the same search, and within the default top1 drop
    fp32 = next(u for u in rep["uniform"] if u["name"] == "fp32")
    chosen = rep["search"]["chosen"]
    assert chosen["latency_ms"] <= fp32["latency_ms"]
    assert 100 * (fp32["metrics"]["top1"] - chosen["metrics"]["top1"]) <= 1.0
    assert rep["compiled"]["metrics"]["top1"] == pytest.approx(chosen["metrics"]["top1"])


def test_latency_table_math_and_cache(tmp_path, monkeypatch):
    from hwcompile.search.candidates import Candidate
    from hwcompile.search.latency import cache_path, measure_latency, record_from_profile

    graph = from_proto(fragile_model())
    # Kernel times summing to more than end to end (profiler overhead) are scaled down to fit.
    prof = Profile(timing=Timing(2.0, 0.0, 2.0, 2.0, 1, 0, 1),
                   layers_ms={"conv_a": 1.0, "conv_b": 1.0, "conv_c": 0.5, "relu_a": 0.5}, unmapped_ms={"k": 1.0})
    rec = record_from_profile(graph, prof)
    assert rec["layers_ms"] == pytest.approx({"conv_a": 0.5, "conv_b": 0.5, "conv_c": 0.25})
    assert rec["remainder_ms"] == pytest.approx(0.75)            # relu and the unmapped kernel, scaled
    # One build per candidate, then the cache: same figures, no per-layer profiling needed.
    monkeypatch.setenv("HWCOMPILE_CACHE_DIR", str(tmp_path / "cache"))
    dev = SyntheticDevice({"fp32": 1.0, "fp16": 0.8, "int8": 0.3}, boundary_ms=0.0)
    calib = Dataset({"x": np.random.default_rng(1).standard_normal((8, 3, 8, 8)).astype(np.float32)}, source="r")
    feeds = {"x": calib.inputs["x"][:1]}
    cands = [Candidate("fp32"), Candidate("int8")]
    first = measure_latency(graph, TARGET, dev, cands, feeds, tmp_path, calib=calib)
    path = cache_path(TARGET, dev, graph)
    assert path.parent == tmp_path / "cache" / "latency" and path.is_file() and first.cached == []
    second = measure_latency(graph, TARGET, dev, cands, feeds, tmp_path, calib=calib)
    assert second.cached == ["fp32", "int8"] and second.layers == first.layers
    # cost model: uniform plans are predicted exactly (layer time + its share of the remainder)
    costs = second.costs(LAYERS, ["fp32", "int8"])
    assert costs.sum(axis=0) == pytest.approx([3.2, 1.1])
    path.write_text("{not json")                                  # a corrupt cache is re-measured
    assert measure_latency(graph, TARGET, dev, cands, feeds, tmp_path, calib=calib).cached == []


def test_boundary_weight_is_the_converted_tensor_size():
    # conv_b with stride 2: the conv_a -> conv_b edge carries 4x the elements of conv_b -> conv_c
    import onnx

    from hwcompile.search.driver import layer_edges

    model = fragile_model()
    conv_b = next(n for n in model.graph.node if n.name == "conv_b")
    conv_b.attribute.append(onnx.helper.make_attribute("strides", [2, 2]))
    model.graph.output[0].type.tensor_type.shape.dim[2].dim_value = 4
    model.graph.output[0].type.tensor_type.shape.dim[3].dim_value = 4
    edges, weight = layer_edges(from_proto(model))
    assert edges == [(0, 1), (1, 2)]
    assert weight == pytest.approx([1.6, 0.4])          # 512 and 128 elements, relative to their mean
