"""Mixed precision: sensitivity -> measured latency -> MILP -> build, measure, correct, re-solve.

``plan_mixed`` is what ``--precision mixed`` runs (called by ``pipeline.compile_model``):

1. **Sensitivity** (``analysis.sensitivity``): each layer's output damage alone under each
   candidate, ``D_ic = 10^(-snr_ic/10)``.
2. **Uniform builds** (``search.latency``): every candidate as a uniform plan, lowered, profiled per
   layer and evaluated. They are measured points like any other, so every uniform candidate seeds
   the front and the choice: the search never returns a plan it measured slower than one of them
   at the same accuracy.
3. **Boundary probe** (``SearchOptions.boundary_probe``): the plan alternating the fastest uniform
   candidate with FP32 layer by layer is built and measured, and the corrections of step 5 are
   fitted with it before the first solve: per-layer tables come from uniform builds, which have no
   precision boundaries, and what a boundary costs depends on the backend.
4. **Solve** (``search.milp``) for the objective and constraints of ``search.choice``. Without a
   size budget a layer is offered a candidate other than FP32 only where its measured time is at
   least ``min_layer_saving`` below the layer's FP32 time, and a candidate whose uniform build did
   not measure ``min_plan_gain`` faster than FP32 end to end is not offered at all
   (``search.not_offered`` says why): per-layer differences finer than that are measurement noise,
   and a solver given noise picks the optimistic figures.
5. **Feedback**: the chosen plan is built and measured end to end; the model is corrected
   (``search.correction``) and re-solved, until the plan repeats, the prediction is within
   ``tolerance`` of the measurement and the plan meets the accuracy constraint, or after
   ``max_iterations``.
6. **Sweep**: a few latency budgets between the fastest prediction and FP32 give more measured
   points; the Pareto front is drawn from all measured points (``search.explain``).
7. **Choose** the best measured plan (``search.choice``); every layer's ``LayerChoice.reason``
   says why (``search.explain``).

Every end-to-end latency is measured against the FP32 build in alternating rounds
(``search.timing``). ``search.prediction_check`` compares each plan's predicted latency, made
before it was measured, with the measurement. The best plan so far and the Pareto front are saved
after every measurement to ``<tmp>/search/progress.json`` (atomic), so an interrupted run still
leaves a result. ``benchmarks/SEARCH_NOTES.md`` records the measurements behind these rules.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..analysis.sensitivity import SensitivityTable, layer_sensitivity
from ..analysis.stats import inferred_shapes
from ..atomic import write_text_atomic
from ..contract import Artifact, Backend, PrecisionPlan
from ..data import Dataset
from ..errors import ConfigError, DataError
from ..ir import Graph
from ..measure import build, evaluate, profile_feeds
from ..metrics import snr_db
from ..targets import Target
from .candidates import FP32, Candidate, applicable, parse_candidate, target_candidates, weight_bytes
from .choice import DEFAULT_MIN_SNR_DB, DEFAULT_TOP1_DROP, Criteria
from .correction import NO_CORRECTION, fit_corrections
from .explain import layer_reasons, pareto, prediction_check
from .latency import measure_latency, rescaled
from .milp import Problem, Solution, predict, solve
from .points import Point, summary
from .timing import PairedTimer

__all__ = ["SearchOptions", "plan_mixed", "DEFAULT_TOP1_DROP", "DEFAULT_MIN_SNR_DB"]


@dataclass(frozen=True)
class SearchOptions:
    samples: int = 32                  # calibration samples scoring the sensitivity
    max_iterations: int = 4
    tolerance: float = 0.05            # predicted vs measured latency, relative
    sweep: int = 3                     # extra latency budgets for the Pareto front
    candidates: tuple[str, ...] | None = None
    use_cache: bool = True
    keep_builds: bool = False
    rounds: int = 4                    # end-to-end timing rounds alternating plan and FP32 (search.timing)
    min_layer_saving: float = 0.05     # a candidate must save this fraction of a layer's FP32 time (step 4)
    min_plan_gain: float = 0.02        # a plan must measure this much faster than FP32 to replace it (step 7)
    boundary_probe: bool = True        # measure an alternating plan before the first solve (step 3)


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
        labels = eval_set.labels is not None and getattr(options, "metric", None) != "snr"
        self.metric = (getattr(options, "metric", None) or "top1") if labels else "snr_db"
        self.criteria = Criteria.from_options(options, self.metric, so.min_plan_gain)
        self.timer = PairedTimer(backend, target, profile_feeds(graph, eval_set, plan.input_shapes), rounds=so.rounds,
                                 repeats=options.repeats, warmup=options.warmup)
        self.layers = graph.layers()
        self.ids = [n.name for n in self.layers]
        self.points: list[Point] = []
        self.not_offered: dict[str, str] = {}    # candidate -> why it is not offered for speed
        self.feedback: list[dict] = []
        self.problem: Problem | None = None
        self.lat_raw: dict[str, dict] = {}          # uniform tables as profiled, before rescaling
        self.corr = dict(NO_CORRECTION)

    # -- stages ----------------------------------------------------------------------------
    def run(self) -> tuple[PrecisionPlan, dict]:
        cands = target_candidates(self.target, self.caps, list(self.so.candidates) if self.so.candidates else None)
        cands = [c for c in cands if c == FP32 or any(applicable(self.g, n, c) for n in self.layers)]
        if not self.layers:
            return self._finish(None, "the model has no Conv/Gemm/MatMul layer with a constant weight")
        sens = layer_sensitivity(self.g, self.target, self.backend, self.calib, [c.name for c in cands],
                                 self.so.samples, self.progress, self.cache, self.base.quant)
        self.sens = sens
        self.lat = measure_latency(self.g, self.target, self.backend, cands, self.timer.feeds, self.work,
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
            self.timer.reference = art
        self.points.append(self._point(f"uniform:{cand.name}", art, metrics, self._uniform_assignment(cand),
                                       name=cand.name))
        if art is not self.timer.reference:
            self._discard(art.directory)
        self._save(f"uniform {cand.name}")

    def _probe_boundaries(self) -> None:
        """Build and measure the plan that alternates the fastest uniform candidate with FP32 layer by
        layer (in graph order), so the boundary cost is fitted on a plan with many boundaries
        before the first solve (module docstring, step 3)."""
        fp32 = self._fp32_point()
        others = [p for p in self.points if p.uniform and p is not fp32]
        if not self.so.boundary_probe or fp32 is None or not others or len(self.ids) < 2:
            return
        fastest = min(others, key=lambda p: p.latency_ms)
        if fastest.latency_ms >= fp32.latency_ms:
            return
        c, k, assignment = fastest.name, 0, {}
        for lid in self.ids:
            if fastest.assignment[lid] == c:
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
                sol = self._solve(self.criteria.objective, self.criteria.latency_budget_ms)
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
            close = abs(sol.predicted_latency_ms - point.latency_ms) <= self.so.tolerance * point.latency_ms
            if close and self.criteria.accuracy_ok(point, self._fp32_point()):
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
        if self.criteria.size_budget_bytes is None and "fp32" in names:
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
        edges, weight = layer_edges(self.g)
        return Problem(self.ids, names, dmg, np.nan_to_num(lat, nan=0.0), size, edges=edges, edge_weight=weight)

    def _not_faster_uniform(self, cand: str) -> str | None:
        """Why ``cand`` is not offered for speed: its uniform build did not measure ``min_plan_gain``
        faster than FP32 end to end (docstring, step 4), or None."""
        u = next((p for p in self.points if p.source == f"uniform:{cand}"), None)
        if cand == "fp32" or u is None or u.ratio_to_fp32 is None:
            return None
        if u.ratio_to_fp32 <= 1.0 - self.so.min_plan_gain:
            return None
        return (f"uniform {cand} measured {u.ratio_to_fp32:.3f}x the FP32 latency end to end: its per-layer "
                f"savings are within measurement noise (offered only under a size budget)")

    def _corrected(self) -> Problem:
        return dataclasses.replace(self.problem, **self.corr)

    def _floor(self) -> float | None:
        return self.criteria.snr_floor_db(self.points, self._fp32_point())

    def _solve(self, minimize: str, lat_budget: float | None, floor: bool = True) -> Solution:
        return solve(self._corrected(), minimize=minimize, latency_budget_ms=lat_budget,
                     size_budget_bytes=self.criteria.size_budget_bytes, min_snr_db=self._floor() if floor else None)

    def _fit(self) -> None:
        """Corrections from every measured plan (``search.correction``), on the current FP32 scale."""
        self._refresh()
        self.corr = fit_corrections(self.problem, self.points)

    # -- measurements ------------------------------------------------------------------------
    def _point(self, source: str, art: Artifact, metrics: dict, assignment: dict[str, str], **extra) -> Point:
        p = Point(source=source, assignment=dict(assignment), metrics=metrics, size_bytes=art.size_bytes(),
                  **self.timer.time(art), **extra)
        p.rescale(self.timer.reference_ms())
        return p

    def _measure(self, sol: Solution, source: str) -> Point:
        self.progress(f"search: build {source}")
        out = Path(tempfile.mkdtemp(prefix="plan-", dir=self.work))
        rec = getattr(self.opt, "recover", None)     # with recovery on, a candidate is measured recovered
        _, art = build(self.g, self._plan(sol.assignment, None), self.target, self.backend, out, self.calib,
                       cache=self.cache, recovery=(rec, self.calib) if rec is not None and rec.enabled else None)
        predicted = sol.to_dict()
        predicted.pop("assignment")
        point = self._point(source, art, {}, sol.assignment, predicted=predicted,
                            mixed_points_in_fit=sum(1 for p in self.points if not p.uniform))
        point.metrics, _ = evaluate(self.backend, art, self.target, self.eval, self.g, self.ref, self.opt.metric)
        point.latency_ms_at_measurement = point.latency_ms
        self.points.append(point)
        self._discard(out)
        return point

    def _refresh(self) -> None:
        """Points and uniform tables on the current FP32 scale; the problem rebuilt from them."""
        ref = self.timer.reference_ms()
        for p in self.points:
            p.rescale(ref)
        for c, rec in self.lat_raw.items():
            u = next((p for p in self.points if p.source == f"uniform:{c}"), None)
            if u is not None:
                self.lat.add(c, rescaled(rec, u.latency_ms, u.latency_ms_spread))
        if self.lat_raw:
            self.problem = self._problem(self.sens, self.cands)

    def _log_feedback(self, it: int, sol: Solution, point: Point, repeated: bool) -> None:
        self.feedback.append({"iteration": it, "predicted_latency_ms": sol.predicted_latency_ms,
                              "measured_latency_ms": point.latency_ms, "latency_ms_raw": point.latency_ms_raw,
                              "ratio_to_fp32": point.ratio_to_fp32, "predicted_snr_db": sol.predicted_snr_db,
                              "metrics": point.metrics, "size_bytes": point.size_bytes,
                              "boundaries": sol.boundaries, "boundary_weight": sol.boundary_weight,
                              "plan_summary": summary(sol.assignment),
                              "repeated": repeated, "corrections_used": dict(self.corr),
                              "assignment": dict(sol.assignment)})

    def _measured(self, assignment: dict[str, str]) -> Point | None:
        return next((p for p in self.points if p.assignment == assignment), None)

    def _uniform_assignment(self, cand: Candidate) -> dict[str, str]:
        """What a uniform plan gives each layer: the candidate where it applies, else fp32."""
        ok = lambda n: cand == FP32 or self.sens.lookup(n.name, cand.name) is not None
        return {n.name: cand.name if ok(n) else "fp32" for n in self.layers}

    def _discard(self, directory: Path) -> None:
        if not self.so.keep_builds:
            shutil.rmtree(directory, ignore_errors=True)

    # -- choice and outputs ------------------------------------------------------------------
    def _fp32_point(self) -> Point | None:
        return next((p for p in self.points if p.source == "uniform:fp32"), None)

    def _best(self) -> tuple[Point | None, str | None]:
        return self.criteria.best(self.points, self._fp32_point())

    def _plan(self, assignment: dict[str, str] | None, fallback: str | None) -> PrecisionPlan:
        reasons = layer_reasons(self._corrected(), self.ids, assignment) \
            if assignment and self.problem and not fallback else {}
        layers = {}
        for lid in self.ids:
            c = parse_candidate(assignment[lid]) if assignment else FP32
            why = reasons.get(lid) or (f"fp32: {fallback}" if fallback else f"{c.name}: chosen by the search")
            layers[lid] = c.choice(why)
        return dataclasses.replace(self.base, layers=layers)

    def _info(self, best: Point | None, fallback: str | None, converged: str | None) -> dict:
        cr = self.criteria
        rule = ("top1/top5 drop in points, mapped to an SNR floor calibrated on measured builds"
                if self.metric != "snr_db" else "output SNR floor in dB")
        search = {"objective": f"minimize {'latency' if cr.objective == 'latency' else 'output noise'}",
                  "latency_budget_ms": cr.latency_budget_ms, "size_budget_bytes": cr.size_budget_bytes,
                  "max_accuracy_drop": cr.drop if self.metric != "snr_db" else None,
                  "min_snr_db": cr.snr_floor if self.metric == "snr_db" else None,
                  "accuracy_rule": rule if cr.accuracy_constrained else "none (budgets only)",
                  "snr_floor_db": self._floor() if self.problem else None, "corrections": dict(self.corr),
                  "converged": converged, "fallback": fallback, "measured_points": len(self.points),
                  "not_offered": dict(self.not_offered),
                  "chosen": None if best is None else {"source": best.source, "latency_ms": best.latency_ms,
                                                       "size_bytes": best.size_bytes, "metrics": best.metrics}}
        if best is not None:
            search["budget_met"] = cr.budget_ok(best)
        search["prediction_check"] = prediction_check(self.points)
        search["fp32_reference_ms"] = self.timer.reference_ms()
        sens = getattr(self, "sens", None)
        measured = [p.record() for p in self.points]
        uniform = [{"name": p.name, **{k: v for k, v in p.record().items()
                                       if k not in ("source", "plan_summary", "assignment", "predicted_latency_ms")}}
                   for p in self.points if p.name is not None]
        return {"pareto": pareto(self.points, self.metric), "uniform": uniform, "feedback": self.feedback,
                "measured": measured, "sensitivity": sens.to_dict() if sens else {},
                "accuracy_metric": self.metric, "search": search}

    def _final_plan(self, best: Point | None, note: str | None) -> PrecisionPlan:
        fallback = note if best is None or (note and best is self._fp32_point()) else None
        return self._plan(best.assignment if best else None, fallback)

    def _save(self, stage: str) -> None:
        best, note = self._best()
        data = {"format": "hwcompile.search-progress/1", "stage": stage,
                "plan": self._final_plan(best, note).to_dict(), **self._info(best, note, None)}
        write_text_atomic(self.work / "progress.json", json.dumps(data, indent=1, default=float) + "\n")

    def _finish(self, converged: str | None, no_search: str | None) -> tuple[PrecisionPlan, dict]:
        if self.timer.reference is not None:
            self._discard(self.timer.reference.directory)
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


def layer_edges(graph: Graph) -> tuple[list[tuple[int, int]], np.ndarray]:
    """(i, j) when layer j reads layer i's output directly or through non-layer ops only, and per edge
    the element count of layer i's output relative to the mean over edges (symbolic dims count 1).
    Shapes are inferred afresh: the ones stored on values can be stale after clean-up."""
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
    """Elements of a tensor from inferred dims (symbolic dims, i.e. the batch, count 1)."""
    if dims is None:
        return 1.0
    return float(np.prod([d if isinstance(d, int) and d > 0 else 1 for d in dims], dtype=np.float64))
