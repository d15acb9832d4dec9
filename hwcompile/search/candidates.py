"""Candidates a layer can take in the mixed-precision search, where they apply, and their weight bytes.

A candidate is a named precision (``hwcompile.plan.CANDIDATES``: fp32, fp16, int8, int8dyn, int4w)
plus a sparsity pattern; its name is the precision, with ``+2:4`` appended when sparse
(``fp32+2:4``, ``int8+2:4``). ``fp32`` (dense) is always a candidate: it is the reference every
damage and latency figure is measured against.

Applicability (mirrors the passes, which skip a layer they cannot rewrite):
- ``int8dyn``: MatMul with a 2-D constant weight, or Gemm (dynamic INT8 for Conv is not offered);
- ``int4w``: MatMul with a 2-D constant weight;
- ``+2:4``: offered by default only when the target lists ``2:4``, ``hwcompile.passes.prune``
  imports, and the target says its backend runs sparse kernels (``sparse_weights = true``, as the
  TensorRT targets do). onnxruntime's CPU kernels are dense, so there 2:4 costs accuracy (and a
  least-squares refit per layer) for no speed or size gain; pass the names explicitly
  (``candidates=["fp32+2:4"]``) to search it anyway.

Weight bytes per layer (the size model): elements x bits / 8 for the weight, plus the
quantization scales (INT8: one fp32 scale per output channel; INT4: one fp32 scale per block of
``int4_block_size`` along K, K padded to whole blocks), plus the bias (fp32, fp16 for fp16 layers;
INT8 biases are stored as int32, the same 4 bytes). With 2:4 sparsity a backend that stores weights
compressed (TensorRT's sparse tensor-core layout) keeps half of the elements plus 2 bits of index
per kept element; other backends store the dense tensor with zeros, so their size is unchanged.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from ..errors import ConfigError
from ..ir import Graph, const_array
from ..plan import CANDIDATES, LayerChoice, PrecisionPlan, QuantSettings
from ..targets import Target

__all__ = ["Candidate", "FP32", "parse_candidate", "target_candidates", "applicable", "weight_bytes"]

_BITS = {"fp32": 32, "fp16": 16, "int8": 8, "int4": 4}


@dataclass(frozen=True)
class Candidate:
    """A precision (key of ``CANDIDATES``) and a sparsity pattern, named ``prec`` or ``prec+N:M``."""

    precision: str
    sparsity: str = "dense"

    def __post_init__(self) -> None:
        if self.precision not in CANDIDATES:
            raise ConfigError(f"unknown precision {self.precision!r}", where="candidate",
                              hint=f"one of {sorted(CANDIDATES)}")

    @property
    def name(self) -> str:
        return self.precision if self.sparsity == "dense" else f"{self.precision}+{self.sparsity}"

    def choice(self, reason: str = "") -> LayerChoice:
        return LayerChoice.from_candidate(self.precision, self.sparsity, reason=reason)

    def uniform_plan(self, quant: QuantSettings | None = None) -> PrecisionPlan:
        plan = PrecisionPlan.uniform(self.precision, self.sparsity)
        if quant is not None:
            plan.quant = quant
        return plan


FP32 = Candidate("fp32")


def parse_candidate(name: str) -> Candidate:
    """'int8' -> Candidate('int8'); 'fp32+2:4' -> Candidate('fp32', '2:4')."""
    prec, _, sparsity = name.partition("+")
    return Candidate(prec, sparsity or "dense")


def _prune_available() -> bool:
    try:
        importlib.import_module("hwcompile.passes.prune")
    except ImportError:
        return False
    return True


def target_candidates(target: Target, names: list[str] | None = None) -> list[Candidate]:
    """The candidates ``target`` supports (fp32 first), or ``names`` checked against it."""
    if names is not None:
        out = [parse_candidate(n) for n in names]
        for c in out:
            if c.precision not in target.precisions:
                raise ConfigError(f"target {target.name} does not support {c.precision!r}", where="candidates",
                                  hint=f"it supports {list(target.precisions)}")
            if c.sparsity != "dense" and not target.supports_sparsity(c.sparsity):
                raise ConfigError(f"target {target.name} does not support sparsity {c.sparsity!r}",
                                  where="candidates", hint=f"it supports {list(target.sparsity)}")
            if c.sparsity != "dense" and not _prune_available():
                raise ConfigError("sparse candidates need the pruning pass (hwcompile.passes.prune)",
                                  where="candidates")
        return [FP32] + [c for c in out if c != FP32]
    out = [FP32] + [Candidate(p) for p in target.precisions if p in CANDIDATES and p != "fp32"]
    if "2:4" in target.sparsity and target.settings.get("sparse_weights", False) and _prune_available():
        out += [Candidate(p, "2:4") for p in ("fp32", "fp16", "int8") if p in target.precisions]
    return out


def applicable(graph: Graph, node: ir.Node, cand: Candidate) -> bool:
    """Whether the passes can give ``node`` this candidate (see the module docstring)."""
    w = graph.weight_of(node)
    if w is None:
        return False
    if cand.sparsity != "dense":
        from ..prune.semistructured import parse_target, skip_reason

        target = parse_target(cand.sparsity)
        if target is not None and skip_reason(graph, node, target) is not None:
            return False     # the prune pass would leave it dense (e.g. 3 input channels, depthwise)
    if cand.precision == "int8dyn":
        return node.op_type == "Gemm" or (node.op_type == "MatMul" and len(w.shape) == 2)
    if cand.precision == "int4w":
        return node.op_type == "MatMul" and len(w.shape) == 2
    return True


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
        trans_b = node.attributes.get("transB")
        out_ch = shape[0] if node.op_type == "Conv" or (trans_b is not None and trans_b.as_int()) else shape[-1]
        total += 4 * out_ch
    elif wfmt == "int4":
        k, n_out = shape[0], int(np.prod(shape[1:]))
        total += 4 * n_out * -(-k // block)
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    if bias is not None and bias.const_value is not None:
        total += int(np.prod(const_array(bias).shape)) * (2 if wfmt == "fp16" else 4)
    return int(round(total))
