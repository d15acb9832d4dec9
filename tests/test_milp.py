"""The mixed-precision MILP against brute force over every assignment, infeasible budgets, Pareto fronts."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from hwcompile.errors import ConfigError
from hwcompile.search.milp import Problem, pareto_front, predict, snr_from_noise, solve

CANDS = ["fp32", "fp16", "int8"]


def random_problem(seed: int, layers: int = 4, boundary: float = 0.0, holes: bool = True) -> Problem:
    rng = np.random.default_rng(seed)
    dmg = rng.uniform(1e-5, 1e-2, (layers, len(CANDS)))
    dmg[:, 0] = 0.0                                        # fp32 is the reference: no damage
    lat = rng.uniform(0.1, 1.0, (layers, len(CANDS)))
    size = rng.uniform(1e3, 1e4, (layers, len(CANDS)))
    if holes:
        dmg[rng.integers(layers), 2] = np.nan              # one layer cannot take int8
    edges = [(i, i + 1) for i in range(layers - 1)] + [(0, layers - 1)]
    return Problem([f"l{i}" for i in range(layers)], CANDS, dmg, lat, size, edges=edges, boundary_ms=boundary,
                   latency_offset_ms=0.3, size_offset_bytes=500.0, damage_scale=1.3)


def all_assignments(p: Problem):
    for combo in itertools.product(range(len(p.candidates)), repeat=len(p.layers)):
        if all(p.allowed[i, c] for i, c in enumerate(combo)):
            yield predict(p, {l: p.candidates[c] for l, c in zip(p.layers, combo)})


def brute(p: Problem, objective: str, lat=None, size=None, snr=None):
    ok = [s for s in all_assignments(p)
          if (lat is None or s.predicted_latency_ms <= lat + 1e-9)
          and (size is None or s.predicted_size_bytes <= size + 1e-6)
          and (snr is None or s.predicted_noise <= 10 ** (-snr / 10) * (1 + 1e-9))]
    if not ok:
        return None
    return min(ok, key=lambda s: s.predicted_noise if objective == "damage" else s.predicted_latency_ms)


def test_predict_uses_noise_additivity():
    p = random_problem(0, holes=False)
    a = {"l0": "int8", "l1": "fp16", "l2": "fp32", "l3": "int8"}
    s = predict(p, a)
    noise = 1.3 * (p.damage[0, 2] + p.damage[1, 1] + p.damage[3, 2])
    assert s.predicted_noise == pytest.approx(noise)
    assert s.predicted_snr_db == pytest.approx(-10 * np.log10(noise))
    assert s.predicted_latency_ms == pytest.approx(p.latency[0, 2] + p.latency[1, 1] + p.latency[2, 0]
                                                   + p.latency[3, 2] + 0.3)
    assert s.boundaries == 3          # l0-l1, l1-l2, l2-l3 differ; l0-l3 are both int8
    assert snr_from_noise(0.0) == 200.0


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("boundary", [0.0, 0.15, 0.4])
def test_min_damage_under_latency_budget_matches_brute_force(seed, boundary):
    p = random_problem(seed, boundary=boundary)
    lats = sorted(s.predicted_latency_ms for s in all_assignments(p))
    budget = lats[len(lats) // 3]          # tight enough that the answer is not all-fp32
    best = brute(p, "damage", lat=budget)
    sol = solve(p, minimize="damage", latency_budget_ms=budget)
    assert sol.predicted_latency_ms <= budget + 1e-6
    assert sol.predicted_noise == pytest.approx(best.predicted_noise, rel=1e-6, abs=1e-12)


@pytest.mark.parametrize("seed", range(8))
def test_min_latency_under_snr_floor_and_size_budget_matches_brute_force(seed):
    p = random_problem(seed, boundary=0.05 * seed)
    floor = 25.0
    sizes = sorted(s.predicted_size_bytes for s in all_assignments(p))
    size = sizes[len(sizes) // 2]
    best = brute(p, "latency", size=size, snr=floor)
    if best is None:
        with pytest.raises(ConfigError):
            solve(p, minimize="latency", size_budget_bytes=size, min_snr_db=floor)
        return
    sol = solve(p, minimize="latency", size_budget_bytes=size, min_snr_db=floor)
    assert sol.predicted_latency_ms == pytest.approx(best.predicted_latency_ms, rel=1e-6)
    assert sol.predicted_snr_db >= floor - 1e-6 and sol.predicted_size_bytes <= size + 1e-3


@pytest.mark.parametrize("seed", range(6))
def test_weighted_boundaries_match_brute_force(seed):
    # A boundary on a big tensor costs more than one on a small tensor (edge_weight), in the
    # prediction and in the MILP alike: both objectives agree with brute force.
    p = random_problem(seed, layers=5, boundary=0.3)
    p = Problem(p.layers, p.candidates, p.damage, p.latency, p.size, edges=p.edges,
                edge_weight=np.random.default_rng(seed + 50).uniform(0.1, 4.0, len(p.edges)), boundary_ms=0.3,
                latency_offset_ms=0.3)
    a = {l: ("fp32" if i % 2 else "fp16") for i, l in enumerate(p.layers)}
    s = predict(p, a)
    mixed = [e for e, (i, j) in enumerate(p.edges) if a[p.layers[i]] != a[p.layers[j]]]
    assert s.boundaries == len(mixed) and s.boundary_weight == pytest.approx(p.edge_weight[mixed].sum())
    assert s.predicted_latency_ms == pytest.approx(sum(p.latency[i, p.candidates.index(a[l])]
                                                       for i, l in enumerate(p.layers))
                                                   + 0.3 * p.edge_weight[mixed].sum() + 0.3)
    lats = sorted(x.predicted_latency_ms for x in all_assignments(p))
    budget = lats[len(lats) // 3]
    sol = solve(p, minimize="damage", latency_budget_ms=budget)
    assert sol.predicted_noise == pytest.approx(brute(p, "damage", lat=budget).predicted_noise, rel=1e-6, abs=1e-12)
    fast = solve(p, minimize="latency", min_snr_db=22.0)
    best = brute(p, "latency", snr=22.0)
    assert fast.predicted_latency_ms == pytest.approx(best.predicted_latency_ms, rel=1e-6)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("mixed_ms", [0.2, 1.5])
def test_mixed_plan_cost_matches_brute_force(seed, mixed_ms):
    # m is paid once by any plan with a boundary, never by a uniform one: predictions and both
    # objectives agree with brute force, and a large m makes the fastest plan uniform.
    base = random_problem(seed, layers=5, boundary=0.1, holes=False)
    p = Problem(base.layers, base.candidates, base.damage, base.latency, base.size, edges=base.edges,
                boundary_ms=0.1, mixed_ms=mixed_ms, latency_offset_ms=0.3)
    uni = predict(p, {l: "int8" for l in p.layers})
    assert uni.boundaries == 0 and uni.predicted_latency_ms == pytest.approx(p.latency[:, 2].sum() + 0.3)
    a = {l: ("fp32" if i % 2 else "int8") for i, l in enumerate(p.layers)}
    s = predict(p, a)
    assert s.predicted_latency_ms == pytest.approx(sum(p.latency[i, p.candidates.index(a[l])]
                                                       for i, l in enumerate(p.layers))
                                                   + 0.1 * s.boundary_weight + mixed_ms + 0.3)
    fast = solve(p, minimize="latency")
    assert fast.predicted_latency_ms == pytest.approx(brute(p, "latency").predicted_latency_ms, rel=1e-6)
    lats = sorted(x.predicted_latency_ms for x in all_assignments(p))
    budget = lats[len(lats) // 3]
    sol = solve(p, minimize="damage", latency_budget_ms=budget)
    assert sol.predicted_noise == pytest.approx(brute(p, "damage", lat=budget).predicted_noise, rel=1e-6, abs=1e-12)


def test_mixed_cost_can_make_the_uniform_plan_fastest():
    # int8 saves 0.8 ms on a and costs 0.05 ms on b: a=int8, b=fp32 (1.2 ms) beats uniform int8
    # (1.25 ms) until a mixed plan pays m = 0.1 ms.
    lat = np.array([[1.0, 0.2], [1.0, 1.05]])
    for m, want in ((0.0, {"a": "int8", "b": "fp32"}), (0.1, {"a": "int8", "b": "int8"})):
        p = Problem(["a", "b"], ["fp32", "int8"], np.zeros((2, 2)), lat, np.ones((2, 2)), edges=[(0, 1)],
                    boundary_ms=0.0, mixed_ms=m)
        assert solve(p, minimize="latency").assignment == want


def test_edge_weights_must_match_edges():
    with pytest.raises(ConfigError):
        Problem(["a", "b"], ["fp32"], np.zeros((2, 1)), np.ones((2, 1)), np.ones((2, 1)), edges=[(0, 1)],
                edge_weight=np.ones(2))


def test_ties_are_broken_toward_the_faster_plan():
    # Two candidates with zero damage: minimizing damage alone cannot choose; the faster must win.
    p = Problem(["a", "b"], ["fp32", "fp16"], np.zeros((2, 2)), np.array([[1.0, 0.5], [1.0, 0.25]]),
                np.ones((2, 2)))
    sol = solve(p, minimize="damage", latency_budget_ms=10.0)
    assert sol.assignment == {"a": "fp16", "b": "fp16"}


def test_known_optimum_by_hand():
    # Budget 1.6 ms: int8 on both gives 1.0 ms but 2e-3 noise; the best mix is int8 only on the
    # robust layer 'b' (1.5 ms, noise 1e-4): hand-computed.
    dmg = np.array([[0.0, 1.9e-3], [0.0, 1e-4]])
    lat = np.array([[1.0, 0.5], [1.0, 0.5]])
    p = Problem(["a", "b"], ["fp32", "int8"], dmg, lat, np.ones((2, 2)))
    sol = solve(p, minimize="damage", latency_budget_ms=1.6)
    assert sol.assignment == {"a": "fp32", "b": "int8"}
    assert sol.predicted_snr_db == pytest.approx(40.0)


def test_infeasible_latency_budget_names_the_budget():
    p = random_problem(1)
    fastest = min(s.predicted_latency_ms for s in all_assignments(p))
    with pytest.raises(ConfigError) as e:
        solve(p, minimize="damage", latency_budget_ms=fastest * 0.9)
    assert e.value.where == "--latency-budget"
    assert f"{fastest:.4g}" in e.value.message


def test_infeasible_size_budget_names_the_budget():
    p = random_problem(2)
    with pytest.raises(ConfigError) as e:
        solve(p, minimize="damage", size_budget_bytes=100.0)
    assert e.value.where == "--size-budget" and "MB" in e.value.message


def test_budgets_feasible_alone_but_not_together():
    # 'a' must be fp32 for the SNR floor, which makes the latency budget unreachable.
    dmg = np.array([[0.0, 1e-2], [0.0, 1e-6]])
    lat = np.array([[1.0, 0.1], [1.0, 0.1]])
    p = Problem(["a", "b"], ["fp32", "int8"], dmg, lat, np.ones((2, 2)))
    with pytest.raises(ConfigError) as e:
        solve(p, minimize="latency", latency_budget_ms=0.5, min_snr_db=30.0)
    assert "--latency-budget" in e.value.where and "--max-accuracy-drop" in e.value.where


def test_layer_without_candidates_is_rejected():
    with pytest.raises(ConfigError, match="no allowed candidate"):
        Problem(["a"], ["fp32"], np.array([[np.nan]]), np.ones((1, 1)), np.ones((1, 1)))


def test_pareto_front():
    pts = [{"latency_ms": 1.0, "accuracy": 0.90}, {"latency_ms": 2.0, "accuracy": 0.95},
           {"latency_ms": 1.5, "accuracy": 0.89},   # dominated by the first
           {"latency_ms": 3.0, "accuracy": 0.95},   # dominated by the second (equal accuracy, slower)
           {"latency_ms": 0.5, "accuracy": None},   # no accuracy: dropped
           {"latency_ms": 4.0, "accuracy": 0.99}]
    front = pareto_front(pts)
    assert [(p["latency_ms"], p["accuracy"]) for p in front] == [(1.0, 0.90), (2.0, 0.95), (4.0, 0.99)]
    # brute-force definition: no point of the input dominates a front point
    for f in front:
        assert not any(q["accuracy"] is not None and q["latency_ms"] <= f["latency_ms"] and
                       q["accuracy"] >= f["accuracy"] and q is not f and
                       (q["latency_ms"] < f["latency_ms"] or q["accuracy"] > f["accuracy"]) for q in pts)
    low = pareto_front([{"x": 1, "y": 5}, {"x": 2, "y": 3}, {"x": 3, "y": 4}], x="x", y="y", maximize_y=False)
    assert [p["x"] for p in low] == [1, 2]
