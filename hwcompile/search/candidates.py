"""The size model of the search: a layer's weight bytes under a candidate.

Candidates themselves are ``hwcompile.contract.Candidate``; which a target offers and where they
apply is ``hwcompile.passes.candidates`` (re-exported here).

Weight bytes per layer (the size model): elements x bits / 8 for the weight, plus the
quantization scales (INT8: one fp32 scale per output channel; INT4: one fp32 scale per block of
``int4_block_size`` along K, K padded to whole blocks), plus the bias (fp32, fp16 for fp16 layers;
INT8 biases are stored as int32, the same 4 bytes). With 2:4 sparsity a backend that stores weights
compressed (TensorRT's sparse tensor-core layout) keeps half of the elements plus 2 bits of index
per kept element; other backends store the dense tensor with zeros, so their size is unchanged.
"""
from __future__ import annotations

import numpy as np
import onnx_ir as ir

from ..contract import CANDIDATES, FP32, Candidate, parse_candidate
from ..ir import Graph, const_array
from ..ir.weights import output_axis
from ..passes.candidates import applicable, target_candidates

__all__ = ["Candidate", "FP32", "parse_candidate", "target_candidates", "applicable", "weight_bytes"]

_BITS = {"fp32": 32, "fp16": 16, "int8": 8, "int4": 4}


def weight_bytes(graph: Graph, node: ir.Node, cand: Candidate, *, block: int = 32,
                 compressed_sparse: bool = False) -> int:
    """Bytes of the layer's weight, scales and bias under ``cand`` (see the module docstring)."""
    w = graph.weight_of(node)
    if w is None:
        return 0
    shape = [int(d) for d in const_array(w).shape]
    elems = int(np.prod(shape))
    wfmt, _ = CANDIDATES[cand.precision]
    if cand.sparsity != "dense" and compressed_sparse:
        n, m = (int(x) for x in cand.sparsity.split(":"))
        kept = elems * n // m
        total = kept * _BITS[wfmt] / 8 + kept * 2 / 8
    else:
        total = elems * _BITS[wfmt] / 8
    if wfmt == "int8":
        out_ch = shape[output_axis(node, len(shape))]
        total += 4 * out_ch
    elif wfmt == "int4":
        k, n_out = shape[0], int(np.prod(shape[1:]))
        total += 4 * n_out * -(-k // block)
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    if bias is not None and bias.const_value is not None:
        total += int(np.prod(const_array(bias).shape)) * (2 if wfmt == "fp16" else 4)
    return int(round(total))
