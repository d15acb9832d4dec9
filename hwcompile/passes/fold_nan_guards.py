"""NaN-guard folding after attention softmax. Preserves outputs for finite attention scores.

Exporters of scaled-dot-product attention write ``P = Softmax(S + M)`` followed by the guard
``Where(IsNaN(P), 0, P)``: a query row whose keys are all masked (``M = -inf`` everywhere) gives
``exp(-inf) / 0 = NaN``, and the guard turns that row into zeros. Per layer it costs an IsNaN and a
Where over the whole [B, H, Tq, Tk] probability tensor.

- **The guard cannot fire** when every mask value is finite (a constant, or ``Where(c, a, b)`` with
  finite constants ``a, b``, possibly reshaped/expanded) and the scores are finite: Softmax of a
  finite row is finite. The guard is removed.
- **A cheaper equal form** when the mask is ``Where(c, 0, -inf)`` (either branch order): with
  ``-inf`` replaced by the most negative float, ``exp(S_j + min - max_k S_k)`` is exactly 0 for every
  masked key of a row that keeps one key, so those rows are bit-identical; a fully masked row becomes
  uniform instead of NaN. Multiplying by ``r = ReduceMax(keep, last axis)`` (1 where the row keeps a
  key, else 0) zeroes it as the guard did. ``r`` is computed once per mask, and is applied to the
  ``P @ V`` product (``(P r) V = r (P V)``, [B, H, Tq, dh] instead of [B, H, Tq, Tk]) where the guard
  feeds only that MatMul.

"Finite scores" is the one assumption: scores from non-finite inputs or float overflow (|S| near
1e30) would give NaN where the guard gave 0. ``check_nan_guard`` declines, with the reason, when the
Where does not replace NaN by 0, the IsNaN has other users, the Softmax is not over the last axis,
its input is not ``MatMul``-derived scores (plus a mask), or the mask's values cannot be bounded.
"""
from __future__ import annotations

import numpy as np
import onnx_ir as ir

from ..ir import Graph, const_array, is_constant
from .base import PassResult
from .fold_attention_mask import split_scores

__all__ = ["fold_nan_guards", "check_nan_guard", "mask_kind"]

_SHAPE_OPS = ("Expand", "Unsqueeze", "Reshape", "Squeeze", "Identity", "Transpose", "Flatten")


def fold_nan_guards(graph: Graph) -> PassResult:
    removed = rewritten = 0
    declined: dict[str, str] = {}
    shared: dict[tuple, tuple[ir.Value, ir.Value]] = {}
    for where in [n for n in graph.main if n.op_type == "Where" and n.domain in ("", "ai.onnx")]:
        if not _looks_like_guard(where):
            continue
        reason, kind = check_nan_guard(graph, where)
        if reason:
            declined[where.name] = reason
            continue
        if kind == "finite":
            _remove_guard(graph, where)
            removed += 1
        else:
            _rewrite_guard(graph, where, shared)
            rewritten += 1
    graph.meta.setdefault("nan_guards_declined", {}).update(declined)
    return PassResult(graph, bool(removed or rewritten), {"nan_guards_removed": removed,
                                                         "nan_guards_rewritten": rewritten})


fold_nan_guards.name, fold_nan_guards.in_place = "fold_nan_guards", True


def _looks_like_guard(where: ir.Node) -> bool:
    cond = where.inputs[0]
    prod = cond.producer() if cond is not None else None
    return prod is not None and prod.op_type == "IsNaN"


def check_nan_guard(graph: Graph, where: ir.Node) -> tuple[str | None, str | None]:
    """(None, "finite" | "neg_inf") if the guard ``where`` can be folded, else (reason, None)."""
    isnan = where.inputs[0].producer()
    p = isnan.inputs[0]
    if where.inputs[2] is not p:
        return "Where does not pass the guarded value through where it is not NaN", None
    if not is_constant(where.inputs[1]) or np.any(const_array(where.inputs[1]) != 0):
        return "guard replaces NaN by a value other than a constant 0", None
    if len(isnan.outputs[0].uses()) != 1 or isnan.outputs[0].is_graph_output():
        return f"IsNaN '{isnan.name}' has other users", None
    soft = p.producer()
    if soft is None or soft.op_type != "Softmax":
        return "guarded value is not a Softmax output", None
    axis = soft.attributes["axis"].as_int() if "axis" in soft.attributes else -1
    rank = len(p.shape) if p.shape is not None else None
    if axis != -1 and (rank is None or axis != rank - 1):
        return f"Softmax '{soft.name}' is not over the last axis", None
    scores, mask = split_scores(soft.inputs[0])
    if scores is None:
        return f"input of Softmax '{soft.name}' is not MatMul scores (plus a mask)", None
    kind = "finite" if mask is None else mask_kind(mask)
    if kind is None:
        return f"cannot bound the values of mask '{mask.name}'", None
    if kind == "neg_inf" and mask.producer().inputs[0].dtype != ir.DataType.BOOL:
        return f"mask condition '{mask.producer().inputs[0].name}' is not boolean", None
    return None, kind


def mask_kind(mask: ir.Value) -> str | None:
    """"finite" if every value of ``mask`` is provably finite, "neg_inf" if it is ``Where(c, 0, -inf)``
    (or ``Where(c, -inf, 0)``), None when the graph does not say."""
    v = mask
    for _ in range(8):
        if is_constant(v):
            return "finite" if np.all(np.isfinite(const_array(v))) else None
        prod = v.producer()
        if prod is None:
            return None
        if prod.op_type in _SHAPE_OPS:
            v = prod.inputs[0]
            continue
        if prod.op_type == "Where" and all(is_constant(b) for b in prod.inputs[1:]):
            a, b = (const_array(x) for x in prod.inputs[1:])
            if a.size != 1 or b.size != 1:
                return "finite" if np.all(np.isfinite(a)) and np.all(np.isfinite(b)) else None
            a, b = float(a.reshape(())), float(b.reshape(()))
            if np.isfinite(a) and np.isfinite(b):
                return "finite"
            if v is mask and {a, b} == {0.0, float("-inf")}:
                return "neg_inf"
        return None
    return None


def _remove_guard(graph: Graph, where: ir.Node) -> None:
    isnan = where.inputs[0].producer()
    graph.substitute(where.outputs[0], where.inputs[2])
    graph.erase(where)
    graph.erase(isnan)


def _rewrite_guard(graph: Graph, where: ir.Node, shared: dict) -> None:
    isnan = where.inputs[0].producer()
    p = where.inputs[2]
    soft = p.producer()
    _, mask = split_scores(soft.inputs[0])
    finite_mask, row_valid = _finite_mask(graph, mask, shared)
    add = soft.inputs[0].producer()     # only this site's Add: other layers keep theirs until folded
    add.replace_input_with(1 if add.inputs[1] is mask else 0, finite_mask)
    out = where.outputs[0]
    users = out.uses()
    mm = users[0].node if len(users) == 1 and not out.is_graph_output() else None
    if mm is not None and mm.op_type == "MatMul" and users[0].idx == 0 and not mm.outputs[0].is_graph_output():
        graph.substitute(out, p)
        y = mm.outputs[0]
        mul = graph.new_node("Mul", [y, row_valid], name=f"{mm.name}_rows_kept", serves=mm.name)
        graph.insert_after(mm, mul)
        mul.outputs[0].shape, mul.outputs[0].dtype = y.shape, y.dtype
        for use in list(y.uses()):
            if use.node is not mul:
                use.node.replace_input_with(use.idx, mul.outputs[0])
    else:
        mul = graph.new_node("Mul", [p, row_valid], name=f"{soft.name}_rows_kept", serves=soft.name)
        graph.insert_after(soft, mul)
        mul.outputs[0].shape, mul.outputs[0].dtype = p.shape, p.dtype
        graph.substitute(out, mul.outputs[0])
    graph.erase(where)
    graph.erase(isnan)


def _finite_mask(graph: Graph, mask: ir.Value, shared: dict) -> tuple[ir.Value, ir.Value]:
    """``Where(c, 0, min)`` and the row-kept factor ``ReduceMax(Where(c, 1, 0), -1)``, once per mask."""
    m = mask.producer()
    key = id(m)
    if key in shared:
        return shared[key]
    cond = m.inputs[0]
    a = float(const_array(m.inputs[1]).reshape(()))
    dtype = const_array(m.inputs[1]).dtype
    lowest = np.finfo(dtype).min
    keep_first = a == 0.0
    fill = [graph.add_initializer(f"{m.name}_zero", np.zeros((), dtype)),
            graph.add_initializer(f"{m.name}_lowest", np.array(lowest, dtype))]
    branches = fill if keep_first else fill[::-1]
    one, zero = graph.add_initializer(f"{m.name}_one", np.ones((), dtype)), fill[0]
    finite = graph.new_node("Where", [cond, *branches], name=f"{m.name}_finite", serves=m.name)
    keep = graph.new_node("Where", [cond, one, zero] if keep_first else [cond, zero, one],
                          name=f"{m.name}_keep", serves=m.name)
    if graph.opset >= 18:
        axes = graph.add_initializer(f"{m.name}_last_axis", np.array([-1], np.int64))
        rows = graph.new_node("ReduceMax", [keep.outputs[0], axes], {"keepdims": 1}, name=f"{m.name}_rows", serves=m.name)
    else:
        rows = graph.new_node("ReduceMax", [keep.outputs[0]], {"axes": [-1], "keepdims": 1},
                              name=f"{m.name}_rows", serves=m.name)
    graph.insert_after(m, [finite, keep, rows])
    for node in (finite, keep):
        node.outputs[0].shape, node.outputs[0].dtype = mask.shape, mask.dtype
    rows.outputs[0].dtype = mask.dtype
    if mask.shape is not None:
        rows.outputs[0].shape = ir.Shape([*list(mask.shape.dims)[:-1], 1])
    shared[key] = (finite.outputs[0], rows.outputs[0])
    return shared[key]
