"""Apply a PrecisionPlan to a Graph: pruning, then FP16, then Q/DQ insertion, each a pass.

The passes read the plan (never the target); the backend's QDQStyle says how Q/DQ must look.
Calibration statistics are computed once per graph and calibration set and kept in ``cache``,
so the mixed-precision search does not recollect them for every candidate plan.
"""
from __future__ import annotations

from ..contract import PrecisionPlan, QDQStyle
from ..data import Dataset
from ..ir import Graph
from .base import BoundPass, run_passes
from .dead_code import eliminate_dead_code

__all__ = ["apply_plan", "plan_passes"]


def plan_passes(plan: PrecisionPlan, style: QDQStyle, calib: Dataset | None, cache: dict,
                layers: list[str]) -> list[BoundPass]:
    """The passes ``plan`` needs on a graph with these layer ids, in order: prune, FP16, quantize."""
    choices = [plan.choice(lid) for lid in layers]
    passes = []
    if any(c.sparsity_kind != "dense" for c in choices):
        from .prune import prune_pass

        passes.append(BoundPass("prune", prune_pass, (plan, calib), {"cache": cache}))
    if any(c.weight == "fp16" for c in choices):
        from .fp16 import convert_fp16

        passes.append(BoundPass("convert_fp16", convert_fp16, (plan,)))
    if any(not c.is_float for c in choices):
        from .quantize import quantize_pass

        passes.append(BoundPass("quantize", quantize_pass, (plan, style, calib), {"cache": cache}))
    return passes


def apply_plan(graph: Graph, plan: PrecisionPlan, style: QDQStyle, calib: Dataset | None,
               cache: dict | None = None, log: dict | None = None) -> Graph:
    """Apply ``plan`` to ``graph`` (in place) through the pass runner: each plan pass once, then dead
    code to a fixpoint. What each pass did and declined (``run_passes``'s log) goes to ``log`` and to
    ``graph.meta["plan_passes"]``."""
    cache = cache if cache is not None else {}
    log = log if log is not None else {}
    passes = plan_passes(plan, style, calib, cache, [n.name for n in graph.layers()])
    graph = run_passes(graph, passes, max_rounds=1, log=log)
    graph = run_passes(graph, [eliminate_dead_code], log=log)  # drop the float weights the passes replaced
    graph.meta["plan"] = plan   # what the graph now implements (read by backends and test devices)
    graph.meta["plan_passes"] = log
    return graph
