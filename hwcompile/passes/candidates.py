"""Which candidates a target offers, and which layers the passes can give a candidate.

Offered (``target_candidates``): ``fp32`` first (the reference), then every precision the target
lists. ``+2:4`` variants are offered by default only where the target lists ``2:4``, the pruning
pass imports, and the backend runs 2:4 with sparse kernels (``Capabilities.sparse_kernels``):
elsewhere 2:4 costs accuracy (and a least-squares refit per layer) for no speed or size gain;
pass the names explicitly (``["fp32+2:4"]``) to search it anyway.

Applicability (``applicable``, mirroring the passes, which skip a layer they cannot rewrite):
``int8dyn`` needs a MatMul with a 2-D constant weight, or a Gemm (no dynamic INT8 Conv);
``int4w`` a MatMul with a 2-D constant weight; a sparse candidate a layer the pruning pass would
not leave dense.
"""
from __future__ import annotations

import importlib

import onnx_ir as ir

from ..contract import CANDIDATES, FP32, Candidate, Capabilities, parse_candidate
from ..errors import ConfigError
from ..ir import Graph
from ..targets import Target

__all__ = ["target_candidates", "applicable", "prune_available"]


def prune_available() -> bool:
    try:
        importlib.import_module("hwcompile.passes.prune")
    except ImportError:
        return False
    return True


def target_candidates(target: Target, caps: Capabilities, names: list[str] | None = None) -> list[Candidate]:
    """The candidates ``target`` offers (fp32 first), or ``names`` checked against it."""
    if names is not None:
        out = [parse_candidate(n) for n in names]
        for c in out:
            if c.precision not in target.precisions:
                raise ConfigError(f"target {target.name} does not support {c.precision!r}", where="candidates",
                                  hint=f"it supports {list(target.precisions)}")
            if c.sparsity != "dense" and not target.supports_sparsity(c.sparsity):
                raise ConfigError(f"target {target.name} does not support sparsity {c.sparsity!r}",
                                  where="candidates", hint=f"it supports {list(target.sparsity)}")
            if c.sparsity != "dense" and not prune_available():
                raise ConfigError("sparse candidates need the pruning pass (hwcompile.passes.prune)",
                                  where="candidates")
        return [FP32] + [c for c in out if c != FP32]
    out = [FP32] + [Candidate(p) for p in target.precisions if p in CANDIDATES and p != "fp32"]
    if "2:4" in target.sparsity and caps.sparse_kernel_for("2:4") and prune_available():
        out += [Candidate(p, "2:4") for p in ("fp32", "fp16", "int8") if p in target.precisions]
    return out


def applicable(graph: Graph, node: ir.Node, cand: Candidate) -> bool:
    """Whether the passes can give ``node`` this candidate (see the module docstring)."""
    w = graph.weight_of(node)
    if w is None:
        return False
    if cand.sparsity != "dense":
        from ..prune.semistructured import parse_target, skip_reason

        target = parse_target(cand.sparsity)
        if target is not None and skip_reason(graph, node, target) is not None:
            return False     # the prune pass would leave it dense (e.g. 3 input channels, depthwise)
    if cand.precision == "int8dyn":
        return node.op_type == "Gemm" or (node.op_type == "MatMul" and len(w.shape) == 2)
    if cand.precision == "int4w":
        return node.op_type == "MatMul" and len(w.shape) == 2
    return True
