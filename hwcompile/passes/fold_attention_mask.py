"""Attention-mask folding: the mask arithmetic every layer repeats is computed once. Preserves outputs
exactly (only identical computations are merged).

Exporters often rebuild the additive mask inside each attention layer from the same model input
(``Where(mask, 0, -inf)``, ``(1 - mask) * min``, with its Unsqueeze/Cast/Expand), each layer holding
its own copy of the small constants. Two nodes with the same op, attributes and inputs compute the
same value (ONNX ops here are deterministic), so after equal small constants are merged
(``DeduplicateInitializersPass``) onnx_ir's ``CommonSubexpressionEliminationPass`` keeps one of each.
Both run on the whole graph of a model with masked attention (and not at all on others), which
also merges the repeated shape arithmetic.

An attention site is ``Softmax(scores + M)`` with ``scores`` from a MatMul; its mask ``M`` is the
Add input that does not depend on any MatMul. ``graph.meta["attention_masks"]`` records how many
distinct mask values fed the sites before and after; ``check_attention_mask`` names the sites whose
mask is computed from activations (then it is not a mask and stays per layer).
"""
from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import CommonSubexpressionEliminationPass, DeduplicateInitializersPass

from ..ir import Graph, const_array, is_constant
from .base import PassResult, structure

__all__ = ["fold_attention_mask", "attention_masks", "check_attention_mask", "split_scores"]

_SCALE_OPS = ("Mul", "Div")

CONST_LIMIT = 16      # constants up to this many elements are merged by value (mask scalars, shapes)


def fold_attention_mask(graph: Graph) -> PassResult:
    before_nodes, shape = graph.main.num_nodes(), structure(graph)
    before = attention_masks(graph)
    if before:          # no masked attention: leave every other graph as it is
        DeduplicateInitializersPass(size_limit=CONST_LIMIT)(graph.model)
        CommonSubexpressionEliminationPass(size_limit=CONST_LIMIT)(graph.model)
    after = attention_masks(graph)
    declined = {s.name: r for s in _softmax_sites(graph) if (r := check_attention_mask(s))}
    record = graph.meta.setdefault("attention_masks", {"distinct_before": len({id(m) for m in before.values()})})
    record.update(sites=len(after), distinct_after=len({id(m) for m in after.values()}), declined=declined)
    removed = before_nodes - graph.main.num_nodes()
    # merging duplicate initializers rewires inputs without removing nodes: modified is any change
    return PassResult(graph, structure(graph) != shape, {"nodes_merged": removed}, declined)


fold_attention_mask.name, fold_attention_mask.in_place = "fold_attention_mask", True


def attention_masks(graph: Graph) -> dict[str, ir.Value]:
    """{Softmax name: its additive mask value} for every attention site with a mask."""
    out = {}
    for soft in _softmax_sites(graph):
        mask = _mask_of(soft)
        if mask is not None and check_attention_mask(soft) is None:
            out[soft.name] = mask
    return out


def check_attention_mask(soft: ir.Node) -> str | None:
    """None if ``soft`` reads ``scores + mask`` with a mask free of activations, else why not."""
    mask = _mask_of(soft)
    if mask is None:
        return "Softmax input is not an Add of MatMul scores and a mask"
    if _reaches_matmul(mask):
        return f"mask '{mask.name}' is computed from activations (a MatMul feeds it)"
    return None


def _softmax_sites(graph: Graph) -> list[ir.Node]:
    return [n for n in graph.main if n.op_type == "Softmax" and n.domain in ("", "ai.onnx")]


def split_scores(x: ir.Value) -> tuple[ir.Value | None, ir.Value | None]:
    """(scores, additive mask or None) for ``x = scores [+ mask]``, the scores a MatMul scaled by
    constants and/or plus a constant bias (e.g. MPNet's relative-position bias, once specialized)."""
    def is_scores(v: ir.Value) -> bool:
        prod = v.producer()
        for _ in range(4):
            if prod is None:
                return False
            if prod.op_type == "MatMul":
                return True
            const = [i for i in prod.inputs if is_constant(i)]
            if prod.op_type in _SCALE_OPS + ("Add",) and len(const) == 1 and np.all(np.isfinite(const_array(const[0]))) \
                    and (prod.op_type != "Div" or const[0] is prod.inputs[1]):   # a scale, or a constant bias
                prod = next(i for i in prod.inputs if i is not const[0]).producer()
            else:
                return False
        return False

    if is_scores(x):
        return x, None
    prod = x.producer()
    if prod is not None and prod.op_type == "Add":
        a, b = prod.inputs
        if is_scores(a):
            return a, b
        if is_scores(b):
            return b, a
    return None, None


def _mask_of(soft: ir.Node) -> ir.Value | None:
    return split_scores(soft.inputs[0])[1]


def _reaches_matmul(value: ir.Value | None, limit: int = 64) -> bool:
    """Whether a MatMul's values flow into ``value`` (through at most ``limit`` producers; past
    that, assumed so). Shape/Size read only the shape of their input and stop the search."""
    stack, seen = [value], set()
    while stack and len(seen) < limit:
        v = stack.pop()
        prod = v.producer() if v is not None else None
        if prod is None or id(prod) in seen:
            continue
        seen.add(id(prod))
        if prod.op_type in ("MatMul", "Gemm", "MatMulInteger"):
            return True
        if prod.op_type not in ("Shape", "Size"):   # a shape is not the value: the mask may be sized by activations
            stack.extend(prod.inputs)
    return len(seen) >= limit
