"""Where a layer's weight keeps its output channels and its reduction (the one place these rules live).

- Conv ``W[K, C/g, kh, kw]``: output axis 0, layout ``conv``;
- ConvTranspose ``W[C, K/g, kh, kw]``: output axis 1;
- Gemm ``y = x @ op(B)``: with ``transB=1`` ``B[N, K]``, output axis 0, layout ``gemm_nt``; else
  ``B[K, N]``, output axis 1, layout ``matmul``;
- MatMul ``B[..., K, N]``: output axis ``ndim - 1``, layout ``matmul`` (2-D weights).
"""
from __future__ import annotations

import onnx_ir as ir

__all__ = ["trans_b", "output_axis", "weight_layout"]


def trans_b(node: ir.Node) -> bool:
    """Gemm's ``transB`` attribute (False when absent)."""
    a = node.attributes.get("transB")
    return a is not None and bool(a.as_int())


def output_axis(node: ir.Node, ndim: int) -> int:
    """The weight axis holding the layer's output channels."""
    op = node.op_type
    if op == "Conv":
        return 0
    if op == "ConvTranspose":
        return 1
    if op == "Gemm":
        return 0 if trans_b(node) else 1
    return ndim - 1  # MatMul [..., K, N]


def weight_layout(node: ir.Node, ndim: int) -> str | None:
    """'conv' (Conv), 'gemm_nt' (2-D Gemm, transB=1), 'matmul' (2-D ``[K, N]``), or None for other layouts."""
    if node.op_type == "Conv":
        return "conv"
    if node.op_type == "Gemm" and ndim == 2:
        return "gemm_nt" if trans_b(node) else "matmul"
    if node.op_type == "MatMul" and ndim == 2:
        return "matmul"
    return None
