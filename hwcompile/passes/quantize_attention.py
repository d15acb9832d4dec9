"""Dynamic INT8 for the attention products Q K^T and P V. Changes numerics (8-bit activations).

Both inputs of an attention product are activations, so neither has a calibrated or constant
scale: each is quantized per tensor at run time (``DynamicQuantizeLinear``: uint8,
``s = (max(x, 0) - min(x, 0)) / 255``, zero point ``round(-min / s)``), multiplied in integers
(``MatMulInteger``, int32 accumulation, exact) and rescaled: ``Y = s_a s_b (A_q - z_a)(B_q - z_b)``.
onnxruntime fuses the dequantizing Cast/Mul into ``MatMulIntegerToFloat`` where it can.

Attention sites are found as ``fold_attention_mask`` finds them: ``Softmax(scores [+ mask])`` with
the scores from a MatMul (Q K^T); P V is the MatMul whose first input is the softmax probabilities
(through a NaN guard or its row factor). ``check_attention_matmul`` declines a MatMul with a
constant input (a weight GEMM, which ``int8dyn`` handles), non-float32 inputs, or one whose output
other nodes than the attention read. Whether this is faster or accurate enough is measured by the
caller, never assumed here.
"""
from __future__ import annotations

import onnx_ir as ir

from ..ir import Graph, is_constant
from .base import PassResult
from .fold_attention_mask import split_scores

__all__ = ["quantize_attention", "attention_matmuls", "check_attention_matmul"]


def attention_matmuls(graph: Graph) -> dict[str, list[ir.Node]]:
    """{"qk": [...], "pv": [...]}: the attention products (MatMuls of two activations) of every
    Softmax site."""
    qk, pv = [], []
    for soft in [n for n in graph.main if n.op_type == "Softmax" and n.domain in ("", "ai.onnx")]:
        scores, _ = split_scores(soft.inputs[0])
        if scores is None:
            continue
        prod = scores.producer()
        while prod is not None and prod.op_type != "MatMul":
            prod = next((i for i in prod.inputs if not is_constant(i)), None)
            prod = prod.producer() if prod is not None else None
        if prod is None or any(is_constant(i) for i in prod.inputs):
            continue            # a classifier's weight GEMM before a softmax is not attention
        qk.append(prod)
        pv.extend(m for m in _prob_consumers(soft.outputs[0]) if not any(is_constant(i) for i in m.inputs))
    return {"qk": qk, "pv": pv}


def _prob_consumers(p: ir.Value, depth: int = 3) -> list[ir.Node]:
    out = []
    for use in p.uses():
        node = use.node
        if node.op_type == "MatMul" and use.idx == 0:
            out.append(node)
        elif depth and node.op_type in ("Where", "Mul", "Cast"):
            out.extend(_prob_consumers(node.outputs[0], depth - 1))
    return out


def check_attention_matmul(node: ir.Node) -> str | None:
    """None if ``node`` (an attention product) can run in dynamic INT8, else the reason."""
    a, b = node.inputs[0], node.inputs[1]
    if is_constant(a) or is_constant(b):
        return "an input is a constant (a weight GEMM: int8dyn quantizes it)"
    if a.dtype != ir.DataType.FLOAT or b.dtype != ir.DataType.FLOAT:
        return "inputs are not float32"
    return None


def quantize_attention(graph: Graph, which: tuple[str, ...] = ("qk", "pv")) -> PassResult:
    """Rewrite the attention products named by ``which`` ("qk", "pv") into dynamic INT8."""
    sites = attention_matmuls(graph)
    done, declined = 0, {}
    for kind in which:
        for mm in sites[kind]:
            reason = check_attention_matmul(mm)
            if reason:
                declined[mm.name] = reason
                continue
            _rewrite(graph, mm)
            done += 1
    graph.meta.setdefault("attention_int8_declined", {}).update(declined)
    graph.meta.setdefault("attention_int8", []).extend(which if done else [])
    return PassResult(graph, done > 0, {"attention_matmuls_int8": done})


quantize_attention.name, quantize_attention.in_place = "quantize_attention", True


def _rewrite(graph: Graph, mm: ir.Node) -> None:
    new = []
    q = []
    for i, x in enumerate(mm.inputs[:2]):
        dq = graph.new_node("DynamicQuantizeLinear", [x], name=f"{mm.name}_quant{i}", num_outputs=3, serves=mm.name)
        new.append(dq)
        q.append(dq.outputs)
    mmi = graph.new_node("MatMulInteger", [q[0][0], q[1][0], q[0][2], q[1][2]], name=f"{mm.name}_int8",
                         serves=mm.name)
    cast = graph.new_node("Cast", [mmi.outputs[0]], {"to": ir.DataType.FLOAT}, name=f"{mm.name}_int32_to_float",
                          serves=mm.name)
    scale = graph.new_node("Mul", [q[0][1], q[1][1]], name=f"{mm.name}_scale", serves=mm.name)
    out = graph.new_node("Mul", [cast.outputs[0], scale.outputs[0]], name=f"{mm.name}_dequant", serves=mm.name)
    new += [mmi, cast, scale, out]
    graph.insert_before(mm, new)
    y = out.outputs[0]
    y.shape, y.dtype = mm.outputs[0].shape, ir.DataType.FLOAT
    graph.substitute(mm.outputs[0], y)
    graph.erase(mm)
