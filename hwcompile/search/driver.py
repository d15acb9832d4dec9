"""Mixed precision: sensitivity -> measured latency -> MILP -> build, measure, correct, re-solve.

``plan_mixed`` is what ``--precision mixed`` runs (called by ``pipeline.compile_model``):

1. **Sensitivity** (``analysis.sensitivity``): each layer's output damage alone under each
   candidate, ``D_ic = 10^(-snr_ic/10)``.
2. **Uniform builds** (``search.latency``): every candidate as a uniform plan, lowered, profiled per
   layer (per-layer times cached on disk) and evaluated: the ``uniform`` reference points. They are
   measured points like any other, so uniform INT8 (and every uniform candidate) seeds the front
   and the choice: the search can never return a plan it measured slower than one of them at the
   same accuracy.
3. **Boundary probe** (``SearchOptions.boundary_probe``): the plan alternating the fastest
   uniform candidate with FP32, layer by layer, is built and measured, and the latency corrections
   of step 5 are fitted with it before the first solve. Per-layer tables come from uniform builds,
   which have no precision boundaries; what a boundary costs depends on the backend (on
   onnxruntime's CPU provider an INT8/FP32 boundary is a Q or DQ *plus* a layout change: QLinearConv
   runs NHWC, FP32 Conv runs NCHWc, so each boundary adds a Transpose and a Reorder; measured on
   EfficientNet-Lite0, the alternating plan was 1.29x the FP32 kernel time while uniform INT8 was
   0.67x). Without the probe the first mixed plans were predicted up to 38 % too fast.
4. **Solve** (``search.milp``) with the objective the options ask for:
   - ``--max-accuracy-drop`` given, or no budget at all: minimize latency under an accuracy floor
     (and any budgets). The drop is in **points of the metric** for top1/top5 (1.0 = one percentage
     point) and, for the snr metric, a relative RMS output error in percent, i.e. the floor
     ``SNR >= -20 log10(drop / 100)`` (1 % -> 40 dB). **Default without budgets: top1 (top5) drop
     <= 1 point when the evaluation data has labels, else output SNR >= 30 dB.**
   - only ``--latency-budget`` (ms) and/or ``--size-budget`` (MB = 10^6 bytes): minimize predicted
     output noise under the budgets.
   The MILP predicts SNR, not top1. A top1 drop is mapped to an SNR floor calibrated on measured
   builds, assuming top1 does not fall as SNR rises: the floor is 0.5 dB above the highest
   measured SNR of any build that broke the drop, or, while none did, the lowest measured SNR of
   the builds that kept it. Every new measurement refines the floor.
   Without ``--size-budget`` a layer is offered a candidate other than FP32 only where its
   measured time is at least ``SearchOptions.min_layer_saving`` (5 %) below the layer's FP32 time:
   a candidate that is not faster only adds damage and conversions at its boundaries, and per-layer
   profiles on a shared machine do not resolve differences finer than that (FP16 on an x86 CPU
   without FP16 arithmetic measures within noise of FP32, and chosen for noise it scattered
   conversion-bound FP16 islands through the plan). Likewise a candidate whose uniform build did
   not measure ``min_plan_gain`` faster than FP32 end to end is not offered at all (``search.
   not_offered`` says why): the layers where its profile shows a saving are the ones where noise
   favoured it, so the MILP picked exactly the optimistic figures. Seen on EfficientNet-Lite0
   (uniform FP16 0.99-1.0x FP32): 3-6 FP16 layers in every mixed plan, each with casts the
   INT8/FP32 boundary model does not price, and every plan measured 4.4-11.2 % slower than predicted
   (two runs; -6.6..+2.4 % and -5.3..+0.4 % without them).
   With a size budget every candidate stays.
5. **Feedback**: the chosen plan is built and measured end to end (latency, size, metrics). The
   latency model is corrected for what per-layer figures miss: ``measured - predicted = L0 + t*b
   + m*[mixed]`` with ``b`` the summed weight of the layer-to-layer edges whose endpoints take
   different candidates (conversions at precision boundaries; an edge weighs the size of the tensor
   crossing it relative to the mean edge), ``[mixed]`` 1 for a plan with any boundary, and
   ``t, m >= 0`` fitted by non-negative least squares over the measured mixed plans (with one, the
   minimum-norm split ``t = r b / (b^2 + 1)``, ``m = r / (b^2 + 1)``: a probe with many boundaries
   prices them, while a "uniform" plan that is mixed only because a candidate does not apply
   everywhere, e.g. int8dyn on a CNN's classifier alone, b ~ 0.01, goes to ``m``: fitted as ``t``
   alone its noise once priced a boundary at 50 ms; ``L0`` is the mean residual of the uniform
   plans, ~0 by construction). The
   ``m`` term was added after EfficientNet's mixed plans measured 8-21 % over predictions made
   with ``t`` alone (``benchmarks/results/boundary_costs.json``);
   predicted noise is scaled by ``k`` = geometric mean of measured/predicted noise; the size
   offset is the mean measured artifact size minus predicted weight bytes. Re-solve; stop when
   the plan repeats, or the predicted latency is within 5 % of the measured one and the plan meets
   the accuracy constraint, or after ``max_iterations`` (4).
6. **Sweep**: a few latency budgets between the fastest prediction and FP32 give more measured
   points; the Pareto front (latency vs the accuracy metric) is drawn from all measured points.
7. **Choose** the best measured plan meeting every constraint and faster than the FP32 build by at
   least ``SearchOptions.min_plan_gain`` (2 %; a plan within measurement noise of FP32 is not worth
   its risk: seen on MiniLM, where uniform FP16 measured 0.3 % faster in the search and 7.6 % slower
   in a longer interleaved run), FP32 with the reason if none is; every layer's
   ``LayerChoice.reason`` says why.

**End-to-end latency is measured against the FP32 build**, because the machine may be shared: the
plan and the FP32 reference are profiled alternately for ``SearchOptions.rounds`` rounds, the
plan's latency is the median per-round ratio plan/FP32 times the FP32 latency (the median of every
FP32 round of the whole search). Load that comes and goes slows both alike and cancels in the
ratio; every measured point, uniform table and feedback figure is on that one scale (refreshed as
FP32 rounds accumulate). Each point keeps its own raw median as ``latency_ms_raw``.
``search.prediction_check`` compares each plan's predicted latency, made before it was measured,
with the measurement: ``before_feedback`` (no mixed plan measured yet) and ``after_feedback``.

The best plan so far and the Pareto front are saved after every measurement to
``<tmp>/search/progress.json`` (atomic), so an interrupted run still leaves a result.
"""
from __future__ import annotations

import dataclasses
import json
import math
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from scipy.optimize import nnls

from ..analysis.sensitivity import SensitivityTable, layer_sensitivity
from ..contract import Artifact, Backend
from ..analysis.stats import inferred_shapes
from ..data import Dataset
from ..errors import ConfigError, DataError
from ..ir import Graph
from ..metrics import snr_db
from ..atomic import write_text_atomic
from ..contract import PrecisionPlan
from ..targets import Target
from .candidates import FP32, Candidate, applicable, parse_candidate, target_candidates, weight_bytes
from .latency import measure_latency, rescaled
from ..measure import build, evaluate, profile_feeds
from .milp import Problem, Solution, pareto_front, predict, snr_from_noise, solve

__all__ = ["SearchOptions", "plan_mixed", "DEFAULT_TOP1_DROP", "DEFAULT_MIN_SNR_DB"]

DEFAULT_TOP1_DROP = 1.0     # points of top1/top5 when labels exist
DEFAULT_MIN_SNR_DB = 30.0   # otherwise
_MARGIN_DB = 0.5


@dataclass(frozen=True)
class SearchOptions:
    samples: int = 32                  # calibration samples scoring the sensitivity
    max_iterations: int = 4
    tolerance: float = 0.05            # predicted vs measured latency, relative
    sweep: int = 3                     # extra latency budgets for the Pareto front
    candidates: tuple[str, ...] | None = None
    use_cache: bool = True
    keep_builds: bool = False
    rounds: int = 4                    # end-to-end timing rounds alternating plan and FP32 (docstring)
    min_layer_saving: float = 0.05     # a candidate must save this fraction of a layer's FP32 time (docstring)
    min_plan_gain: float = 0.02        # a plan must measure this much faster than FP32 to replace it (docstring)
    boundary_probe: bool = True        # measure an alternating plan before the first solve (docstring, step 3)


def plan_mixed(graph: Graph, plan: PrecisionPlan, target: Target, backend: Backend, calib: Dataset | None,
               eval_set: Dataset | None, options: Any, baseline: dict | None, reference: list | None, tmp: Path,
               progress: Callable[[str], None] = lambda s: None,
               search: SearchOptions | None = None) -> tuple[PrecisionPlan, dict]:
    """Search a per-layer plan (module docstring); returns (plan, search_info).

    Without ``--latency-budget``/``--size-budget``/``--max-accuracy-drop`` it minimizes latency
    under the default accuracy drop: top1 (or top5) drop <= 1 point when ``eval_set`` has labels,
    else output SNR >= 30 dB against the FP32 outputs (also written to ``plan.notes``).
    ``search_info`` holds 'pareto', 'uniform', 'feedback', 'measured' (every measured plan with its
    per-layer assignment), 'sensitivity', 'accuracy_metric' and 'search' (objective, constraints,
    corrections, convergence, the chosen measured point).
    """
    if calib is None:
        raise DataError("mixed precision needs calibration data", where="--calib")
    return _Search(graph, plan, target, backend, calib, eval_set or calib.take(min(len(calib), 64)), options,
                   reference, Path(tmp), progress, search or SearchOptions()).run()


class _Search:
    def __init__(self, graph, plan, target, backend, calib, eval_set, options, reference, tmp, progress, so):
        self.g, self.base, self.target, self.backend = graph, plan, target, backend
        self.calib, self.eval, self.opt, self.ref, self.so = calib, eval_set, options, reference, so
        self.progress = progress
        self.work = tmp / "search"
        self.work.mkdir(parents=True, exist_ok=True)
        self.cache: dict = {}
        self.caps = backend.capabilities(target)
        self.feeds = profile_feeds(graph, eval_set, plan.input_shapes)
        labels = eval_set.labels is not None and getattr(options, "metric", None) != "snr"
        self.metric = (getattr(options, "metric", None) or "top1") if labels else "snr_db"
        self.layers = graph.layers()
        self.ids = [n.name for n in self.layers]
        self.points: list[dict] = []
        self.not_offered: dict[str, str] = {}    # candidate -> why it is not offered for speed
        self.feedback: list[dict] = []
        self.problem: Problem | None = None
        self.ref_art: Artifact | None = None        # the FP32 build every latency is measured against
        self.ref_rounds: list[float] = []           # its per-round medians over the whole search
        self.lat_raw: dict[str, dict] = {}          # uniform tables as profiled, before rescaling
        self.corr = {"latency_offset_ms": 0.0, "boundary_ms": 0.0, "mixed_ms": 0.0, "damage_scale": 1.0,
                     "size_offset_bytes": 0.0}
        self.lat_budget = getattr(options, "latency_budget_ms", None)
        size_mb = getattr(options, "size_budget_mb", None)
        self.size_budget = None if size_mb is None else size_mb * 1e6
        drop = getattr(options, "max_accuracy_drop", None)
        if drop is not None and drop < 0:
            raise ConfigError("the allowed accuracy drop must be >= 0", where="--max-accuracy-drop")
        self.objective = "latency" if drop is not None or (self.lat_budget is None and self.size_budget is None) \
            else "damage"
        self.drop = drop if drop is not None else (DEFAULT_TOP1_DROP if self.metric != "snr_db" else None)
        self.snr_floor = (DEFAULT_MIN_SNR_DB if drop is None else
                          (200.0 if drop <= 0 else min(200.0, -20.0 * math.log10(drop / 100.0))))
        self.accuracy_constrained = self.objective == "latency"

    # -- stages ----------------------------------------------------------------------------
    def run(self) -> tuple[PrecisionPlan, dict]:
        cands = target_candidates(self.target, self.caps, list(self.so.candidates) if self.so.candidates else None)
        cands = [c for c in cands if c == FP32 or any(applicable(self.g, n, c) for n in self.layers)]
        if not self.layers:
            return self._finish(None, "the model has no Conv/Gemm/MatMul layer with a constant weight")
        sens = layer_sensitivity(self.g, self.target, self.backend, self.calib, [c.name for c in cands],
                                 self.so.samples, self.progress, self.cache, self.base.quant)
        self.sens = sens
        self.lat = measure_latency(self.g, self.target, self.backend, cands, self.feeds, self.work,
                                   calib=self.calib, base=self.base, repeats=self.opt.repeats,
                                   warmup=self.opt.warmup, cache=self.cache, use_cache=self.so.use_cache,
                                   visit=self._visit_uniform, progress=self.progress)
        self.lat_raw = {c: self.lat.record(c) for c in self.lat.layers}
        self.cands = [c for c in cands if c.name in self.lat.layers]
        self.problem = self._problem(sens, self.cands)
        self._fit()
        self._save("uniform")
        self._probe_boundaries()
        converged = self._feedback_loop()
        self._sweep()
        return self._finish(converged, None)

    def _visit_uniform(self, cand: Candidate, art: Artifact, prof) -> None:
        metrics, outs = evaluate(self.backend, art, self.target, self.eval, self.g, self.ref, self.opt.metric)
        if self.ref is None and cand == FP32:
            self.ref = outs
            metrics["snr_db"] = snr_db(outs, outs)
        if cand == FP32:
            self.ref_art = art
        point = {"source": f"uniform:{cand.name}", "name": cand.name, **self._time(art),
                 "size_bytes": art.size_bytes(), "metrics": metrics, "assignment": self._uniform_assignment(cand)}
        self.points.append(point)
        if art is not self.ref_art:
            self._discard(art.directory)
        self._save(f"uniform {cand.name}")

    def _probe_boundaries(self) -> None:
        """Build and measure the plan that alternates the fastest uniform candidate with FP32 layer by
        layer (in graph order), so the boundary cost ``t`` is fitted on a plan with many boundaries
        before the first solve (module docstring, step 3)."""
        fp32 = self._fp32_point()
        others = [p for p in self.points if p["source"].startswith("uniform:") and p is not fp32]
        if not self.so.boundary_probe or fp32 is None or not others or len(self.ids) < 2:
            return
        fastest = min(others, key=lambda p: p["latency_ms"])
        if fastest["latency_ms"] >= fp32["latency_ms"]:
            return
        c, k, assignment = fastest["name"], 0, {}
        for lid in self.ids:
            if fastest["assignment"][lid] == c:
                assignment[lid] = c if k % 2 == 0 else "fp32"
                k += 1
            else:
                assignment[lid] = "fp32"
        if k < 2:
            return
        sol = predict(self._corrected(), assignment, objective="boundary probe")
        self._measure(sol, f"boundary probe ({c}/fp32 alternating)")
        self._fit()
        self._save("boundary probe")

    def _feedback_loop(self) -> str:
        for it in range(1, self.so.max_iterations + 1):
            try:
                sol = self._solve(self.objective, self.lat_budget)
            except ConfigError:
                if it == 1:
                    raise
                return "no plan meets the constraints after correction; keeping the best measured"
            seen = self._measured(sol.assignment)
            if seen is not None:
                self._log_feedback(it, sol, seen, repeated=True)
                return f"plan repeated at iteration {it}"
            point = self._measure(sol, f"iteration {it}")
            self._log_feedback(it, sol, point, repeated=False)
            self._fit()
            self._save(f"iteration {it}")
            close = abs(sol.predicted_latency_ms - point["latency_ms"]) <= self.so.tolerance * point["latency_ms"]
            if close and self._accuracy_ok(point):
                return f"prediction within {100 * self.so.tolerance:.0f}% of measurement at iteration {it}"
        return f"iteration budget ({self.so.max_iterations}) reached"

    def _sweep(self) -> None:
        try:
            fast = self._solve("latency", None, floor=False).predicted_latency_ms
        except ConfigError:
            return
        slow = predict(self._corrected(), {l: "fp32" for l in self.ids}).predicted_latency_ms
        for k, budget in enumerate(np.linspace(fast, slow, self.so.sweep + 2)[1:-1], 1):
            try:
                sol = self._solve("damage", float(budget), floor=False)
            except ConfigError:
                continue
            if self._measured(sol.assignment) is None:
                self._measure(sol, f"sweep {k}")
                self._fit()
                self._save(f"sweep {k}")

    # -- model -----------------------------------------------------------------------------
    def _problem(self, sens: SensitivityTable, cands: list[Candidate]) -> Problem:
        names = [c.name for c in cands]
        dmg = np.full((len(self.ids), len(names)), np.nan)
        size = np.zeros_like(dmg)
        for i, node in enumerate(self.layers):
            for j, c in enumerate(cands):
                row = sens.lookup(node.name, c.name)
                dmg[i, j] = 0.0 if c == FP32 else (row.damage if row is not None else np.nan)
                size[i, j] = weight_bytes(self.g, node, c, block=self.base.quant.int4_block_size,
                                          compressed_sparse=self.caps.sparse_kernel_for(c.sparsity))
        lat = self.lat.costs(self.ids, names)
        dmg[np.isnan(lat)] = np.nan
        if self.size_budget is None and "fp32" in names:
            fp = names.index("fp32")
            slow = lat >= (1.0 - self.so.min_layer_saving) * lat[:, [fp]]
            slow[:, fp] = False
            dmg[slow] = np.nan
            self.not_offered = {}
            for j, c in enumerate(names):
                why = self._not_faster_uniform(c)
                if why:
                    dmg[:, j] = np.nan
                    self.not_offered[c] = why
        edges, weight = _layer_edges(self.g)
        return Problem(self.ids, names, dmg, np.nan_to_num(lat, nan=0.0), size, edges=edges, edge_weight=weight)

    def _not_faster_uniform(self, cand: str) -> str | None:
        """Why ``cand`` is not offered for speed: its uniform build did not measure ``min_plan_gain``
        faster than FP32 end to end (docstring, step 4), or None."""
        u = next((p for p in self.points if p["source"] == f"uniform:{cand}"), None)
        if cand == "fp32" or u is None or u.get("ratio_to_fp32") is None:
            return None
        if u["ratio_to_fp32"] <= 1.0 - self.so.min_plan_gain:
            return None
        return (f"uniform {cand} measured {u['ratio_to_fp32']:.3f}x the FP32 latency end to end: its per-layer "
                f"savings are within measurement noise (offered only under a size budget)")

    def _corrected(self) -> Problem:
        return dataclasses.replace(self.problem, **self.corr)

    def _floor(self) -> float | None:
        if not self.accuracy_constrained:
            return None
        if self.metric == "snr_db":
            return self.snr_floor
        bad = [p["metrics"]["snr_db"] for p in self.points if not self._accuracy_ok(p)]
        good = [p["metrics"]["snr_db"] for p in self.points if self._accuracy_ok(p)]
        if bad:
            return min(200.0, max(bad) + _MARGIN_DB)
        return min(good) if good else None

    def _solve(self, minimize: str, lat_budget: float | None, floor: bool = True) -> Solution:
        return solve(self._corrected(), minimize=minimize, latency_budget_ms=lat_budget,
                     size_budget_bytes=self.size_budget, min_snr_db=self._floor() if floor else None)

    def _fit(self) -> None:
        """Least-squares corrections from every measured plan (module docstring, step 5)."""
        self._refresh()
        raw = dataclasses.replace(self.problem, boundary_ms=0.0, latency_offset_ms=0.0, size_offset_bytes=0.0,
                                  damage_scale=1.0, mixed_ms=0.0)
        preds = [predict(raw, p["assignment"]) for p in self.points]
        r = np.array([p["latency_ms"] - s.predicted_latency_ms for p, s in zip(self.points, preds)])
        b = np.array([s.boundary_weight for s in preds], dtype=float)
        mixed = np.array([s.boundaries > 0 for s in preds])
        c0 = float(np.mean(r[~mixed])) if (~mixed).any() else 0.0
        t = m = 0.0
        rm, bm = r[mixed] - c0, b[mixed]
        if mixed.sum() >= 2 and np.ptp(bm) > 0:
            (t, m), _ = nnls(np.stack([bm, np.ones_like(bm)], 1), rm)
        elif mixed.any():   # one mixed plan: the minimum-norm split of its residual between t and m
            t = max(0.0, float(bm[0] * rm[0]) / float(bm[0] ** 2 + 1.0))
            m = max(0.0, float(rm[0]) / float(bm[0] ** 2 + 1.0))
        ratios = [np.log(10 ** (-p["metrics"]["snr_db"] / 10) / s.predicted_noise) for p, s in zip(self.points, preds)
                  if s.predicted_noise > 1e-18 and p["metrics"].get("snr_db", 200.0) < 199.0]
        k = float(np.exp(np.clip(np.mean(ratios), -np.log(100), np.log(100)))) if ratios else 1.0
        size_off = float(np.mean([p["size_bytes"] - s.predicted_size_bytes for p, s in zip(self.points, preds)]))
        self.corr = {"latency_offset_ms": float(c0), "boundary_ms": float(t), "mixed_ms": float(m),
                     "damage_scale": k, "size_offset_bytes": size_off}

    # -- measurements ------------------------------------------------------------------------
    def _measure(self, sol: Solution, source: str) -> dict:
        self.progress(f"search: build {source}")
        out = Path(tempfile.mkdtemp(prefix="plan-", dir=self.work))
        _, art = build(self.g, self._plan(sol.assignment, None), self.target, self.backend, out, self.calib,
                       cache=self.cache)
        timing = self._time(art)
        metrics, _ = evaluate(self.backend, art, self.target, self.eval, self.g, self.ref, self.opt.metric)
        point = {"source": source, **timing, "size_bytes": art.size_bytes(),
                 "metrics": metrics, "assignment": dict(sol.assignment), "predicted": sol.to_dict(),
                 "mixed_points_in_fit": sum(1 for p in self.points if not p["source"].startswith("uniform:"))}
        point["predicted"].pop("assignment")
        point["latency_ms_at_measurement"] = point["latency_ms"]
        self.points.append(point)
        self._discard(out)
        return point

    def _time(self, art: Artifact) -> dict:
        """End-to-end latency against the FP32 reference, in alternating rounds (module docstring)."""
        rounds = max(1, self.so.rounds)
        n, warm = max(1, self.opt.repeats // rounds), max(1, self.opt.warmup // rounds)
        run = lambda a: self.backend.profile(a, self.target, self.feeds, repeats=n, warmup=warm,
                                             per_layer=False).timing.latency_ms
        ref, own, ratios = self.ref_art, [], []
        for _ in range(rounds):
            t = run(art)
            own.append(t)
            if ref is not None:
                r = t if art is ref else run(ref)
                self.ref_rounds.append(r)
                ratios.append(t / r)
        q1, q3 = np.percentile(ratios or own, [25, 75])
        rec = {"latency_ms_raw": float(np.median(own)), "ratio_to_fp32": float(np.median(ratios)) if ratios else None,
               "ratio_iqr": float(q3 - q1) if ratios else None, "rounds": rounds,
               "latency_ms_raw_spread": float(np.subtract(*np.percentile(own, [75, 25])))}
        self._scale(rec)
        return rec

    def _ref_ms(self) -> float | None:
        return float(np.median(self.ref_rounds)) if self.ref_rounds else None

    def _scale(self, p: dict) -> None:
        ref = self._ref_ms()
        if p.get("ratio_to_fp32") is None or ref is None:
            p["latency_ms"], p["latency_ms_spread"] = p["latency_ms_raw"], p["latency_ms_raw_spread"]
        else:
            p["latency_ms"], p["latency_ms_spread"] = p["ratio_to_fp32"] * ref, p["ratio_iqr"] * ref

    def _refresh(self) -> None:
        """Points and uniform tables on the current FP32 scale; the problem rebuilt from them."""
        for p in self.points:
            self._scale(p)
        for c, rec in self.lat_raw.items():
            u = next((p for p in self.points if p["source"] == f"uniform:{c}"), None)
            if u is not None:
                self.lat.add(c, rescaled(rec, u["latency_ms"], u["latency_ms_spread"]))
        if self.lat_raw:
            self.problem = self._problem(self.sens, self.cands)

    def _log_feedback(self, it: int, sol: Solution, point: dict, repeated: bool) -> None:
        self.feedback.append({"iteration": it, "predicted_latency_ms": sol.predicted_latency_ms,
                              "measured_latency_ms": point["latency_ms"], "latency_ms_raw": point["latency_ms_raw"],
                              "ratio_to_fp32": point["ratio_to_fp32"], "predicted_snr_db": sol.predicted_snr_db,
                              "metrics": point["metrics"], "size_bytes": point["size_bytes"],
                              "boundaries": sol.boundaries, "boundary_weight": sol.boundary_weight,
                              "plan_summary": _summary(sol.assignment),
                              "repeated": repeated, "corrections_used": dict(self.corr),
                              "assignment": dict(sol.assignment)})

    def _measured(self, assignment: dict[str, str]) -> dict | None:
        return next((p for p in self.points if p["assignment"] == assignment), None)

    def _uniform_assignment(self, cand: Candidate) -> dict[str, str]:
        """What a uniform plan gives each layer: the candidate where it applies, else fp32."""
        ok = lambda n: cand == FP32 or self.sens.lookup(n.name, cand.name) is not None
        return {n.name: cand.name if ok(n) else "fp32" for n in self.layers}

    def _discard(self, directory: Path) -> None:
        if not self.so.keep_builds:
            shutil.rmtree(directory, ignore_errors=True)

    # -- choice ----------------------------------------------------------------------------
    def _fp32_point(self) -> dict | None:
        return next((p for p in self.points if p["source"] == "uniform:fp32"), None)

    def _accuracy_ok(self, p: dict) -> bool:
        if self.metric == "snr_db":
            return p["metrics"].get("snr_db", 200.0) >= self.snr_floor - 1e-9
        ref = self._fp32_point()
        base = ref["metrics"].get(self.metric) if ref else None
        val = p["metrics"].get(self.metric)
        return base is None or val is None or 100.0 * (base - val) <= self.drop + 1e-9

    def _budget_ok(self, p: dict) -> bool:
        return (self.lat_budget is None or p["latency_ms"] <= self.lat_budget) and \
               (self.size_budget is None or p["size_bytes"] <= self.size_budget)

    def _best(self) -> tuple[dict | None, str | None]:
        """(best valid point, why FP32 was chosen instead) - module docstring, step 7."""
        fp32 = self._fp32_point()
        if fp32 is None:
            return None, "FP32 was not measured"
        limit = fp32["latency_ms"] * (1.0 - self.so.min_plan_gain)
        ok_acc = [p for p in self.points if (p is fp32 or p["latency_ms"] <= limit)
                  and (not self.accuracy_constrained or self._accuracy_ok(p))]
        valid = [p for p in ok_acc if self._budget_ok(p)]
        if self.objective == "latency":
            key = lambda p: (p["latency_ms"], -p["metrics"].get("snr_db", 200.0))
        else:
            key = lambda p: (-p["metrics"].get(self.metric, 0.0), -p["metrics"].get("snr_db", 200.0), p["latency_ms"])
        if valid:
            best = min(valid, key=key)
            near = [p for p in self.points if p is not fp32 and p["latency_ms"] < fp32["latency_ms"]
                    and p["latency_ms"] > limit and self._budget_ok(p)]
            if best is fp32 and near:
                return fp32, (f"{len(near)} measured plan(s) beat FP32 by less than "
                              f"{100 * self.so.min_plan_gain:.0f} %, within measurement noise")
            return best, None
        if ok_acc and min(ok_acc, key=lambda p: p["latency_ms"]) is not fp32:
            p = min(ok_acc, key=lambda p: p["latency_ms"])
            return p, "no measured plan met the budget; chose the fastest one that keeps the accuracy"
        return fp32, (f"no measured plan was {100 * self.so.min_plan_gain:.0f} % faster than FP32 "
                      "while meeting every constraint")

    def _plan(self, assignment: dict[str, str] | None, fallback: str | None) -> PrecisionPlan:
        reasons = self._reasons(assignment) if assignment and self.problem and not fallback else {}
        layers = {}
        for lid in self.ids:
            c = parse_candidate(assignment[lid]) if assignment else FP32
            why = reasons.get(lid) or (f"fp32: {fallback}" if fallback else f"{c.name}: chosen by the search")
            layers[lid] = c.choice(why)
        return dataclasses.replace(self.base, layers=layers)

    def _reasons(self, a: dict[str, str]) -> dict[str, str]:
        p = self._corrected()
        noise = predict(p, a).predicted_noise
        fp = p.candidates.index("fp32")
        out = {}
        for i, lid in enumerate(self.ids):
            j = p.candidates.index(a[lid])
            alone = lambda c: snr_from_noise(p.damage[i, c])
            if j != fp:
                saved = p.latency[i, fp] - p.latency[i, j]
                cost = snr_from_noise(noise - p.damage_scale * p.damage[i, j]) - snr_from_noise(noise)
                verb = "saves" if saved >= 0 else "adds"
                out[lid] = (f"{a[lid]}: {verb} {abs(saved):.4f} ms, SNR cost {cost:.2f} dB "
                            f"(layer alone {alone(j):.1f} dB)")
                continue
            alts = [c for c in range(len(p.candidates)) if c != fp and p.allowed[i, c]
                    and p.latency[i, c] < p.latency[i, fp]]
            if not alts:
                out[lid] = "fp32: no candidate measured faster for this layer"
                continue
            c = min(alts, key=lambda c: p.latency[i, c])
            cost = snr_from_noise(noise) - snr_from_noise(noise + p.damage_scale * p.damage[i, c])
            out[lid] = (f"fp32: {p.candidates[c]} would save {p.latency[i, fp] - p.latency[i, c]:.4f} ms "
                        f"but cost {cost:.2f} dB SNR (layer alone {alone(c):.1f} dB)")
        return out

    # -- outputs ---------------------------------------------------------------------------
    def _pareto(self) -> list[dict]:
        front = pareto_front(self.points, y=lambda p: p["metrics"].get(self.metric))
        return [{"latency_ms": p["latency_ms"], "size_bytes": p["size_bytes"], "metrics": p["metrics"],
                 "plan_summary": _summary(p["assignment"]), "source": p["source"],
                 "assignment": dict(p["assignment"])} for p in front]

    def _info(self, best: dict | None, fallback: str | None, converged: str | None) -> dict:
        rule = ("top1/top5 drop in points, mapped to an SNR floor calibrated on measured builds"
                if self.metric != "snr_db" else "output SNR floor in dB")
        search = {"objective": f"minimize {'latency' if self.objective == 'latency' else 'output noise'}",
                  "latency_budget_ms": self.lat_budget, "size_budget_bytes": self.size_budget,
                  "max_accuracy_drop": self.drop if self.metric != "snr_db" else None,
                  "min_snr_db": self.snr_floor if self.metric == "snr_db" else None,
                  "accuracy_rule": rule if self.accuracy_constrained else "none (budgets only)",
                  "snr_floor_db": self._floor() if self.problem else None, "corrections": dict(self.corr),
                  "converged": converged, "fallback": fallback, "measured_points": len(self.points),
                  "not_offered": dict(self.not_offered),
                  "chosen": None if best is None else {k: best[k] for k in ("source", "latency_ms", "size_bytes",
                                                                             "metrics")}}
        if best is not None:
            search["budget_met"] = self._budget_ok(best)
        search["prediction_check"] = self._prediction_check()
        search["fp32_reference_ms"] = self._ref_ms()
        sens = getattr(self, "sens", None)
        keys = ("latency_ms", "latency_ms_spread", "latency_ms_raw", "ratio_to_fp32", "size_bytes", "metrics")
        measured = [{"source": p["source"], **{k: p[k] for k in keys}, "plan_summary": _summary(p["assignment"]),
                     "assignment": dict(p["assignment"]),
                     **({"predicted_latency_ms": p["predicted"]["predicted_latency_ms"]} if "predicted" in p else {})}
                    for p in self.points]
        uniform = [{"name": p["name"], **{k: p[k] for k in keys}} for p in self.points if "name" in p]
        return {"pareto": self._pareto(), "uniform": uniform, "feedback": self.feedback, "measured": measured,
                "sensitivity": sens.to_dict(top=20) if sens else {}, "accuracy_metric": self.metric,
                "search": search}

    def _prediction_check(self) -> dict:
        """Predicted latency (made before the plan was measured) vs its measurement, per plan."""
        rows = []
        for p in self.points:
            if "predicted" not in p:
                continue
            pred, meas = p["predicted"]["predicted_latency_ms"], p["latency_ms_at_measurement"]
            rows.append({"source": p["source"], "predicted_latency_ms": pred, "measured_latency_ms": meas,
                         "error_pct": 100.0 * (pred / meas - 1.0), "mixed_points_in_fit": p["mixed_points_in_fit"]})
        after = [r for r in rows if r["mixed_points_in_fit"] > 0]
        worst = max((abs(r["error_pct"]) for r in after), default=None)
        return {"before_feedback": [r for r in rows if r["mixed_points_in_fit"] == 0], "after_feedback": after,
                "after_feedback_max_abs_error_pct": worst,
                "after_feedback_within_10pct": None if worst is None else worst <= 10.0}

    def _final_plan(self, best: dict | None, note: str | None) -> PrecisionPlan:
        fallback = note if best is None or (note and best is self._fp32_point()) else None
        return self._plan(best["assignment"] if best else None, fallback)

    def _save(self, stage: str) -> None:
        best, note = self._best()
        data = {"format": "hwcompile.search-progress/1", "stage": stage,
                "plan": self._final_plan(best, note).to_dict(), **self._info(best, note, None)}
        write_text_atomic(self.work / "progress.json", json.dumps(data, indent=1, default=float) + "\n")

    def _finish(self, converged: str | None, no_search: str | None) -> tuple[PrecisionPlan, dict]:
        if self.ref_art is not None:
            self._discard(self.ref_art.directory)
        best, note = (None, no_search) if no_search else self._best()
        plan = self._final_plan(best, note)
        info = self._info(best, note, converged)
        plan = plan.with_notes(search="mixed", **{k: v for k, v in info["search"].items() if k != "corrections"},
                               accuracy_metric=self.metric,
                               default_accuracy=f"without budgets: top1/top5 drop <= {DEFAULT_TOP1_DROP} point "
                                                f"with labels, else SNR >= {DEFAULT_MIN_SNR_DB} dB",
                               **({"reason": note} if note else {}))
        write_text_atomic(self.work / "progress.json", json.dumps(
            {"format": "hwcompile.search-progress/1", "stage": "done", "plan": plan.to_dict(), **info},
            indent=1, default=float) + "\n")
        return plan, info


def _summary(assignment: dict[str, str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in assignment.values():
        out[c] = out.get(c, 0) + 1
    return dict(sorted(out.items()))


def _layer_edges(graph: Graph) -> tuple[list[tuple[int, int]], np.ndarray]:
    """(i, j) when layer j reads layer i's output directly or through non-layer ops only, and per edge
    the element count of layer i's output relative to the mean over edges (symbolic dims count 1)."""
    layers = graph.layers()
    index = {id(n): k for k, n in enumerate(layers)}
    edges = set()
    for i, node in enumerate(layers):
        stack, seen = list(node.outputs), set()
        while stack:
            v = stack.pop()
            for user in graph.consumers(v):
                if id(user) in seen:
                    continue
                seen.add(id(user))
                if id(user) in index:
                    edges.add((i, index[id(user)]))
                else:
                    stack.extend(user.outputs)
    edges = sorted(edges)
    shapes = inferred_shapes(graph)
    numel = np.array([_numel(shapes.get(layers[i].outputs[0].name)) for i, _ in edges], dtype=np.float64)
    return edges, (numel / numel.mean() if len(edges) else numel)


def _numel(dims) -> float:
    """Elements of a tensor from freshly inferred dims (symbolic dims, i.e. the batch, count 1). The
    shapes stored on values can be stale after clean-up (EfficientNet's exported Pads computed their
    pads from Shape ops; once folded, stored spatial dims stayed symbolic and every edge weighed its
    channel count only)."""
    if dims is None:
        return 1.0
    return float(np.prod([d if isinstance(d, int) and d > 0 else 1 for d in dims], dtype=np.float64))
