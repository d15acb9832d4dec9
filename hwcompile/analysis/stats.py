"""Static model statistics: op histogram, parameters and FLOPs per layer, I/O shapes.

FLOPs count a multiply-add as 2: Conv ``2 * N * K * (C/g) * prod(kernel) * prod(out spatial)``;
ConvTranspose the same with input spatial; Gemm/MatMul ``2 * prod(batch dims) * M * K * N``.
Parameters are the elements of a node's constant inputs (shared initializers counted once).

Shapes come from a fresh ONNX shape inference of the graph as it is now (the shapes stored on the
graph's values can be stale after a pass changed weights or folded constants; e.g. after
``cleanup`` folds a computed Pad the stored spatial dims stay symbolic). A symbolic leading (batch)
dim counts as 1 (FLOPs per sample); a layer with any other unknown dim is not counted and is listed
in ``model_summary(...)["flops_unknown"]``.
"""
from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from ..ir import Graph, is_constant, to_proto

__all__ = ["layer_stats", "model_summary", "inferred_shapes"]

Dims = list  # list[int | None]: None = unknown / symbolic


def inferred_shapes(graph: Graph) -> dict[str, Dims]:
    """Value name -> dims from ONNX shape inference of the current graph (stored value_info dropped);
    symbolic dims are None. Falls back to the stored shapes of values inference could not type."""
    shapes: dict[str, Dims] = {}
    for node in graph.main:
        for v in list(node.inputs) + list(node.outputs):
            if v is not None and v.shape is not None:
                shapes[v.name] = [d if isinstance(d, int) else None for d in v.shape.dims]
    try:
        proto = to_proto(graph)
        del proto.graph.value_info[:]
        inferred = onnx.shape_inference.infer_shapes(proto, data_prop=True)
    except Exception:   # noqa: BLE001 - e.g. a model over 2 GB or an op inference rejects: keep stored shapes
        return shapes
    g = inferred.graph
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        t = vi.type.tensor_type if vi.type.HasField("tensor_type") else None
        if t is not None and t.HasField("shape"):
            shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    for init in g.initializer:
        shapes[init.name] = list(init.dims)
    return shapes


def _dims(v: ir.Value | None, shapes: dict[str, Dims]) -> list[int] | None:
    """Known dims of ``v`` (a None leading dim = batch counts as 1); None if any other dim is unknown."""
    if v is None:
        return None
    if v.const_value is not None:
        return [int(d) for d in v.const_value.shape.dims]
    dims = shapes.get(v.name)
    if dims is None:
        return None
    dims = [1 if (i == 0 and d is None) else d for i, d in enumerate(dims)]
    return None if any(d is None for d in dims) else dims


def _flops(node: ir.Node, shapes: dict[str, Dims]) -> int | None:
    """FLOPs of a Conv/ConvTranspose/Gemm/MatMul (0 for other ops), None when a needed dim is unknown."""
    op = node.op_type
    if op in ("Conv", "ConvTranspose"):
        w, out, x = (_dims(node.inputs[1], shapes), _dims(node.outputs[0], shapes), _dims(node.inputs[0], shapes))
        if w is None or out is None or x is None or len(out) < 2:
            return None
        spatial = out[2:] if op == "Conv" else x[2:]
        per_out = int(np.prod(w[1:])) if op == "Conv" else int(np.prod(w[2:])) * w[1]
        ch = out[1] if op == "Conv" else w[0]
        return 2 * out[0] * ch * per_out * int(np.prod(spatial))
    if op in ("Gemm", "MatMul"):
        a, out = _dims(node.inputs[0], shapes), _dims(node.outputs[0], shapes)
        if a is None or out is None or not a:
            return None
        k = a[-1] if not (op == "Gemm" and _attr_int(node, "transA")) else a[0]
        return 2 * int(np.prod(out)) * k
    return 0


def _attr_int(node: ir.Node, name: str, default: int = 0) -> int:
    a = node.attributes.get(name)
    return a.as_int() if a is not None else default


def layer_stats(graph: Graph) -> dict[str, dict[str, Any]]:
    """Per node (layer id): op, params, flops (0 when unknown, with ``flops_known`` False)."""
    shapes = inferred_shapes(graph)
    out: dict[str, dict[str, Any]] = {}
    for node in graph.main:
        params = sum(int(np.prod(v.const_value.shape.dims)) for v in node.inputs if is_constant(v))
        f = _flops(node, shapes)
        out[node.name] = {"op": node.op_type, "params": params, "flops": f or 0, "flops_known": f is not None}
    return out


def model_summary(graph: Graph) -> dict[str, Any]:
    stats = layer_stats(graph)
    hist = Counter(s["op"] for s in stats.values())
    params = sum(int(np.prod(v.const_value.shape.dims)) for v in graph.main.initializers.values()
                 if v.const_value is not None)
    io = lambda vs: [{"name": v.name, "shape": [d if isinstance(d, int) else str(d) for d in v.shape.dims]
                      if v.shape is not None else None, "dtype": str(v.dtype) if v.dtype else None} for v in vs]
    return {
        "source": graph.source,
        "opset": graph.opset,
        "nodes": sum(hist.values()),
        "ops": dict(sorted(hist.items(), key=lambda kv: (-kv[1], kv[0]))),
        "params": params,
        "flops": sum(s["flops"] for s in stats.values()),
        "flops_unknown": sorted(k for k, s in stats.items() if not s["flops_known"]),
        "batchnorm": hist.get("BatchNormalization", 0),
        "inputs": io(graph.main.inputs),
        "outputs": io(graph.main.outputs),
        "control_flow": sorted({n.name for n in graph.main if n.op_type in ("If", "Loop", "Scan")}),
    }
