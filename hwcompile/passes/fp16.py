"""FP16 conversion of the layers the plan marks fp16. Preserves outputs to FP16 rounding.

A chosen layer gets FP16 weights and bias and runs in FP16 between a Cast to FP16 of its input
and a Cast back to FP32 of its output. A Cast(FP16) of a Cast(FP32) of an FP16 value is the
identity (FP16 -> FP32 is exact), so such pairs between consecutive FP16 layers are removed and
the FP16 value flows directly; the graph's interface stays FP32.
"""
from __future__ import annotations

import numpy as np
import onnx_ir as ir

from ..ir import Graph, const_array, is_constant
from ..contract import PrecisionPlan
from .base import PassResult

__all__ = ["convert_fp16"]


def convert_fp16(graph: Graph, plan: PrecisionPlan) -> PassResult:
    chosen = [n for n in graph.layers() if plan.choice(n.name).weight == "fp16"]
    for node in chosen:
        for i in range(1, len(node.inputs)):
            v = node.inputs[i]
            if is_constant(v) and v.dtype == ir.DataType.FLOAT:
                half = graph.add_initializer(f"{v.name}_fp16", const_array(v).astype(np.float16))
                node.replace_input_with(i, half)
        x = node.inputs[0]
        to16 = graph.new_node("Cast", [x], {"to": ir.DataType.FLOAT16}, name=f"{node.name}_to_fp16", serves=node.name)
        to16.outputs[0].type, to16.outputs[0].shape = ir.TensorType(ir.DataType.FLOAT16), x.shape
        graph.insert_before(node, to16)
        node.replace_input_with(0, to16.outputs[0])
        out = node.outputs[0]
        to32 = graph.new_node("Cast", [out], {"to": ir.DataType.FLOAT}, name=f"{node.name}_to_fp32", serves=node.name)
        to32.outputs[0].type, to32.outputs[0].shape = ir.TensorType(ir.DataType.FLOAT), out.shape
        graph.insert_after(node, to32)
        graph.replace_all_uses(out, to32.outputs[0])
        to32.replace_input_with(0, out)  # replace_all_uses also rewired the cast itself
        out.type = ir.TensorType(ir.DataType.FLOAT16)
        if to32.outputs[0].is_graph_output():
            name = out.name
            out.name = graph.mint_name(name + "_fp16")
            to32.outputs[0].name = name
    removed = _remove_cast_pairs(graph)
    return PassResult(graph, bool(chosen), {"fp16_layers": len(chosen), "cast_pairs_removed": removed})


convert_fp16.name, convert_fp16.in_place = "convert_fp16", True


def _remove_cast_pairs(graph: Graph) -> int:
    removed = 0
    for node in list(graph.main):
        if node.op_type != "Cast" or node.attributes["to"].as_int() != ir.DataType.FLOAT16:
            continue
        src = node.inputs[0].producer()
        if src is None or src.op_type != "Cast" or src.inputs[0].dtype != ir.DataType.FLOAT16:
            continue
        graph.replace_all_uses(node.outputs[0], src.inputs[0])
        graph.erase(node)
        removed += 1
        if not src.outputs[0].uses() and not src.outputs[0].is_graph_output():
            graph.erase(src)
    return removed
