"""Reconstruction without training: refit a pruned layer's kept weights by least squares.

A layer computes ``y = W x`` before its bias, with ``x`` one input row (an im2col patch for Conv,
a feature vector for Gemm/MatMul) and ``W`` its weight as ``[out, in]`` rows. With the mask ``S``
fixed, every output row ``k`` solves ``min_w ||X'_S w - y_k||^2`` over its kept inputs only, where
``X'`` holds the layer's inputs in the *current* (partly pruned) model and ``Y = X W_d^T`` the dense
layer's outputs on the *reference* (dense) model's inputs, batch for batch. Only ``G = X'^T X'``
and ``C = X'^T Y`` are needed, so both are streamed over calibration batches; the normal equations
are solved by ``refit_from_gram`` (ridge ``lambda = ridge * mean diag G``). When the current model
is the reference (one-shot), ``C = G W_d^T`` and one run suffices.

With ``bias=True`` the fit also has an intercept: ``min ||X'_S w + 1 d - y_k||^2`` over ``w`` and a
bias change ``d`` (the augmented system has ``1`` as an extra, never pruned input column, so only
the column sums ``s_x = X'^T 1``, ``s_y = Y^T 1`` and the row count are needed besides ``G`` and
``C``). This absorbs the mean shift that pruning (and upstream pruning) causes: bias correction
folded into the refit.

``sparsegpt_weight`` chooses the N:M mask itself (SparseGPT with every pattern of a group tried,
``quant.compensate.sparsegpt_prune``) instead of taking a fixed one: it starts from the layer's best
dense fit ``W*`` (the ridge pulling toward the current weight; ``W* = W`` when the current model is
the reference, since then ``C = G W^T``), because ``||X' W^T - Y||^2 = ||X' (W - W*)^T||^2 + const``,
so pruning ``W*`` under ``H = X'^T X'`` minimises the error to the reference outputs. With an
intercept the ones column is the last, never-pruned column and takes the mean of every error.

Grouped convs are block diagonal: group ``j`` reads input columns ``[j d, (j+1) d)`` and writes
rows ``[j k, (j+1) k)``, so ``G`` and ``C`` are kept per group (``[g, d, d]``, ``[g, d, k]``).
Rows are subsampled at random positions from a generator seeded by (batch, layer), so memory is
bounded, the result deterministic, and the current and reference models use the same positions.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort

from ..data import Dataset
from ..errors import DataError, UnsupportedError
from ..ir import Graph, const_array, to_proto
from ..ir.weights import weight_layout
from ..quant.calibration import im2col
from ..quant.collect import in_memory_session, run_with_outputs
from ..quant.compensate import refit_from_gram, sparsegpt_prune, weight_to_rows, rows_to_weight

__all__ = ["LayerGram", "layer_layout", "layer_rows", "collect_grams", "refit_weight", "refit_weight_bias",
           "relative_error", "nm_columns", "sparsegpt_weight"]


@dataclass
class LayerGram:
    """Streamed least-squares statistics of one layer: ``G = X'^T X'``, ``C = X'^T Y``, ``tr(Y^T Y)``,
    and the column sums ``sx = X'^T 1``, ``sy = Y^T 1`` (for a fit with intercept)."""

    layout: str
    groups: int
    G: np.ndarray          # [g, d, d]
    C: np.ndarray          # [g, d, k]
    yty: float
    rows: int
    sx: np.ndarray | None = None   # [g, d]
    sy: np.ndarray | None = None   # [g, k]

    def input_norms(self) -> np.ndarray:
        """RMS of every input feature over the sampled rows, ``[g, d]`` (Wanda's ``||X_j||``, scaled)."""
        diag = np.diagonal(self.G, axis1=1, axis2=2)
        return np.sqrt(np.maximum(diag, 0.0) / max(self.rows, 1))


def layer_layout(node: ir.Node) -> tuple[str, int]:
    """(compensate layout, groups) of a layer whose weight can be refit; UnsupportedError otherwise."""
    w = node.inputs[1]
    ndim = len(w.shape) if w.shape is not None else 0
    if node.op_type == "Conv" and ndim == 4:
        g = node.attributes.get("group")
        return "conv", g.as_int() if g is not None else 1
    layout = weight_layout(node, ndim)
    if layout in ("gemm_nt", "matmul"):
        return layout, 1
    raise UnsupportedError(f"no least-squares refit for {node.op_type} with a {ndim}-D weight",
                           where=f"node '{node.name}'", hint="2-D Conv, Gemm and MatMul with a 2-D weight are refit")


def _sample(total: int, max_rows: int, seed: tuple[int, ...]) -> np.ndarray:
    if total <= max_rows:
        return np.arange(total)
    return np.sort(np.random.default_rng(list(seed)).choice(total, max_rows, replace=False))


def layer_rows(node: ir.Node, x: np.ndarray, *, max_rows: int, seed: tuple[int, ...],
               chunk_bytes: int = 1 << 26, select: np.ndarray | None = None) -> np.ndarray:
    """The rows the layer multiplies its weight with (im2col patches for Conv), at most ``max_rows``,
    as float64. Conv patches are built a few samples at a time (``chunk_bytes`` of patches).
    ``select`` (bool ``[N, S]``, e.g. an attention mask): a MatMul/Gemm input ``[N, S, H]`` keeps
    only the selected rows (padding tokens are left out of the fit)."""
    x = np.asarray(x)
    if select is not None and node.op_type != "Conv" and x.ndim == 3 and select.shape == x.shape[:2]:
        x = x[select]
    if node.op_type == "Conv":
        first = im2col(x[:1], node)
        per, d = first.shape
        idx = _sample(per * x.shape[0], max_rows, seed)
        step = max(1, chunk_bytes // max(per * d * x.itemsize, 1))
        parts = []
        for s in range(0, x.shape[0], step):
            sel = idx[(idx >= s * per) & (idx < (s + step) * per)] - s * per
            if sel.size:
                parts.append((first if s == 0 and step == 1 else im2col(x[s:s + step], node))[sel])
        rows = np.concatenate(parts) if parts else np.zeros((0, d), x.dtype)
        return rows.astype(np.float64)
    ta = node.attributes.get("transA")
    rows = x.T if node.op_type == "Gemm" and ta is not None and ta.as_int() else x.reshape(-1, x.shape[-1])
    return rows[_sample(len(rows), max_rows, seed)].astype(np.float64)


def _weight_groups(node: ir.Node, layout: str, groups: int) -> np.ndarray:
    """The weight as per-group rows ``[g, k, d]`` (float64)."""
    rows = weight_to_rows(const_array(node.inputs[1]).astype(np.float64), layout)
    return rows.reshape(groups, rows.shape[0] // groups, rows.shape[1])


class _Accumulator:
    def __init__(self, layout: str, groups: int):
        self.layout, self.groups = layout, groups
        self.G: np.ndarray | None = None
        self.C: np.ndarray | None = None
        self.sx: np.ndarray | None = None
        self.sy: np.ndarray | None = None
        self.yty, self.rows = 0.0, 0

    def update(self, xr: np.ndarray, y: np.ndarray | None) -> None:
        # one batch's products in float32 (activations are float32; a batch holds at most max_rows rows),
        # summed over batches in float64
        x32 = xr.astype(np.float32)
        y32 = None if y is None else y.astype(np.float32)
        if self.groups == 1:                                # plain BLAS products
            g = (x32.T @ x32).astype(np.float64)[None]
            c = None if y is None else (x32.T @ y32).astype(np.float64)[None]
        else:
            X = x32.reshape(x32.shape[0], self.groups, -1)    # [r, g, d]
            g = np.einsum("rgd,rge->gde", X, X, optimize=True).astype(np.float64)
            c = None if y is None else np.einsum("rgd,rgk->gdk", X, y32.reshape(y32.shape[0], self.groups, -1),
                                                 optimize=True).astype(np.float64)
        sx = xr.sum(axis=0).reshape(self.groups, -1)
        self.G = g if self.G is None else self.G + g
        self.sx = sx if self.sx is None else self.sx + sx
        if c is not None:
            sy = y.sum(axis=0).reshape(self.groups, -1)
            self.C = c if self.C is None else self.C + c
            self.sy = sy if self.sy is None else self.sy + sy
            self.yty += float(np.sum(y * y))
        self.rows += xr.shape[0]


def collect_grams(graph: Graph, layers: Iterable[str], data: Dataset | Iterable[Mapping[str, np.ndarray]], *,
                  reference: Graph | None = None, out_keep: Mapping[str, np.ndarray] | None = None,
                  max_rows: int = 2048, batch_size: int = 8, limit: int | None = 256,
                  token_mask: str | None = None) -> dict[str, LayerGram]:
    """Stream ``G`` and ``C`` for each named layer over ``data``.

    ``token_mask``: a graph input ``[N, S]`` (e.g. ``attention_mask``); rows of ``[N, S, H]`` layer
    inputs where it is 0 are not used.

    ``reference``: the dense model (same layer ids); the targets ``Y`` are its layer outputs on its
    own inputs, computed batch by batch in lockstep. ``None``: the current model is the reference
    (``C = G W^T`` with the current weight). ``out_keep[layer]``: the reference output channels
    the current layer still has (channel pruning removed the others).
    """
    names = list(dict.fromkeys(layers))
    nodes = [graph.node(n) for n in names]
    specs = {n.name: layer_layout(n) for n in nodes}
    accs = {n.name: _Accumulator(*specs[n.name]) for n in nodes}
    graph_inputs = [v.name for v in graph.main.inputs]
    wanted = list(dict.fromkeys(n.inputs[0].name for n in nodes if n.inputs[0].name not in graph_inputs))
    ref_nodes, ref_sess, ref_wanted, ref_w = {}, None, [], {}
    if reference is not None:
        ref_nodes = {n: reference.node(n) for n in names}
        ref_inputs = {v.name for v in reference.main.inputs}
        ref_wanted = list(dict.fromkeys(r.inputs[0].name for r in ref_nodes.values()
                                        if r.inputs[0].name not in ref_inputs))
        ref_sess = _session_upto(reference, ref_wanted) if ref_wanted else None
        ref_w = {n: _weight_groups(r, *layer_layout(r)) for n, r in ref_nodes.items()}
    batch = [0]

    def visit(values: Mapping[str, np.ndarray]) -> None:
        b = batch[0]
        batch[0] += 1
        ref_vals = {}
        if reference is not None:
            feeds = {k: values[k] for k in graph_inputs}
            ref_vals = {**feeds, **(dict(zip(ref_wanted, ref_sess.run(ref_wanted, feeds))) if ref_sess else {})}
        sel = None
        if token_mask:
            if token_mask not in values:
                raise DataError(f"token mask input '{token_mask}' is not a graph input", where="prune_token_mask")
            sel = np.asarray(values[token_mask]) != 0
        for i, node in enumerate(nodes):
            seed = (b, i)
            xr = layer_rows(node, values[node.inputs[0].name], max_rows=max_rows, seed=seed, select=sel)
            y = None
            if reference is not None:
                rnode = ref_nodes[node.name]
                rr = layer_rows(rnode, ref_vals[rnode.inputs[0].name], max_rows=max_rows, seed=seed, select=sel)
                if rr.shape[0] != xr.shape[0]:
                    raise DataError(f"reference gives {rr.shape[0]} rows, pruned model {xr.shape[0]}",
                                    where=f"node '{node.name}'")
                wg = ref_w[node.name]                                    # [g, k, d]
                if wg.shape[0] == 1:
                    y = rr @ wg[0].T
                else:
                    y = np.einsum("rgd,gkd->rgk", rr.reshape(len(rr), wg.shape[0], -1), wg).reshape(len(rr), -1)
                if out_keep is not None and node.name in out_keep:
                    y = y[:, out_keep[node.name]]
            accs[node.name].update(xr, y)

    _run_upto(graph, data, wanted, visit, batch_size=batch_size, limit=limit)
    out: dict[str, LayerGram] = {}
    for node in nodes:
        acc = accs[node.name]
        layout, groups = specs[node.name]
        if reference is None:
            wg = _weight_groups(node, layout, groups)
            acc.C = acc.G @ wg.transpose(0, 2, 1)
            acc.sy = np.einsum("gd,gkd->gk", acc.sx, wg)
            acc.yty = float(np.sum(wg * (wg @ acc.G)))
        elif acc.C.shape[2] != _weight_groups(node, layout, groups).shape[1]:
            raise DataError(f"reference layer gives {acc.C.shape[2] * groups} outputs, the pruned layer has "
                            f"{_weight_groups(node, layout, groups).shape[1] * groups}", where=f"node '{node.name}'",
                            hint="pass out_keep for channel-pruned layers")
        out[node.name] = LayerGram(layout, groups, acc.G, acc.C, acc.yty, acc.rows, acc.sx, acc.sy)
    return out


def _session_upto(graph: Graph, names: list[str]) -> ort.InferenceSession:
    """An in-memory onnxruntime session computing only ``names`` and the nodes they depend on (a layer
    early in the model costs only the model's front; graph inputs are all kept, used or not)."""
    proto = to_proto(graph)
    nested = any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                 for n in proto.graph.node for a in n.attribute)
    need, keep = set(names), []
    for node in reversed(proto.graph.node):
        if nested or any(o in need for o in node.output):
            keep.append(node)
            need.update(i for i in node.input if i)
    keep.reverse()
    inits = [t for t in proto.graph.initializer if t.name in need]
    del proto.graph.node[:]
    proto.graph.node.extend(keep)
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(inits)
    del proto.graph.output[:]
    proto.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names)
    return in_memory_session(proto)


def _run_upto(graph: Graph, data, names: list[str], visit, *, batch_size: int, limit: int | None) -> int:
    """``quant.collect.run_with_outputs`` on the part of the graph that ``names`` need."""
    return run_with_outputs(graph, data, names, visit, batch_size=batch_size, limit=limit,
                            session=_session_upto(graph, names) if names else None)


def refit_weight(w: np.ndarray, gram: LayerGram, mask: np.ndarray | None = None, *,
                 ridge: float = 1e-3, prior: np.ndarray | None = None) -> np.ndarray:
    """The weight (shape and dtype of ``w``) whose mask-kept entries solve the least-squares refit;
    entries outside ``mask`` are exactly 0. ``mask=None`` refits every entry. ``prior`` (shape of
    ``w``): the ridge pulls toward it instead of toward 0."""
    w = np.asarray(w)
    rows = weight_to_rows(w, gram.layout)
    k, d = rows.shape[0] // gram.groups, rows.shape[1]
    mrows = None if mask is None else weight_to_rows(np.asarray(mask, dtype=bool), gram.layout)
    prows = None if prior is None else weight_to_rows(np.asarray(prior, dtype=np.float64), gram.layout)
    new = np.zeros(rows.shape, dtype=np.float64)
    for j in range(gram.groups):
        sl = slice(j * k, (j + 1) * k)
        new[sl] = refit_from_gram(gram.G[j], gram.C[j], None if mrows is None else mrows[sl], ridge,
                                  prior=None if prows is None else prows[sl])
    if d != gram.G.shape[1]:
        raise DataError(f"weight has {d} inputs per group, Gram matrix {gram.G.shape[1]}", where="refit_weight")
    return rows_to_weight(new, gram.layout, w.shape).astype(w.dtype)


def refit_weight_bias(w: np.ndarray, gram: LayerGram, mask: np.ndarray | None = None, *,
                      ridge: float = 1e-3, prior: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Like :func:`refit_weight` with an intercept: ``(weight, bias change [out])``; add the change
    to the layer's bias. The intercept is never pruned (its prior is a change of 0)."""
    if gram.sx is None or gram.sy is None:
        raise DataError("the Gram statistics carry no column sums", where="refit_weight_bias")
    w = np.asarray(w)
    rows = weight_to_rows(w, gram.layout)
    k, d = rows.shape[0] // gram.groups, rows.shape[1]
    if d != gram.G.shape[1]:
        raise DataError(f"weight has {d} inputs per group, Gram matrix {gram.G.shape[1]}", where="refit_weight_bias")
    mrows = np.ones(rows.shape, bool) if mask is None else weight_to_rows(np.asarray(mask, dtype=bool), gram.layout)
    prows = None if prior is None else weight_to_rows(np.asarray(prior, dtype=np.float64), gram.layout)
    new = np.zeros(rows.shape, dtype=np.float64)
    delta = np.zeros(rows.shape[0], dtype=np.float64)
    for j in range(gram.groups):
        sl = slice(j * k, (j + 1) * k)
        G = np.block([[gram.G[j], gram.sx[j][:, None]], [gram.sx[j][None, :], np.full((1, 1), float(gram.rows))]])
        C = np.vstack([gram.C[j], gram.sy[j][None, :]])
        m = np.hstack([mrows[sl], np.ones((k, 1), bool)])
        p0 = None if prows is None else np.hstack([prows[sl], np.zeros((k, 1))])
        sol = refit_from_gram(G, C, m, ridge, prior=p0)
        new[sl], delta[sl] = sol[:, :d], sol[:, d]
    return rows_to_weight(new, gram.layout, w.shape).astype(w.dtype), delta


def relative_error(w: np.ndarray, gram: LayerGram, bias_delta: np.ndarray | None = None) -> float:
    """``||X' W^T + 1 d^T - Y||^2 / ||Y||^2`` on the sampled rows (``d`` = ``bias_delta``, default 0),
    from ``G``, ``C``, the column sums and ``tr(Y^T Y)``."""
    rows = weight_to_rows(np.asarray(w, dtype=np.float64), gram.layout)
    wg = rows.reshape(gram.groups, -1, rows.shape[1])                    # [g, k, d]
    quad = float(np.sum(wg * (wg @ gram.G)))
    cross = float(np.sum(wg * gram.C.transpose(0, 2, 1)))
    err = quad - 2.0 * cross + gram.yty
    if bias_delta is not None:
        dg = np.asarray(bias_delta, dtype=np.float64).reshape(gram.groups, -1)   # [g, k]
        err += (2.0 * float(np.sum(dg * np.einsum("gd,gkd->gk", gram.sx, wg))) + gram.rows * float(np.sum(dg * dg))
                - 2.0 * float(np.sum(dg * gram.sy)))
    return max(err, 0.0) / max(gram.yty, 1e-300)


def nm_columns(layout: str, shape: tuple[int, ...], groups: int, m: int) -> np.ndarray:
    """Column indices ``[g, M]`` of the N:M groups in one group's ``[out, in]`` rows (``weight_to_rows``):
    Conv rows are ordered (C, kh, kw), and a group is M consecutive input channels at one kernel
    position; Gemm/MatMul rows run along K, so a group is M consecutive columns."""
    if layout == "conv":
        cg, kk = int(shape[1]), int(np.prod(shape[2:], dtype=np.int64))
        if cg % m:
            raise DataError(f"{cg} input channels per group, not a multiple of M={m}", where="nm_columns")
        c = np.arange(cg).reshape(-1, m)                                   # [cg/m, m]
        return (c[:, None, :] * kk + np.arange(kk)[None, :, None]).reshape(-1, m)
    d = int(shape[1] if layout == "gemm_nt" else shape[0])
    if d % m:
        raise DataError(f"reduction length {d} is not a multiple of M={m}", where="nm_columns")
    return np.arange(d).reshape(-1, m)


def sparsegpt_weight(w: np.ndarray, gram: LayerGram, n: int, m: int, *, prev: np.ndarray | None = None,
                     ridge: float = 1e-3, percdamp: float = 0.01,
                     bias: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """SparseGPT N:M for one layer from its Gram statistics: ``(weight, keep mask, bias change or None)``
    (module docstring). ``prev`` (keep mask of ``w``'s shape): weights pruned before stay pruned.
    ``ridge`` damps the dense fit ``W*``; ``percdamp`` the Hessian of the sweep."""
    w = np.asarray(w)
    rows = weight_to_rows(w.astype(np.float64), gram.layout)
    k, d = rows.shape[0] // gram.groups, rows.shape[1]
    if d != gram.G.shape[1]:
        raise DataError(f"weight has {d} inputs per group, Gram matrix {gram.G.shape[1]}", where="sparsegpt_weight")
    if bias and (gram.sx is None or gram.sy is None):
        raise DataError("the Gram statistics carry no column sums", where="sparsegpt_weight")
    cols = nm_columns(gram.layout, w.shape, gram.groups, m)
    prows = None if prev is None else weight_to_rows(np.asarray(prev, dtype=bool), gram.layout)
    new = np.zeros(rows.shape)
    keep = np.ones(rows.shape, bool)
    delta = np.zeros(rows.shape[0])
    for j in range(gram.groups):
        sl = slice(j * k, (j + 1) * k)
        G, C, W0 = gram.G[j], gram.C[j], rows[sl]
        if bias:
            G = np.block([[G, gram.sx[j][:, None]], [gram.sx[j][None, :], np.full((1, 1), float(gram.rows))]])
            C = np.vstack([C, gram.sy[j][None, :]])
            W0 = np.hstack([W0, np.zeros((k, 1))])
        wstar = refit_from_gram(G, C, None, ridge, prior=W0)
        pv = None
        if prows is not None:
            pv = prows[sl] if not bias else np.hstack([prows[sl], np.ones((k, 1), bool)])
        sol, kp = sparsegpt_prune(wstar, G, cols, n, prev=pv, percdamp=percdamp)
        new[sl], keep[sl] = sol[:, :d], kp[:, :d]
        if bias:
            delta[sl] = sol[:, d]
    return (rows_to_weight(new, gram.layout, w.shape).astype(w.dtype), rows_to_weight(keep, gram.layout, w.shape),
            delta if bias else None)
