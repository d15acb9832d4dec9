"""Apply a PrecisionPlan to a Graph: pruning, then FP16, then Q/DQ insertion, each a pass.

The passes read the plan (never the target); the backend's QDQStyle says how Q/DQ must look.
Calibration statistics are computed once per graph and calibration set and kept in ``cache``,
so the mixed-precision search does not recollect them for every candidate plan.
"""
from __future__ import annotations

from .backends.base import QDQStyle
from .data import Dataset
from .ir import Graph
from .plan import PrecisionPlan, parse_sparsity
from .passes import eliminate_dead_code, run_passes

__all__ = ["apply_plan"]


def apply_plan(graph: Graph, plan: PrecisionPlan, style: QDQStyle, calib: Dataset | None,
               cache: dict | None = None) -> Graph:
    cache = cache if cache is not None else {}
    layers = graph.layers()
    choices = {n.name: plan.choice(n.name) for n in layers}
    if any(parse_sparsity(c.sparsity)[0] != "dense" for c in choices.values()):
        from .passes.prune import prune

        graph = prune(graph, plan, calib, cache=cache)
    if any(c.weight == "fp16" for c in choices.values()):
        from .passes.fp16 import convert_fp16

        graph = run_passes(graph, [lambda g: convert_fp16(g, plan)], max_rounds=1)
    if any(not c.is_float for c in choices.values()):
        from .passes.quantize import quantize

        graph = quantize(graph, plan, style, calib, cache=cache)
    graph = run_passes(graph, [eliminate_dead_code])  # drop the float weights the passes replaced
    graph.meta["plan"] = plan   # what the graph now implements (read by backends and test devices)
    return graph
