"""The mixed-precision planner: one candidate per layer, chosen by a MILP (scipy.optimize.milp).

Variables: ``x_ic`` in {0, 1} (layer i takes candidate c; only allowed pairs exist) and, when
boundaries cost time, ``y_e`` in [0, 1] for each layer-to-layer edge e = (i, j), forced to 1 when
i and j take different candidates by ``y_e >= x_ic - x_jc`` for every c.

    sum_c x_ic = 1                                                        (every layer one choice)
    latency(x) = sum_ic L_ic x_ic + t sum_e w_e y_e + m z + L0            [ms]
    size(x)    = sum_ic S_ic x_ic + S0                                    [bytes]
    noise(x)   = k sum_ic D_ic x_ic,   D_ic = 10^(-snr_ic/10)              predicted SNR = -10 log10 noise

``z`` in [0, 1] is forced to 1 by ``z >= y_e`` when the plan has any boundary at all: ``m``
(``Problem.mixed_ms``) is what a mixed plan costs beyond its boundaries
(``benchmarks/SEARCH_NOTES.md``).
``D_ic`` is layer i's noise-to-signal ratio alone with candidate c; independent noise powers add,
so the sum predicts the plan's output noise; ``k`` (default 1) is a correction fitted from
measured builds, ``t`` and ``L0`` likewise for latency. ``w_e`` (``Problem.edge_weight``, default 1)
scales the boundary cost per edge: the driver passes the size of the tensor crossing the edge
relative to the mean, since a conversion (Q, DQ, Cast) costs time in proportion to the elements it
converts; ``t`` is then the cost of a boundary on an average-sized tensor. Objectives:
``minimize="damage"``: min noise s.t. latency <= budget and/or size <= budget;
``minimize="latency"``: min latency s.t. noise <= 10^(-min_snr/10) and the optional budgets.
Ties are broken lexicographically (a second solve: among optimal plans, the fastest or the least
damaging). An infeasible problem raises ConfigError naming the budget and the best it can reach.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

from ..errors import ConfigError

__all__ = ["Problem", "Solution", "solve", "predict", "pareto_front", "snr_from_noise"]


@dataclass
class Problem:
    """Per-layer tables ``[layers, candidates]``; NaN damage marks a pair that is not allowed."""

    layers: list[str]
    candidates: list[str]
    damage: np.ndarray
    latency: np.ndarray
    size: np.ndarray
    edges: list[tuple[int, int]] = field(default_factory=list)
    edge_weight: np.ndarray | None = None      # per edge, default 1 (module docstring)
    boundary_ms: float = 0.0
    latency_offset_ms: float = 0.0
    mixed_ms: float = 0.0                       # m: cost of any mixed plan beyond its boundaries
    size_offset_bytes: float = 0.0
    damage_scale: float = 1.0

    def __post_init__(self) -> None:
        shape = (len(self.layers), len(self.candidates))
        for name in ("damage", "latency", "size"):
            arr = np.asarray(getattr(self, name), dtype=np.float64)
            if arr.shape != shape:
                raise ConfigError(f"table shape {arr.shape}, expected {shape}", where=f"Problem.{name}")
            setattr(self, name, arr)
        self.edge_weight = (np.ones(len(self.edges)) if self.edge_weight is None
                            else np.asarray(self.edge_weight, dtype=np.float64).reshape(-1))
        if self.edge_weight.shape != (len(self.edges),):
            raise ConfigError(f"{self.edge_weight.size} edge weights for {len(self.edges)} edges",
                              where="Problem.edge_weight")
        self.allowed = ~(np.isnan(self.damage) | np.isnan(self.latency) | np.isnan(self.size))
        empty = [self.layers[i] for i in range(shape[0]) if not self.allowed[i].any()]
        if empty:
            raise ConfigError("layer has no allowed candidate", where=f"layer '{empty[0]}'")


@dataclass
class Solution:
    assignment: dict[str, str]
    predicted_latency_ms: float
    predicted_size_bytes: float
    predicted_noise: float
    predicted_snr_db: float
    boundaries: int
    objective: str = ""
    boundary_weight: float = 0.0      # sum of edge weights over the boundaries

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def snr_from_noise(noise: float) -> float:
    return 200.0 if noise <= 1e-20 else float(min(200.0, -10.0 * np.log10(noise)))


def predict(problem: Problem, assignment: dict[str, str], objective: str = "") -> Solution:
    """Predicted latency, size and noise of an assignment (layer id -> candidate name)."""
    idx = [problem.candidates.index(assignment[l]) for l in problem.layers]
    rows = np.arange(len(idx))
    mixed = [e for e, (i, j) in enumerate(problem.edges) if idx[i] != idx[j]]
    bw = float(np.sum(problem.edge_weight[mixed])) if mixed else 0.0
    noise = problem.damage_scale * float(np.sum(problem.damage[rows, idx]))
    return Solution(assignment=dict(assignment),
                    predicted_latency_ms=float(np.sum(problem.latency[rows, idx]) + problem.boundary_ms * bw
                                               + (problem.mixed_ms if mixed else 0.0) + problem.latency_offset_ms),
                    predicted_size_bytes=float(np.sum(problem.size[rows, idx]) + problem.size_offset_bytes),
                    predicted_noise=noise, predicted_snr_db=snr_from_noise(noise), boundaries=len(mixed), objective=objective,
                    boundary_weight=bw)


def solve(problem: Problem, *, minimize: str = "damage", latency_budget_ms: float | None = None,
          size_budget_bytes: float | None = None, min_snr_db: float | None = None) -> Solution:
    """Optimal assignment for the objective and constraints in the module docstring."""
    if minimize not in ("damage", "latency"):
        raise ConfigError(f"unknown objective {minimize!r}", where="minimize", hint="damage or latency")
    lp = _Lp(problem)
    cons = []
    if latency_budget_ms is not None:
        cons.append(lp.row(lp.lat, latency_budget_ms - problem.latency_offset_ms, problem.boundary_ms, problem.mixed_ms))
    if size_budget_bytes is not None:
        cons.append(lp.row(lp.size, size_budget_bytes - problem.size_offset_bytes))
    if min_snr_db is not None:
        cons.append(lp.row(problem.damage_scale * lp.dmg, 10.0 ** (-min_snr_db / 10.0)))
    first, second = (lp.dmg, lp.lat) if minimize == "damage" else (lp.lat, lp.dmg)
    lat_terms = (problem.boundary_ms, problem.mixed_ms)
    t1, t2 = ((0.0, 0.0), lat_terms) if minimize == "damage" else (lat_terms, (0.0, 0.0))
    x = lp.run(first, *t1, cons)
    if x is None:
        _explain_infeasible(problem, latency_budget_ms, size_budget_bytes, min_snr_db)
    best = float(lp.value(first, *t1, x))
    tie = lp.row(first, best * (1 + 1e-6) + 1e-15, *t1)
    x2 = lp.run(second, *t2, cons + [tie])
    return predict(problem, lp.assignment(x2 if x2 is not None else x), objective=minimize)


class _Lp:
    """Flattens the allowed (layer, candidate) pairs into MILP columns, plus one column per edge."""

    def __init__(self, p: Problem):
        self.p = p
        self.pairs = [(i, c) for i in range(len(p.layers)) for c in range(len(p.candidates)) if p.allowed[i, c]]
        self.col = {pc: k for k, pc in enumerate(self.pairs)}
        self.n_x = len(self.pairs)
        self.edges = p.edges if (p.boundary_ms != 0 or p.mixed_ms != 0) else []
        self.w = p.edge_weight if self.edges else np.zeros(0)
        self.z = 1 if self.edges and p.mixed_ms != 0 else 0     # one column: "the plan is mixed"
        self.n = self.n_x + len(self.edges) + self.z
        pick = lambda a: np.array([a[i, c] for i, c in self.pairs])
        self.dmg, self.lat, self.size = pick(p.damage), pick(p.latency), pick(p.size)
        a_eq = np.zeros((len(p.layers), self.n))
        for k, (i, _) in enumerate(self.pairs):
            a_eq[i, k] = 1.0
        self.base = [LinearConstraint(a_eq, 1.0, 1.0)]
        rows = []
        for e, (i, j) in enumerate(self.edges):
            for c in range(len(p.candidates)):
                if (i, c) in self.col or (j, c) in self.col:
                    r = np.zeros(self.n)
                    r[self.n_x + e] = 1.0
                    if (i, c) in self.col:
                        r[self.col[i, c]] -= 1.0
                    if (j, c) in self.col:
                        r[self.col[j, c]] += 1.0
                    rows.append(r)
        if self.z:
            for e in range(len(self.edges)):   # z >= y_e
                r = np.zeros(self.n)
                r[self.n - 1], r[self.n_x + e] = 1.0, -1.0
                rows.append(r)
        if rows:
            self.base.append(LinearConstraint(np.array(rows), 0.0, np.inf))

    def full(self, coef: np.ndarray, per_edge: float = 0.0, per_mixed: float = 0.0) -> np.ndarray:
        return np.concatenate([coef, per_edge * self.w, [per_mixed] * self.z])

    def row(self, coef: np.ndarray, ub: float, per_edge: float = 0.0, per_mixed: float = 0.0) -> LinearConstraint:
        """sum coef x + per_edge sum w y + per_mixed z <= ub, scaled so the bound is 1 (tolerances become
        relative to it)."""
        full = self.full(coef, per_edge, per_mixed)
        s = max(abs(ub), _big(full) * 1e-9, 1e-30)
        return LinearConstraint(full[None, :] / s, -np.inf, ub / s)

    def value(self, coef: np.ndarray, per_edge: float, per_mixed: float, x: np.ndarray) -> float:
        return float(self.full(coef, per_edge, per_mixed) @ x)

    def run(self, coef: np.ndarray, per_edge: float, per_mixed: float, cons: list) -> np.ndarray | None:
        c = self.full(coef, per_edge, per_mixed)
        # The smallest nonzero cost becomes 1, so damages 8 orders apart (fp16 vs a broken INT8
        # layer) still differ by more than the solver's absolute tolerances.
        pos = np.abs(c[c != 0])
        s = max(float(pos.min()) if pos.size else 1.0, _big(c) * 1e-9, 1e-30)
        integrality = np.concatenate([np.ones(self.n_x), np.zeros(len(self.edges) + self.z)])
        res = milp(c / s, constraints=self.base + cons, integrality=integrality, bounds=Bounds(0.0, 1.0),
                   options={"mip_rel_gap": 0.0, "presolve": True})
        if res.x is None or res.status not in (0,):
            return None
        return np.concatenate([np.round(res.x[: self.n_x]), res.x[self.n_x:]])

    def assignment(self, x: np.ndarray) -> dict[str, str]:
        out = {}
        for k, (i, c) in enumerate(self.pairs):
            if x[k] > 0.5:
                out[self.p.layers[i]] = self.p.candidates[c]
        return out


def _big(a: np.ndarray) -> float:
    return float(np.max(np.abs(a))) if a.size else 0.0


def _explain_infeasible(p: Problem, lat: float | None, size: float | None, snr: float | None) -> None:
    """Raise ConfigError naming the budget that cannot be met and the best reachable value."""
    parts, flags = [], []
    if lat is not None:
        fastest = solve(p, minimize="latency").predicted_latency_ms
        if fastest > lat:
            raise ConfigError(f"latency budget {lat:.4g} ms is below the fastest predicted plan ({fastest:.4g} ms)",
                              where="--latency-budget", hint=f"raise it to at least {fastest:.4g} ms")
        parts.append(f"--latency-budget {lat:.4g} ms")
        flags.append("--latency-budget")
    if size is not None:
        smallest = float(np.nansum(np.where(p.allowed, p.size, np.inf).min(axis=1))) + p.size_offset_bytes
        if smallest > size:
            raise ConfigError(f"size budget {size / 1e6:.4g} MB is below the smallest predicted plan "
                              f"({smallest / 1e6:.4g} MB)", where="--size-budget",
                              hint=f"raise it to at least {smallest / 1e6:.4g} MB")
        parts.append(f"--size-budget {size / 1e6:.4g} MB")
        flags.append("--size-budget")
    if snr is not None:
        parts.append(f"the accuracy floor (predicted SNR >= {snr:.1f} dB, from --max-accuracy-drop)")
        flags.append("--max-accuracy-drop")
    raise ConfigError(f"no plan meets {' and '.join(parts)} together", where="/".join(flags) or "budget",
                      hint="relax one of the budgets or the allowed accuracy drop")


def pareto_front(points: list[dict], x: str | Callable[[dict], float] = "latency_ms",
                 y: str | Callable[[dict], float] = "accuracy", maximize_y: bool = True) -> list[dict]:
    """Points not dominated in (lower x, better y), sorted by x; points lacking x or y are dropped."""
    fx = x if callable(x) else (lambda p: p.get(x))
    fy = y if callable(y) else (lambda p: p.get(y))
    sign = 1.0 if maximize_y else -1.0
    good = []
    for p in points:
        vx, vy = fx(p), fy(p)
        if vx is None or vy is None or not np.isfinite(vx) or not np.isfinite(vy):
            continue
        good.append((float(vx), sign * float(vy), p))
    good.sort(key=lambda t: (t[0], -t[1]))
    front, best = [], -np.inf
    for vx, vy, p in good:
        if vy > best:
            front.append(p)
            best = vy
    return front
