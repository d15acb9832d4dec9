"""INT4 block-wise weight-only quantization of MatMul ``W[K, N]``. Activations stay float.

Each column of W is split along K into blocks of ``int4_block_size``; each block gets its own
scale (symmetric, levels -8..7 stored with zero point 8, i.e. ``w ~ (q - 8) * s`` with q in 0..15).
K is zero-padded up to a whole block. The scale of a block minimises its squared rounding error
(weighted by the input Hessian's diagonal when calibration gives one) over ``s = r * amax / 8``
for a grid of r in [0.6, 8/7] and, where the backend accepts negative scales (MatMulNBits), both
signs: r = 8/7 is plain absmax/7; a negative s = -amax/8 maps the largest-magnitude weight onto -8
exactly (onnxruntime's own rule), using the whole -8..7 range. With ``compensation='gptq'`` the
rounding then runs column by column through the input Hessian (GPTQ) with the same block scales.

Lowering: backends that accept com.microsoft ops get ``MatMulNBits`` (onnxruntime's INT4 GEMM:
B packed as uint8 [N, blocks, block/2], low nibble first; scales [N, blocks]); others get
``DequantizeLinear`` with an INT4 initializer and ``block_size`` (opset 21), the form TensorRT
reads as weight-only INT4.
"""
from __future__ import annotations

import numpy as np
import onnx_ir as ir

from ..contract import QDQStyle
from ..data import Dataset
from ..errors import UnsupportedError
from ..ir import Graph, const_array
from ..contract import PrecisionPlan

__all__ = ["quantize_int4_layers", "int4_blockwise", "int4_block_scales", "pack_matmulnbits"]

#: Candidate ratios r of ``s = r * amax / 8`` searched per block (8/7: absmax/7, no clipping).
SCALE_RATIOS = np.concatenate([np.linspace(0.6, 1.0, 17), [8.0 / 7.0]])


def int4_block_scales(blocks: np.ndarray, weight: np.ndarray | None = None, negative: bool = True) -> np.ndarray:
    """Per-block scales [N, B] of ``blocks`` [N, B, block] minimising sum(weight * (w - q s)^2),
    q = clip(round(w / s), -8, 7), over ``s = +-r * amax / 8`` for r in SCALE_RATIOS (+ only
    unless ``negative``). ``weight`` [block-broadcastable] defaults to 1. All-zero blocks get 1."""
    amax = np.abs(blocks).max(axis=2)
    safe = np.where(amax > 0, amax, 1.0)
    wgt = np.ones(blocks.shape[1:], dtype=np.float64) if weight is None else weight
    best = np.full(amax.shape, np.inf)
    scales = safe / 7.0
    signs = (1.0, -1.0) if negative else (1.0,)
    for sign in signs:
        for r in SCALE_RATIOS:
            s = sign * r * safe / 8.0
            q = np.clip(np.round(blocks / s[..., None]), -8, 7)
            err = np.sum(wgt * (blocks - q * s[..., None]) ** 2, axis=2)
            better = err < best
            best = np.where(better, err, best)
            scales = np.where(better, s, scales)
    return np.where(amax > 0, scales, 1.0)


def int4_blockwise(w: np.ndarray, block: int, hessian: np.ndarray | None = None,
                   negative_scales: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """W[K, N] -> (q uint8 [N, blocks*block] in 0..15, scales float32 [N, blocks])."""
    k, n = w.shape
    blocks = -(-k // block)
    rows = np.zeros((n, blocks * block), dtype=np.float64)
    rows[:, :k] = w.T
    diag = None
    if hessian is not None:
        diag = np.ones(blocks * block)
        diag[:k] = np.maximum(np.diag(hessian), 0) + 1e-12
        diag = diag.reshape(blocks, block)
    scales = int4_block_scales(rows.reshape(n, blocks, block), diag, negative_scales)
    col_scale = np.repeat(scales, block, axis=1)  # [N, blocks*block]
    if hessian is not None:
        from ..quant.compensate import gptq_quantize

        h = np.zeros((blocks * block,) * 2)
        h[:k, :k] = hessian
        h[np.arange(k, blocks * block), np.arange(k, blocks * block)] = 1.0

        keep = rows != 0  # pruned (and padded) weights stay exactly zero

        def rtn(col: np.ndarray, j: int) -> np.ndarray:
            s = col_scale[:, j]
            return np.clip(np.round(col / s), -8, 7) * s * keep[:, j]

        rows = gptq_quantize(rows, h, rtn)
    q = np.clip(np.round(rows / col_scale), -8, 7) + 8
    return q.astype(np.uint8), scales.astype(np.float32)


def pack_matmulnbits(q: np.ndarray, block: int) -> np.ndarray:
    """uint8 [N, blocks*block] of 4-bit values -> [N, blocks, block/2], low nibble first."""
    n, kp = q.shape
    pairs = q.reshape(n, kp // 2, 2)
    packed = (pairs[:, :, 0] | (pairs[:, :, 1] << 4)).astype(np.uint8)
    return packed.reshape(n, kp // block, block // 2)


def quantize_int4_layers(graph: Graph, layers: list[ir.Node], plan: PrecisionPlan, style: QDQStyle,
                         calib: Dataset | None, cache: dict) -> None:
    block = plan.quant.int4_block_size
    skipped = graph.meta.setdefault("int4_skipped", {})
    hessians = {}
    if plan.quant.compensation == "gptq" and calib is not None:
        from ..quant.calibration import calibrate

        hessians = calibrate(graph, calib, [], layers, plan.quant, cache=cache).hessians
    for node in layers:
        w_val = node.inputs[1]
        if node.op_type != "MatMul" or const_array(w_val).ndim != 2:
            skipped[node.name] = "INT4 weight-only applies to MatMul with a 2-D constant weight"
            continue
        w = const_array(w_val).astype(np.float32)
        q, scales = int4_blockwise(w, block, hessians.get(node.name), negative_scales=style.allow_contrib_ops)
        if style.allow_contrib_ops:
            _matmulnbits(graph, node, w.shape, q, scales, block)
        else:
            _qdq_int4(graph, node, w.shape, q, scales, block)


def _matmulnbits(graph: Graph, node: ir.Node, shape, q, scales, block) -> None:
    k, n = shape
    b = graph.add_initializer(f"{node.inputs[1].name}_int4", pack_matmulnbits(q, block))
    s = graph.add_initializer(f"{node.inputs[1].name}_scales", scales.reshape(-1))
    mm = graph.new_node("MatMulNBits", [node.inputs[0], b, s],
                        {"K": int(k), "N": int(n), "bits": 4, "block_size": int(block), "accuracy_level": 0},
                        name=f"{node.name}_MatMulNBits", serves=node.name, domain="com.microsoft")
    _swap(graph, node, mm)
    graph.model.opset_imports.setdefault("com.microsoft", 1)
    graph.main.opset_imports.setdefault("com.microsoft", 1)


def _qdq_int4(graph: Graph, node: ir.Node, shape, q, scales, block) -> None:
    if graph.opset < 21:
        raise UnsupportedError(f"block-wise INT4 Q/DQ needs opset >= 21, the model is at {graph.opset}",
                               where=f"layer '{node.name}'", hint="re-export at opset 21 or use int8 for this layer")
    k, n = shape
    signed = (q.astype(np.int16) - 8).T[:k]  # [K, N] in -8..7
    qi = graph.add_initializer(f"{node.inputs[1].name}_int4", signed.astype(np.int8))
    qi.const_value = ir.tensor(signed.astype(np.int8), dtype=ir.DataType.INT4, name=qi.name)
    qi.type = ir.TensorType(ir.DataType.INT4)
    si = graph.add_initializer(f"{node.inputs[1].name}_scales", scales.T[: -(-k // block)].astype(np.float32))
    dq = graph.new_node("DequantizeLinear", [qi, si], {"axis": 0, "block_size": int(block)},
                        name=f"{node.inputs[1].name}_DequantizeLinear", serves=node.name)
    dq.outputs[0].type = ir.TensorType(ir.DataType.FLOAT)
    graph.insert_before(node, dq)
    node.replace_input_with(1, dq.outputs[0])


def _swap(graph: Graph, old: ir.Node, new: ir.Node) -> None:
    new.outputs[0].type, new.outputs[0].shape = old.outputs[0].type, old.outputs[0].shape
    graph.insert_before(old, new)
    graph.substitute(old.outputs[0], new.outputs[0])
    graph.erase(old)
