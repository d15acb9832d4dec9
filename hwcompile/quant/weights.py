"""INT8 weights of one layer: scales on the op's output-channel axis, rounding compensation,
and the ``initializer -> DequantizeLinear -> op`` rewrite (plus an INT32 bias where the backend
wants the whole integer group, e.g. onnxruntime's QLinearConv).

Output-channel axes: Conv ``W[K, C/g, kh, kw]`` axis 0; ConvTranspose ``W[C, K/g, ...]`` axis 1;
Gemm axis 0 with transB=1 (``W[N, K]``), else 1; MatMul ``W[K, N]`` axis 1 (the last).
Compensation: ``bias`` adds ``-(Wq - W) E[x]`` to the bias so each output's expectation is
unchanged; ``gptq`` rounds columns in order with error feedback through the input Hessian
(Frantar et al. 2022), then applies bias correction for what remains.
"""
from __future__ import annotations

import numpy as np
import onnx_ir as ir

from ..contract import QDQStyle
from ..ir import Graph, const_array
from ..contract import QuantSettings
from ..errors import ConfigError, DataError
from ..ir.weights import output_axis, weight_layout
from .compensate import bias_correction, gptq_quantize
from .qparams import QParams, dequantize, quantize, weight_qparams

__all__ = ["output_axis", "reduction_matrix", "quantize_layer_weight", "weight_error_bias_delta", "stored_weight"]


def _group(node: ir.Node) -> int:
    g = node.attributes.get("group")
    return g.as_int() if g is not None else 1


def reduction_matrix(node: ir.Node, w: np.ndarray) -> np.ndarray:
    """W as [out, in] rows in the order the layer's inputs are laid out (Conv: (C, kh, kw))."""
    axis = output_axis(node, w.ndim)
    if node.op_type == "Conv":
        return w.reshape(w.shape[0], -1)
    return np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)


def _from_rows(node: ir.Node, rows: np.ndarray, shape: tuple) -> np.ndarray:
    axis = output_axis(node, len(shape))
    if node.op_type == "Conv":
        return rows.reshape(shape)
    moved = list(shape)
    moved.insert(0, moved.pop(axis))
    return np.moveaxis(rows.reshape(moved), 0, axis)


def weight_error_bias_delta(node: ir.Node, w: np.ndarray, wq: np.ndarray, x_mean: np.ndarray) -> np.ndarray | None:
    """Per output channel ``-(Wq - W) @ E[x]`` (see ``compensate.bias_correction``), or None when
    the layer's layout has no bias correction or the input mean does not match it."""
    layout = weight_layout(node, w.ndim)
    if layout is None:
        return None
    try:
        return bias_correction(w, wq, x_mean, layout, _group(node))
    except (DataError, ConfigError):
        return None


def quantize_layer_weight(graph: Graph, node: ir.Node, settings: QuantSettings, style: QDQStyle,
                          x_scale: np.ndarray | None, cal) -> QParams:
    w_val = node.inputs[1]
    w = const_array(w_val).astype(np.float32)
    axis = output_axis(node, w.ndim) if settings.per_channel else None
    conv = node.op_type in ("Conv", "ConvTranspose")
    bits = 7 if (style.reduce_range_conv if conv else False) else 8
    qp = weight_qparams(w, bits=bits, axis=axis, symmetric=True, method="minmax")
    qmax = 2 ** (bits - 1) - 1
    if settings.compensation == "gptq" and node.name in getattr(cal, "hessians", {}):
        rows = reduction_matrix(node, w)
        row_scale = np.broadcast_to(np.asarray(qp.scale, dtype=np.float64).reshape(-1, 1), (rows.shape[0], 1))

        keep = rows != 0  # pruned weights stay exactly zero; GPTQ spreads their error to the kept ones

        def rtn(col: np.ndarray, j: int) -> np.ndarray:
            s = row_scale[:, 0]
            return np.clip(np.round(col / s), -qmax, qmax) * s * keep[:, j]

        wq_rows = gptq_quantize(rows.astype(np.float64), cal.hessians[node.name], rtn)
        w_target = _from_rows(node, wq_rows, w.shape).astype(np.float32)
        q = quantize(w_target, qp)
    else:
        q = quantize(w, qp)
    deq = dequantize(q, qp)
    bias_delta = None
    if settings.compensation in ("bias", "gptq") and node.name in getattr(cal, "channel_means", {}):
        bias_delta = weight_error_bias_delta(node, w, deq, cal.channel_means[node.name])
    wdt = style.weight_dtype if conv else style.gemm_weight_dtype
    _rewrite_weight(graph, node, q.astype(np.int8), qp, axis, wdt)
    _rewrite_bias(graph, node, bias_delta, qp, x_scale, style)
    return qp


def stored_weight(q: np.ndarray, shape: tuple, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric INT8 values as stored: int8 with zero point 0, or uint8 offset by 128 with zero
    point 128 (the same real values; x86 without VNNI saturates u8*s8 pairs in int16, u8*u8 does not)."""
    if dtype == "uint8":
        return (q.astype(np.int16) + 128).astype(np.uint8), np.full(shape, 128, dtype=np.uint8)
    return q.astype(np.int8), np.zeros(shape, dtype=np.int8)


def _rewrite_weight(graph: Graph, node: ir.Node, q: np.ndarray, qp: QParams, axis: int | None,
                    dtype: str = "int8") -> None:
    w_val = node.inputs[1]
    scale = np.asarray(qp.scale, dtype=np.float32).reshape(-1 if axis is not None else ())
    stored, zp = stored_weight(q, scale.shape, dtype)
    qi = graph.add_initializer(f"{w_val.name}_quantized", stored)
    si = graph.add_initializer(f"{w_val.name}_scale", scale)
    zi = graph.add_initializer(f"{w_val.name}_zero_point", zp)
    attrs = {"axis": axis} if axis is not None else {}
    dq = graph.new_node("DequantizeLinear", [qi, si, zi], attrs, name=f"{w_val.name}_DequantizeLinear", serves=node.name)
    dq.outputs[0].type, dq.outputs[0].shape = ir.TensorType(ir.DataType.FLOAT), w_val.shape
    graph.insert_before(node, dq)
    node.replace_input_with(1, dq.outputs[0])


def _rewrite_bias(graph: Graph, node: ir.Node, delta: np.ndarray | None, qp: QParams, x_scale, style: QDQStyle) -> None:
    has_bias = len(node.inputs) > 2 and node.inputs[2] is not None
    if node.op_type not in ("Conv", "Gemm") and delta is not None:
        if node.op_type == "MatMul":
            _matmul_bias_add(graph, node, delta)
        return
    if not has_bias and delta is None:
        return
    n_out = np.asarray(qp.scale).size if np.asarray(qp.scale).ndim else None
    b = const_array(node.inputs[2]).astype(np.float64).reshape(-1) if has_bias else 0.0
    if delta is not None:
        b = b + delta
    b = np.asarray(b, dtype=np.float64)
    if n_out and b.size == 1:  # a scalar (or one-element) bias broadcast to every output channel
        b = np.full(n_out, b.reshape(-1)[0])
    if style.quantize_bias and x_scale is not None and (node.op_type == "Conv" or b.ndim == 1):
        s = (np.float64(x_scale) * np.asarray(qp.scale, dtype=np.float64)).reshape(-1)
        s = np.broadcast_to(s, b.shape).astype(np.float32)
        qb = np.clip(np.round(b / s), -(2**31), 2**31 - 1).astype(np.int32)
        qi = graph.add_initializer(f"{node.name}_bias_quantized", qb)
        si = graph.add_initializer(f"{node.name}_bias_scale", s)
        zi = graph.add_initializer(f"{node.name}_bias_zero_point", np.zeros(s.shape, dtype=np.int32))
        dq = graph.new_node("DequantizeLinear", [qi, si, zi], {"axis": 0}, name=f"{node.name}_bias_DequantizeLinear",
                            serves=node.name)
        dq.outputs[0].type = ir.TensorType(ir.DataType.FLOAT)
        graph.insert_before(node, dq)
        new = dq.outputs[0]
    else:
        new = graph.add_initializer(f"{node.name}_bias", b.astype(np.float32))
    if not has_bias:
        node.resize_inputs(3)
    node.replace_input_with(2, new)


def _matmul_bias_add(graph: Graph, node: ir.Node, delta: np.ndarray) -> None:
    """MatMul has no bias input: fold the correction into a following constant-bias Add if any."""
    users = graph.consumers(node.outputs[0])
    if len(users) != 1 or users[0].op_type != "Add":
        return
    add = users[0]
    other = 1 if add.inputs[0] is node.outputs[0] else 0
    v = add.inputs[other]
    if v is None or v.const_value is None or graph.uses_count(v) != 1:
        return
    b = const_array(v)
    if b.shape[-1:] != delta.shape:
        return
    graph.replace_initializer(v, (b + delta).astype(b.dtype))
