"""Weight-level pruning targets for one layer: N:M semi-structured or unstructured, and their ranking.

N:M keeps the N most important of every M consecutive weights along the reduction axis
(``masks.reduction_axis``: Conv ``[K, C/g, R, S]`` groups M consecutive input channels at every
``(k, r, s)``; Gemm/MatMul run along K). A layer whose reduction length is not a multiple of M
(a depthwise conv has C/g = 1; a first conv often has 3 input channels) is skipped with a reason.
Unstructured keeps the top ``1 - ratio`` of the layer's weights; globally (one threshold over the
layers) the per-layer counts come from ``global_magnitude_masks``.

Importance is ``|W|`` (magnitude) or Wanda's ``|W_ij| * ||X_j||_2`` (Sun et al. 2023), where
``||X_j||`` is the RMS over calibration rows of input feature ``j`` (an im2col column for Conv,
so border padding counts), read from the Gram matrix's diagonal. A *previous* mask (gradual
schedules) is honoured by scoring its pruned entries -1, below every real score, so masks nest.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
import onnx_ir as ir

from ..errors import ConfigError
from ..ir import Graph, const_array
from ..ir.weights import trans_b
from ..contract import parse_sparsity
from ..quant.compensate import rows_to_weight, weight_to_rows
from .masks import global_magnitude_masks, magnitude_mask, nm_mask, reduction_axis, wanda_scores
from .reconstruct import LayerGram

__all__ = ["WeightTarget", "parse_target", "skip_reason", "nm_axis", "importance", "layer_mask", "global_ratios"]


@dataclass(frozen=True)
class WeightTarget:
    """``kind`` 'nm' (keep ``n`` of every ``m``) or 'unstructured' (prune ``ratio`` of the weights)."""

    kind: str
    n: int = 0
    m: int = 0
    ratio: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in ("nm", "unstructured"):
            raise ConfigError(f"unknown weight sparsity kind {self.kind!r}", where="sparsity")

    @property
    def label(self) -> str:
        return f"{self.n}:{self.m}" if self.kind == "nm" else f"unstructured={self.ratio:g}"

    @property
    def sparsity(self) -> float:
        return 1.0 - self.n / self.m if self.kind == "nm" else self.ratio

    def step(self, s: int, k: int) -> "WeightTarget":
        """The target after step ``s`` of ``k`` (``s == k`` is this target): N:M raises the pruned
        count per group ``M - N`` in steps (2:4 in 2 steps: 3:4 then 2:4); a ratio rises linearly."""
        if self.kind == "nm":
            n_s = self.m - int(round((self.m - self.n) * s / k))
            return WeightTarget("nm", n_s, self.m) if n_s < self.m else WeightTarget("unstructured", ratio=0.0)
        return WeightTarget("unstructured", ratio=self.ratio * s / k)


def parse_target(text: str) -> WeightTarget | None:
    """A plan sparsity string -> WeightTarget; None for 'dense' and 'channels=R'."""
    kind, param = parse_sparsity(text)
    if kind == "nm":
        return WeightTarget("nm", n=param[0], m=param[1])
    if kind == "unstructured":
        return WeightTarget("unstructured", ratio=float(param))
    return None


def _attrs(node: ir.Node) -> dict[str, int]:
    return {"transB": int(trans_b(node))}


def nm_axis(node: ir.Node, w: np.ndarray) -> int:
    return reduction_axis(node.op_type, w.shape, _attrs(node), name=node.inputs[1].name)


def skip_reason(graph: Graph, node: ir.Node, target: WeightTarget) -> str | None:
    """Why ``node`` cannot take ``target`` (None: it can)."""
    wv = graph.weight_of(node)
    if wv is None:
        return "weight is not a constant"
    w = const_array(wv)
    if not np.issubdtype(w.dtype, np.floating):
        return f"weight '{wv.name}' is {w.dtype}, not float"
    if graph.uses_count(wv) != 1:
        return f"weight '{wv.name}' is shared with another node"
    if node.op_type == "MatMul" and w.ndim != 2:
        return f"MatMul weight '{wv.name}' has rank {w.ndim}; only 2-D weights are pruned"
    if target.kind != "nm":
        return None
    if node.op_type == "ConvTranspose":
        return "N:M needs a reduction axis; none is defined for ConvTranspose"
    ax = nm_axis(node, w)
    if w.shape[ax] % target.m:
        g = node.attributes.get("group")
        depthwise = node.op_type == "Conv" and w.shape[1] == 1 and g is not None and g.as_int() > 1
        what = " (depthwise conv: one input channel per group)" if depthwise else ""
        return (f"reduction axis {ax} of '{wv.name}' has length {w.shape[ax]}, not a multiple of "
                f"M={target.m}{what}")
    return None


def importance(w: np.ndarray, gram: LayerGram | None) -> np.ndarray:
    """``|W|`` without statistics; Wanda's ``|W| * ||X_j||`` (shape of ``w``) with them."""
    if gram is None:
        return np.abs(w.astype(np.float64))
    rows = weight_to_rows(w.astype(np.float64), gram.layout)
    k = rows.shape[0] // gram.groups
    norms = gram.input_norms()
    score = np.concatenate([wanda_scores(rows[j * k:(j + 1) * k], norms[j], axis=1)
                            for j in range(gram.groups)])
    return rows_to_weight(score, gram.layout, w.shape)


def layer_mask(node: ir.Node, w: np.ndarray, target: WeightTarget, score: np.ndarray,
               prev: np.ndarray | None = None) -> np.ndarray:
    """Keep-mask for one layer; with ``prev`` the result is a subset of ``prev``."""
    if prev is not None:
        score = np.where(prev, score, -1.0)
    name = node.inputs[1].name
    if target.kind == "nm":
        mask = nm_mask(w, target.n, target.m, nm_axis(node, w), score=score, name=name)
    else:
        mask = magnitude_mask(w, target.ratio, score=score, name=name)
    return mask if prev is None else mask & prev


def global_ratios(weights: Mapping[str, np.ndarray], scores: Mapping[str, np.ndarray],
                  ratio: float) -> dict[str, float]:
    """Per-layer ratios of one global threshold (layers compared on ``scores``): the per-layer mask
    keeping that many top-score weights is exactly the global mask restricted to the layer."""
    masks = global_magnitude_masks(weights, ratio, scores=scores)
    return {k: float(1.0 - m.sum() / m.size) for k, m in masks.items()}
