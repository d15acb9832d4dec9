"""Constant folding: nodes whose inputs are all constant are evaluated once. Preserves numerics.

This is the one pass that evaluates (rewrites elsewhere only restructure). A node is folded when
every input is an initializer, it is deterministic, has no subgraph, and is not a Q/DQ node (those
stay so backends see explicit quantization). ``Shape``/``Size`` of a value with a fully static
shape fold too, which resolves the shape arithmetic a PyTorch export leaves (e.g. the
Shape -> Gather -> Concat -> Pad chains). Folding never makes a large constant out of small ones
(``ConstantOfShape``, ``Expand``, ``Tile``): outputs larger than ``max_new_elements`` and than
their inputs stay as nodes. Evaluation uses onnx's reference implementation, node by node.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnx.reference import ReferenceEvaluator

from ..ir import Graph, const_array, is_constant
from .base import PassResult

__all__ = ["fold_constants", "FOLD_SKIP_OPS"]

FOLD_SKIP_OPS = frozenset({
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "RandomNormal", "RandomUniform",
    "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli", "If", "Loop", "Scan",
    "Constant", "Identity",
})
MAX_NEW_ELEMENTS = 1 << 20


def fold_constants(graph: Graph, *, max_new_elements: int = MAX_NEW_ELEMENTS) -> PassResult:
    folded = 0
    opset = graph.opset
    for node in list(graph.main):
        outputs = _fold_value(graph, node, opset, max_new_elements)
        if outputs is None:
            continue
        for old, arr in zip(node.outputs, outputs):
            name = old.name
            old.name = graph.mint_name(name + "__folded")
            new = graph.add_initializer(name, arr)
            graph.replace_all_uses(old, new)
        graph.erase(node)
        folded += 1
    return PassResult(graph, folded > 0, {"nodes_folded": folded})


fold_constants.name = "fold_constants"
fold_constants.in_place = True


def _fold_value(graph: Graph, node: ir.Node, opset: int, limit: int) -> list[np.ndarray] | None:
    if node.domain not in ("", "ai.onnx") or node.op_type in FOLD_SKIP_OPS:
        return None
    if any(o.is_graph_output() for o in node.outputs) or not any(o.uses() for o in node.outputs):
        return None
    if any(a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for a in node.attributes.values()):
        return None
    if node.op_type in ("Shape", "Size"):
        return _fold_shape(node)
    if not node.inputs or not all(v is None or is_constant(v) for v in node.inputs):
        return None
    arrays = [None if v is None else const_array(v) for v in node.inputs]
    in_elems = sum(a.size for a in arrays if a is not None)
    proto = ir.serde.serialize_node(node)
    names = [f"i{i}" if v is not None else "" for i, v in enumerate(node.inputs)]
    outs = [f"o{i}" for i in range(len(node.outputs))]
    proto.ClearField("input")
    proto.input.extend(names)
    proto.ClearField("output")
    proto.output.extend(outs)
    try:
        results = ReferenceEvaluator(proto, opsets={"": opset}).run(
            None, {n: a for n, a in zip(names, arrays) if n})
    except Exception:  # an op the reference cannot evaluate stays a node
        return None
    results = [np.asarray(r) for r in results]
    if any(r.size > limit and r.size > 2 * in_elems for r in results):
        return None
    return results


def _fold_shape(node: ir.Node) -> list[np.ndarray] | None:
    shape = node.inputs[0].shape if node.inputs[0] is not None else None
    if shape is None or not all(isinstance(d, int) for d in shape.dims):
        return None
    dims = np.array(shape.dims, dtype=np.int64)
    if node.op_type == "Size":
        return [np.array(int(np.prod(dims)), dtype=np.int64)]
    start = node.attributes.get("start")
    end = node.attributes.get("end")
    s = start.as_int() if start is not None else 0
    e = end.as_int() if end is not None else len(dims)
    return [dims[s:e]]
