"""Static model statistics: op histogram, parameters and FLOPs per layer, I/O shapes.

FLOPs count a multiply-add as 2: Conv ``2 * N * K * (C/g) * prod(kernel) * prod(out spatial)``;
ConvTranspose the same with input spatial; Gemm/MatMul ``2 * prod(batch dims) * M * K * N``.
Parameters are the elements of a node's constant inputs (shared initializers counted once).
"""
from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import onnx_ir as ir

from ..ir import Graph, is_constant

__all__ = ["layer_stats", "model_summary"]


def _dims(v: ir.Value | None) -> list[int] | None:
    if v is None or v.shape is None:
        return None
    dims = [d if isinstance(d, int) else 1 for d in v.shape.dims]  # symbolic (batch) dims count as 1
    return dims


def _flops(node: ir.Node) -> int:
    op = node.op_type
    try:
        if op in ("Conv", "ConvTranspose"):
            w, out, x = _dims(node.inputs[1]), _dims(node.outputs[0]), _dims(node.inputs[0])
            if w is None or out is None or x is None:
                return 0
            spatial = out[2:] if op == "Conv" else x[2:]
            per_out = int(np.prod(w[1:])) if op == "Conv" else int(np.prod(w[2:])) * w[1]
            ch = out[1] if op == "Conv" else w[0]
            return 2 * out[0] * ch * per_out * int(np.prod(spatial))
        if op in ("Gemm", "MatMul"):
            a, out = _dims(node.inputs[0]), _dims(node.outputs[0])
            if a is None or out is None:
                return 0
            k = a[-1] if not (op == "Gemm" and _attr_int(node, "transA")) else a[0]
            return 2 * int(np.prod(out)) * k
    except (TypeError, IndexError):
        return 0
    return 0


def _attr_int(node: ir.Node, name: str, default: int = 0) -> int:
    a = node.attributes.get(name)
    return a.as_int() if a is not None else default


def layer_stats(graph: Graph) -> dict[str, dict[str, Any]]:
    """Per node (layer id): op, params, flops."""
    out: dict[str, dict[str, Any]] = {}
    for node in graph.main:
        params = sum(int(np.prod(v.const_value.shape.dims)) for v in node.inputs if is_constant(v))
        out[node.name] = {"op": node.op_type, "params": params, "flops": _flops(node)}
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
        "batchnorm": hist.get("BatchNormalization", 0),
        "inputs": io(graph.main.inputs),
        "outputs": io(graph.main.outputs),
        "control_flow": sorted({n.name for n in graph.main if n.op_type in ("If", "Loop", "Scan")}),
    }
