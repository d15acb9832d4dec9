"""Dynamic INT8 for MatMul/Gemm with constant weights. Preserves outputs up to INT8 rounding.

``y = x W`` becomes ``(q(x) - zx) (Wq) * (sx * sw)`` where ``q(x), sx, zx`` come from
``DynamicQuantizeLinear`` at run time (asymmetric uint8 over the whole tensor) and ``Wq, sw`` are
INT8, symmetric, per output column (finer than per-tensor, at no run-time cost because the
column scales multiply the INT32 result). The node pattern is
``DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul(sx * sw)``, which onnxruntime fuses into
``DynamicQuantizeMatMul``; one DynamicQuantizeLinear is shared by every layer reading the same
input (e.g. the Q, K and V projections). Conv layers with this choice keep float weights and are
reported; onnxruntime's ConvInteger is slower than float Conv on x86.

Weight format (:func:`dynamic_weight_format`): where the backend says u8*s8 products saturate
(``gemm_weight_dtype='uint8'``: x86 without VNNI, whose VPMADDUBSW adds two u8*s8 products in
int16), the weights are INT8 in 7 bits (-63..63): 2 * 255 * 63 < 2^15, so the sums are exact and
onnxruntime runs its u8*s8 kernel, about twice the throughput of the u8*u8 one on AVX2.
Per-channel scales win back more than the lost bit (measured on MiniLM: benchmarks/QUANT_NOTES.md).
"""
from __future__ import annotations

import numpy as np
import onnx_ir as ir

from ..contract import QDQStyle
from ..errors import UnsupportedError
from ..ir import Graph, const_array
from ..ir.weights import trans_b
from ..contract import PrecisionPlan
from ..quant.qparams import quantize, weight_qparams
from ..quant.weights import stored_weight

__all__ = ["quantize_dynamic_layers", "dynamic_weight_format"]


def quantize_dynamic_layers(graph: Graph, layers: list[ir.Node], plan: PrecisionPlan, style: QDQStyle,
                            weight_format: tuple[str, int] | None = None) -> None:
    """Rewrite ``layers`` in place; ``weight_format`` (dtype, bits) overrides :func:`dynamic_weight_format`."""
    if not style.allow_dynamic:
        raise UnsupportedError("dynamic quantization is not supported by this backend",
                               where=f"layer '{layers[0].name}'", hint="use int8 (static) for this target")
    shared: dict[int, tuple[ir.Value, ir.Value, ir.Value]] = {}
    skipped = graph.meta.setdefault("dynamic_skipped", {})
    for node in layers:
        if node.op_type == "MatMul" and const_array(node.inputs[1]).ndim == 2:
            w = const_array(node.inputs[1]).astype(np.float32)
        elif node.op_type == "Gemm" and _plain_gemm(node):
            b = const_array(node.inputs[1]).astype(np.float32)
            w = b.T if trans_b(node) else b
        else:
            skipped[node.name] = "dynamic INT8 applies to MatMul/Gemm with a 2-D constant weight"
            continue
        _rewrite(graph, node, w, plan, shared, *(weight_format or dynamic_weight_format(style)))


def dynamic_weight_format(style: QDQStyle) -> tuple[str, int]:
    """(stored dtype, bits) of dynamic-INT8 weights for this backend style."""
    if style.gemm_weight_dtype == "uint8":
        return "int8", 7
    return style.gemm_weight_dtype, 8


def _plain_gemm(node: ir.Node) -> bool:
    for k in ("alpha", "beta"):
        a = node.attributes.get(k)
        if a is not None and a.as_float() != 1.0:
            return False
    t = node.attributes.get("transA")
    return t is None or t.as_int() == 0


def _rewrite(graph: Graph, node: ir.Node, w: np.ndarray, plan: PrecisionPlan, shared: dict, wdtype: str,
             bits: int) -> None:
    x = node.inputs[0]
    axis = 1 if plan.quant.per_channel else None
    qp = weight_qparams(w, bits=bits, axis=axis, symmetric=True, method="minmax")
    sw = np.asarray(qp.scale, dtype=np.float32).reshape(-1 if axis is not None else ())
    wq, wzp = stored_weight(quantize(w, qp), sw.shape, wdtype)
    new_nodes = []
    if id(x) not in shared:
        dql = graph.new_node("DynamicQuantizeLinear", [x], name=f"{x.name}_DynamicQuantizeLinear", num_outputs=3,
                             serves=node.name)
        types = (ir.DataType.UINT8, ir.DataType.FLOAT, ir.DataType.UINT8)
        for out, t in zip(dql.outputs, types):
            out.type = ir.TensorType(t)
        dql.outputs[0].shape = x.shape
        new_nodes.append(dql)
        shared[id(x)] = tuple(dql.outputs)
    xq, xs, xz = shared[id(x)]
    wi = graph.add_initializer(f"{node.inputs[1].name}_quantized", wq)
    wz = graph.add_initializer(f"{node.inputs[1].name}_zero_point", wzp)
    si = graph.add_initializer(f"{node.inputs[1].name}_scale", sw)
    mm = graph.new_node("MatMulInteger", [xq, wi, xz, wz], name=f"{node.name}_MatMulInteger", serves=node.name)
    mm.outputs[0].type = ir.TensorType(ir.DataType.INT32)
    cast = graph.new_node("Cast", [mm.outputs[0]], {"to": ir.DataType.FLOAT}, name=f"{node.name}_Cast", serves=node.name)
    scales = graph.new_node("Mul", [xs, si], name=f"{node.name}_scales_Mul", serves=node.name)
    out = graph.new_node("Mul", [cast.outputs[0], scales.outputs[0]], name=f"{node.name}_Mul", serves=node.name)
    for n in (cast, scales, out):
        n.outputs[0].type = ir.TensorType(ir.DataType.FLOAT)
    out.outputs[0].shape = node.outputs[0].shape
    new_nodes += [mm, cast, scales, out]
    result = out.outputs[0]
    if node.op_type == "Gemm" and len(node.inputs) > 2 and node.inputs[2] is not None:
        add = graph.new_node("Add", [result, node.inputs[2]], name=f"{node.name}_bias_Add", serves=node.name)
        add.outputs[0].type, add.outputs[0].shape = ir.TensorType(ir.DataType.FLOAT), node.outputs[0].shape
        new_nodes.append(add)
        result = add.outputs[0]
    graph.insert_before(node, new_nodes)
    graph.substitute(node.outputs[0], result)
    graph.erase(node)
