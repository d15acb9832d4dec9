"""Activations that must stay float under static INT8, each with the reason the report gives.

- **Additive attention masks.** Transformers turn an integer/bool mask input into a large
  negative bias (``(1 - m) * finfo.min``, ``-10000``, ``-inf``) added to the attention scores
  before Softmax. One linear 8-bit scale cannot hold both the sentinel and the scores (with a
  range of 3.4e38 every score rounds to 0), and the sentinel needs no precision. Recognized
  structurally: the tensors computed, through elementwise and shape ops only, from a non-float
  graph input, up to and including the Add that feeds a Softmax (through shape ops).
- **Non-finite activations.** A tensor that carried inf or NaN in calibration has no finite
  range; it stays float, and so does every op that reads or writes it in the INT8 region.
- **Sentinel magnitudes.** A tensor whose calibrated magnitude reaches ``SENTINEL`` (1e15) holds
  a sentinel constant, not a signal an 8-bit grid can resolve.
"""
from __future__ import annotations

import onnx_ir as ir

from ..ir import Graph, is_constant

__all__ = ["float_tensors", "mask_tensors", "SENTINEL"]

SENTINEL = 1e15
_ELEMENTWISE = frozenset({"Cast", "Sub", "Mul", "Add", "Div", "Neg", "Not", "Where", "Equal", "Less", "Greater",
                          "Unsqueeze", "Squeeze", "Reshape", "Expand", "Transpose", "Slice", "Gather", "Tile",
                          "ConstantOfShape", "Concat", "Identity", "Min", "Max", "Clip"})
_SHAPE_ONLY = frozenset({"Reshape", "Transpose", "Unsqueeze", "Squeeze", "Expand", "Identity", "Cast"})


def _derived_from_integer_input(graph: Graph) -> set[int]:
    """ids of values computed only from non-float graph inputs and constants (elementwise/shape ops)."""
    seeds = {id(v) for v in graph.main.inputs if v.dtype is not None and not v.dtype.is_floating_point()}
    derived = set(seeds)
    for node in graph.main:  # topological order
        if node.op_type not in _ELEMENTWISE:
            continue
        ins = [v for v in node.inputs if v is not None and not is_constant(v)]
        if ins and all(id(v) in derived for v in ins):
            derived.update(id(o) for o in node.outputs)
    return derived


def _feeds_softmax(graph: Graph, v: ir.Value, depth: int = 6) -> bool:
    for use in v.uses():
        n = use.node
        if n.op_type == "Softmax":
            return True
        if n.op_type in _SHAPE_ONLY and depth > 0 and _feeds_softmax(graph, n.outputs[0], depth - 1):
            return True
    return False


def mask_tensors(graph: Graph) -> dict[str, str]:
    """{tensor name: reason} for the float tensors of additive attention-mask paths."""
    derived = _derived_from_integer_input(graph)
    out: dict[str, str] = {}
    for node in graph.main:
        if node.op_type not in ("Add", "Sub") or not _feeds_softmax(graph, node.outputs[0]):
            continue
        mask_side = [v for v in node.inputs if v is not None and id(v) in derived]
        if not mask_side:
            continue
        out[node.outputs[0].name] = "additive attention mask (scores + mask before Softmax)"
        stack = list(mask_side)
        while stack:  # the mask's own float chain back to the integer input
            v = stack.pop()
            if v.name in out or v.dtype != ir.DataType.FLOAT:
                continue
            out[v.name] = "additive attention mask"
            p = v.producer()
            if p is not None:
                stack.extend(i for i in p.inputs if i is not None and id(i) in derived)
    return out


def float_tensors(graph: Graph, stats: dict, names: list[str]) -> dict[str, str]:
    """{tensor: reason} among ``names`` (tensors the INT8 region would quantize) that stay float.
    ``stats``: calibration statistics by tensor name (``TensorStats``)."""
    masks = mask_tensors(graph)
    out: dict[str, str] = {}
    for t in names:
        s = stats.get(t)
        if t in masks:
            out[t] = masks[t]
        elif s is not None and s.nonfinite:
            out[t] = f"{s.nonfinite} inf/NaN value(s) in calibration"
        elif s is not None and s.count and s.absmax >= SENTINEL:
            out[t] = f"sentinel magnitude {s.absmax:.3g} in calibration"
    return out
