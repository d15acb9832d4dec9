"""BatchNormalization folding into the preceding linear op. Preserves outputs to float rounding.

Inference BN is ``y = (x - mean) * s + beta`` with ``s = gamma / sqrt(var + eps)`` per channel
(axis 1). When ``x = W * a + b`` is linear in a constant ``W``, scaling W's output channels by
``s`` and setting ``b' = (b - mean) * s + beta`` gives the same ``y``. Output-channel axes:
Conv ``W[K, C/g, ...]`` axis 0; ConvTranspose ``W[C, K/g, ...]`` axis 1 within each group; Gemm
``B'`` columns (``W[N, K]`` rows when transB=1); MatMul ``W[K, N]`` columns when the output is 2-D
(only then is ONNX's channel axis 1 the MatMul's N axis).

A rule is pattern, check, rewrite; ``check`` returns the reason it declines: the producer's output
also feeds other nodes, the weight or bias is not a constant or is shared with another node, or BN
uses training-mode outputs. A lone BN stays as it is (still correct).
"""
from __future__ import annotations

import numpy as np
import onnx_ir as ir

from ..ir import Graph, const_array, is_constant
from ..ir.weights import trans_b
from .base import PassResult

__all__ = ["fold_bn", "check_fold_bn"]

_FOLDABLE = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def fold_bn(graph: Graph) -> PassResult:
    folded, declined = 0, {}
    for bn in [n for n in graph.main if n.op_type == "BatchNormalization" and n.domain == ""]:
        reason = check_fold_bn(graph, bn)
        if reason:
            declined[bn.name] = reason
            continue
        _rewrite(graph, bn)
        folded += 1
    graph.meta.setdefault("fold_bn_declined", {}).update(declined)
    return PassResult(graph, folded > 0, {"bn_folded": folded})


fold_bn.name, fold_bn.in_place = "fold_bn", True


def check_fold_bn(graph: Graph, bn: ir.Node) -> str | None:
    """None if ``bn`` can be folded into its producer, else the reason it cannot."""
    if any(o.uses() or o.is_graph_output() for o in bn.outputs[1:]):
        return "BN uses training-mode outputs (running mean/var)"
    if bn.attributes.get("training_mode") is not None and bn.attributes["training_mode"].as_int():
        return "BN is in training mode"
    if not all(is_constant(v) for v in bn.inputs[1:5]):
        return "BN statistics are not constants"
    x = bn.inputs[0]
    prod = x.producer()
    if prod is None or prod.op_type not in _FOLDABLE or prod.domain != "":
        return "no Conv/ConvTranspose/Gemm/MatMul producer"
    if graph.uses_count(x) != 1:
        return f"producer '{prod.name}' output also feeds other nodes"
    w = prod.inputs[1]
    if not is_constant(w):
        return f"weight of '{prod.name}' is not a constant"
    if graph.uses_count(w) != 1:
        return f"weight '{w.name}' is shared with another node"
    bias = prod.inputs[2] if len(prod.inputs) > 2 else None
    if bias is not None and (not is_constant(bias) or graph.uses_count(bias) != 1):
        return f"bias of '{prod.name}' is not a constant used once"
    if prod.op_type == "Gemm":
        c = const_array(bias) if bias is not None else None
        if c is not None and c.ndim == 2 and c.shape[0] != 1:
            return "Gemm bias C varies along the batch axis"
    if prod.op_type == "MatMul":
        if x.shape is None or len(x.shape) != 2 or const_array(w).ndim != 2:
            return "MatMul output is not 2-D (BN's channel axis is not the MatMul's N axis)"
    return None


def _rewrite(graph: Graph, bn: ir.Node) -> None:
    prod = bn.inputs[0].producer()
    gamma, beta, mean, var = (const_array(v).astype(np.float64) for v in bn.inputs[1:5])
    eps_attr = bn.attributes.get("epsilon")
    eps = eps_attr.as_float() if eps_attr is not None else 1e-5
    s = gamma / np.sqrt(var + eps)
    w_val = prod.inputs[1]
    w = const_array(w_val)
    dtype = w.dtype
    w64 = w.astype(np.float64)
    op = prod.op_type
    if op == "Conv":
        new_w = w64 * s.reshape((-1,) + (1,) * (w.ndim - 1))
    elif op == "ConvTranspose":
        groups = prod.attributes["group"].as_int() if "group" in prod.attributes else 1
        c_in, k_per_g = w.shape[0], w.shape[1]
        grouped = w64.reshape((groups, c_in // groups, k_per_g) + w.shape[2:])
        scale = s.reshape((groups, 1, k_per_g) + (1,) * (w.ndim - 2))
        new_w = (grouped * scale).reshape(w.shape)
    elif op == "Gemm":
        new_w = w64 * (s[:, None] if trans_b(prod) else s[None, :])
    else:  # MatMul [K, N]; Gemm keeps alpha, which multiplies the scaled weight as before
        new_w = w64 * s[None, :]
    bias_val = prod.inputs[2] if len(prod.inputs) > 2 else None
    if op == "Gemm":
        beta_attr = prod.attributes["beta"].as_float() if "beta" in prod.attributes else 1.0
        b = beta_attr * const_array(bias_val).astype(np.float64).reshape(-1) if bias_val is not None else 0.0
        b = np.broadcast_to(b, s.shape)
        prod.attributes["beta"] = ir.AttrFloat32("beta", 1.0)
    else:
        b = const_array(bias_val).astype(np.float64) if bias_val is not None else np.zeros_like(s)
    new_b = ((b - mean) * s + beta).astype(dtype)
    graph.replace_initializer(w_val, new_w.astype(dtype))
    if op == "MatMul":
        b_val = graph.add_initializer(f"{prod.name}_bias", new_b)
        add = graph.new_node("Add", [prod.outputs[0], b_val], name=f"{prod.name}_bias_add", serves=prod.name)
        graph.insert_after(prod, add)
        out = add.outputs[0]
    else:
        if bias_val is not None:
            graph.replace_initializer(bias_val, new_b)
        else:
            b_val = graph.add_initializer(f"{prod.name}_bias", new_b)
            prod.resize_inputs(3)
            prod.replace_input_with(2, b_val)
        out = prod.outputs[0]
    out.shape = bn.outputs[0].shape
    graph.replace_all_uses(bn.outputs[0], out)
    _rename_to(out, bn.outputs[0], graph)
    graph.erase(bn)


def _rename_to(new: ir.Value, old: ir.Value, graph: Graph) -> None:
    """Keep the BN output's name on the folded value when it was a graph output."""
    if any(o is new for o in graph.main.outputs):
        name = old.name
        old.name = graph.mint_name(name + "__removed")
        new.name = name
