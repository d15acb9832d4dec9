"""Rounding-error compensation without training: bias correction, GPTQ, least-squares refit.

Bias correction: a layer ``y = W x + b`` quantized to ``Wq`` has ``E[yq - y] = (Wq - W) E[x]``;
adding ``delta = -(Wq - W) E[x]`` to the bias makes every output's expectation exact. For Conv
``W[K, C/g, kh, kw]`` this is ``-sum_{c,i,j} (Wq - W)[k,c,i,j] * E[x_c]`` over the group's inputs
(``E[x]`` per input channel, or per (channel, kernel position) when border padding matters).

GPTQ (Frantar et al. 2022, "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained
Transformers"): minimize ``||W X^T - Wq X^T||^2 = tr((W - Wq) H (W - Wq)^T) / 2`` with
``H = 2 X^T X / n`` row-independently. Columns are quantized in order; the error of column ``j``,
divided by ``[H^-1]_jj``, is fed back onto the not-yet-quantized columns through row ``j`` of the
upper Cholesky factor of ``H^-1`` (the OBS update ``dW = -e / [H^-1]_jj * H^-1_{j,:}``, done in
blocks of ``blocksize`` columns with a lazy update of the rest). ``H`` is damped by
``percdamp * mean(diag H)``; dead inputs (``H_jj = 0``) get weight 0. ``act_order`` processes
columns by decreasing ``H_jj``.

Least-squares refit: with a sparsity mask fixed, each output row's free weights solve the ridge
normal equations ``(X_S^T X_S + lambda I) w_S = X_S^T y`` (``lambda = ridge * mean diag(X^T X)``).
With a ``prior`` ``W0`` the ridge pulls toward it instead of toward 0:
``(X_S^T X_S + lambda I) w_S = X_S^T y + lambda w0_S`` (few rows: the fit stays near ``W0``).

SparseGPT (Frantar & Alistarh 2023, "SparseGPT: Massive Language Models Can Be Accurately Pruned
in One-Shot"), the OBS sweep GPTQ uses with pruning instead of rounding: columns are visited in
order; at the first column of every N:M group the ``M - N`` weights of smallest OBS saliency
``w_j^2 / [U]_jj^2`` (``U`` the upper Cholesky factor of ``H^-1`` restricted to the columns not yet
visited, so ``[U]_jj^2`` is ``[H_F^-1]_jj`` of the remaining set ``F``) are pruned, and every pruned
weight's error ``w_j / U_jj`` is fed back onto the later columns through row ``j`` of ``U`` (the
optimal OBS update of the not-yet-visited weights).
"""
from __future__ import annotations

import itertools
from typing import Callable

import numpy as np

from ..errors import ConfigError, DataError
from .qparams import QParams, fake_quant

__all__ = [
    "LAYOUTS",
    "bias_correction",
    "weight_to_rows",
    "rows_to_weight",
    "column_quantizer",
    "gptq_quantize",
    "HessianAccumulator",
    "least_squares_refit",
    "refit_from_gram",
    "sparsegpt_prune",
]

#: Weight layouts: 'conv' W[K, C/g, kh, kw]; 'gemm_nt' W[N, K] (Gemm transB=1); 'matmul' W[K, N].
LAYOUTS = ("conv", "gemm_nt", "matmul")


def _layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise ConfigError(f"unknown weight layout {layout!r}", where="layout", hint=f"one of {LAYOUTS}")


def weight_to_rows(w: np.ndarray, layout: str) -> np.ndarray:
    """W as ``[out, in]`` rows, ``in`` ordered as the layer reads its input (Conv: (C, kh, kw))."""
    _layout(layout)
    w = np.asarray(w)
    if layout == "conv":
        return w.reshape(w.shape[0], -1)
    if w.ndim != 2:
        raise ConfigError(f"{layout} weight must be 2-D, got shape {w.shape}", where="weight")
    return w if layout == "gemm_nt" else w.T


def rows_to_weight(rows: np.ndarray, layout: str, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of :func:`weight_to_rows`."""
    _layout(layout)
    if layout == "conv":
        return rows.reshape(shape)
    return rows.reshape(shape) if layout == "gemm_nt" else rows.T.reshape(shape)


def bias_correction(w: np.ndarray, wq: np.ndarray | QParams, x_mean: np.ndarray, layout: str = "conv",
                    groups: int = 1) -> np.ndarray:
    """Bias delta ``-(Wq - W) E[x]`` per output channel, so ``E[Wq x + b + delta] = E[W x + b]``.

    ``wq`` is the dequantized weight, or QParams to fake-quantize ``w`` with. ``x_mean``: expected
    input per input channel (``[C]``; for 'conv' also ``[C, kh, kw]`` per kernel position).
    """
    _layout(layout)
    w = np.asarray(w, dtype=np.float64)
    wq = fake_quant(w, wq) if isinstance(wq, QParams) else np.asarray(wq)
    if wq.shape != w.shape:
        raise ConfigError(f"quantized weight shape {wq.shape} != weight shape {w.shape}", where="wq")
    err = wq.astype(np.float64) - w
    m = np.asarray(x_mean, dtype=np.float64)
    if layout != "conv":
        rows = weight_to_rows(err, layout)
        if m.shape != (rows.shape[1],):
            raise DataError(f"input mean has shape {m.shape}, layer has {rows.shape[1]} inputs", where="x_mean")
        return -rows @ m
    k, cg = w.shape[:2]
    if k % groups:
        raise ConfigError(f"{k} output channels not divisible by group={groups}", where="groups")
    if m.shape[0] != cg * groups or m.ndim not in (1, w.ndim - 1) or (m.ndim > 1 and m.shape[1:] != w.shape[2:]):
        raise DataError(f"input mean has shape {m.shape}, conv needs [{cg * groups}] or [{cg * groups}, *kernel]",
                        where="x_mean")
    m = m.reshape(groups, cg, *m.shape[1:])[np.arange(k) // (k // groups)]  # [K, C/g(, kh, kw)]
    if m.ndim == 2:
        return -(err.reshape(k, cg, -1).sum(axis=2) * m).sum(axis=1)
    return -(err * m).reshape(k, -1).sum(axis=1)


def column_quantizer(qp: QParams) -> Callable[[np.ndarray, int], np.ndarray]:
    """GPTQ quantizer for ``[out, in]`` rows with ``qp`` per tensor, per row (axis 0, scale ``[out]``)
    or block-wise along the input (axis 1, scale ``[out, ceil(in / block)]``)."""
    per_row = qp.axis == 0 and qp.block_size is None
    blocked = qp.axis == 1 and qp.block_size is not None
    if not (qp.axis is None or per_row or blocked):
        raise ConfigError("GPTQ needs per-tensor, per-row (axis 0) or block-along-input (axis 1) parameters",
                          where="QParams.axis")

    def quant(col: np.ndarray, j: int) -> np.ndarray:
        if blocked:
            b = j // qp.block_size
            sub = QParams(qp.scale[:, b], qp.zero_point[:, b], qp.bits, qp.signed, 0, None)
        else:
            sub = qp
        return fake_quant(col, sub).astype(np.float64)

    return quant


def gptq_quantize(w_rows: np.ndarray, H: np.ndarray, quantizer: Callable[[np.ndarray, int], np.ndarray],
                  blocksize: int = 128, percdamp: float = 0.01, act_order: bool = False) -> np.ndarray:
    """GPTQ: quantize ``W[out, in]`` column by column with error feedback through ``H^-1``.

    ``quantizer(col, j)`` returns the dequantized column ``j`` (original index) of ``out`` values.
    Returns the dequantized ``Wq`` (float64, ``[out, in]``).
    """
    W = np.array(w_rows, dtype=np.float64)
    H = np.array(H, dtype=np.float64)
    if W.ndim != 2 or H.shape != (W.shape[1], W.shape[1]):
        raise DataError(f"Hessian shape {H.shape} does not match weight rows {W.shape}", where="H")
    if not (np.all(np.isfinite(H)) and np.all(np.isfinite(W))):
        raise DataError("weight or Hessian contains inf or NaN", where="H")
    n = W.shape[1]
    dead = np.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    perm = np.argsort(-np.diag(H), kind="stable") if act_order else np.arange(n)
    W, H = W[:, perm], H[np.ix_(perm, perm)]
    Hinv = _inverse_cholesky_upper(H, percdamp)
    Q = np.zeros_like(W)
    for i1 in range(0, n, blocksize):
        i2 = min(i1 + blocksize, n)
        W1 = W[:, i1:i2].copy()
        E1 = np.zeros_like(W1)
        Hi = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = W1[:, i]
            q = np.asarray(quantizer(col.copy(), int(perm[i1 + i])), dtype=np.float64).reshape(col.shape)
            Q[:, i1 + i] = q
            e = (col - q) / Hi[i, i]
            W1[:, i:] -= np.outer(e, Hi[i, i:])
            E1[:, i] = e
        W[:, i2:] -= E1 @ Hinv[i1:i2, i2:]
    out = np.empty_like(Q)
    out[:, perm] = Q
    return out


def _inverse_cholesky_upper(H: np.ndarray, percdamp: float) -> np.ndarray:
    """Upper Cholesky factor U of (H + damp I)^-1 (U^T U = H^-1); damping grows x10 if H is singular."""
    mean_diag = float(np.mean(np.diag(H)))
    damp = percdamp * mean_diag
    for _ in range(6):
        try:
            L = np.linalg.cholesky(H + damp * np.eye(len(H)))
            Linv = np.linalg.solve(L, np.eye(len(H)))  # inverse of lower-triangular L
            Hinv = Linv.T @ Linv
            return np.linalg.cholesky(Hinv).T
        except np.linalg.LinAlgError:
            damp = max(damp * 10.0, 1e-8 * max(mean_diag, 1.0))
    raise DataError("Hessian is not positive definite even with damping", where="H",
                    hint="collect more calibration samples or raise percdamp")


class HessianAccumulator:
    """Streams rows ``X`` (samples x in-features) into ``H = 2 X^T X / n`` and the column means.

    Keeps float64 sums ``S = X^T X``, ``sum x`` and ``n``; merging adds them, so the result equals
    accumulating the concatenated data (up to float64 summation order, ~1e-16 relative).
    """

    def __init__(self, n_features: int | None = None):
        self.n_features = n_features
        self.count = 0
        self.xtx: np.ndarray | None = None
        self.xsum: np.ndarray | None = None

    def update(self, x: np.ndarray) -> "HessianAccumulator":
        x = np.asarray(x, dtype=np.float64)
        x = x.reshape(-1, x.shape[-1]) if x.ndim != 2 else x
        if self.n_features is None:
            self.n_features = x.shape[1]
        if x.shape[1] != self.n_features:
            raise DataError(f"rows have {x.shape[1]} features, expected {self.n_features}", where="hessian")
        if self.xtx is None:
            self.xtx = np.zeros((self.n_features, self.n_features))
            self.xsum = np.zeros(self.n_features)
        self.xtx += x.T @ x
        self.xsum += x.sum(axis=0)
        self.count += x.shape[0]
        return self

    def merge(self, other: "HessianAccumulator") -> "HessianAccumulator":
        if other.count == 0:
            return self
        if self.count == 0:
            self.n_features, self.count = other.n_features, other.count
            self.xtx, self.xsum = other.xtx.copy(), other.xsum.copy()
            return self
        if other.n_features != self.n_features:
            raise DataError(f"cannot merge Hessians of {self.n_features} and {other.n_features} features",
                            where="hessian")
        self.xtx += other.xtx
        self.xsum += other.xsum
        self.count += other.count
        return self

    def hessian(self) -> np.ndarray:
        if self.count == 0:
            raise DataError("no rows were accumulated", where="hessian")
        return 2.0 * self.xtx / self.count

    def mean(self) -> np.ndarray:
        if self.count == 0:
            raise DataError("no rows were accumulated", where="hessian")
        return self.xsum / self.count


def least_squares_refit(X: np.ndarray, Y: np.ndarray, mask: np.ndarray | None = None,
                        ridge: float = 1e-6) -> np.ndarray:
    """``W[out, in]`` minimizing ``||X W^T - Y||^2`` per row with only ``mask``-ed weights free.

    ``X [n, in]``, ``Y [n, out]``, ``mask [out, in]`` (bool; None = dense). Masked-out weights are 0.
    """
    X = np.asarray(X, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    if X.ndim != 2 or Y.ndim != 2 or X.shape[0] != Y.shape[0]:
        raise DataError(f"X {X.shape} and Y {Y.shape} must be [n, in] and [n, out]", where="least_squares_refit")
    return refit_from_gram(X.T @ X, X.T @ Y, mask, ridge)


def refit_from_gram(G: np.ndarray, C: np.ndarray, mask: np.ndarray | None = None, ridge: float = 1e-6,
                    prior: np.ndarray | None = None) -> np.ndarray:
    """Same as :func:`least_squares_refit` from ``G = X^T X [in, in]`` and ``C = X^T Y [in, out]``.

    Rows sharing a mask are solved together (one factorization per distinct mask). ``prior``
    (``[out, in]``): the ridge pulls toward it instead of toward 0 (module docstring).
    """
    if prior is not None:
        G = np.asarray(G, dtype=np.float64)
        lam = ridge * max(float(np.mean(np.diag(G))), 1e-30)
        prior = np.asarray(prior, dtype=np.float64)
        if prior.shape != (np.shape(C)[1], np.shape(C)[0]):
            raise DataError(f"prior shape {prior.shape}, expected {(np.shape(C)[1], np.shape(C)[0])}", where="prior")
        C = np.asarray(C, dtype=np.float64) + lam * prior.T
    G = np.asarray(G, dtype=np.float64)
    C = np.asarray(C, dtype=np.float64)
    n_in, n_out = C.shape
    if G.shape != (n_in, n_in):
        raise DataError(f"Gram matrix {G.shape} does not match X^T Y {C.shape}", where="least_squares_refit")
    lam = ridge * max(float(np.mean(np.diag(G))), 1e-30)
    A = G + lam * np.eye(n_in)
    if mask is None:
        return np.linalg.solve(A, C).T
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != (n_out, n_in):
        raise DataError(f"mask shape {mask.shape}, expected {(n_out, n_in)}", where="mask")
    W = np.zeros((n_out, n_in))
    patterns, inverse = np.unique(mask, axis=0, return_inverse=True)
    for p, pat in enumerate(patterns):
        rows = np.nonzero(inverse.reshape(-1) == p)[0]
        free = np.nonzero(pat)[0]
        if free.size == 0:
            continue
        W[np.ix_(rows, free)] = np.linalg.solve(A[np.ix_(free, free)], C[np.ix_(free, rows)]).T
    return W


def sparsegpt_prune(w_rows: np.ndarray, H: np.ndarray, groups: np.ndarray, n: int, *,
                    prev: np.ndarray | None = None, blocksize: int = 128,
                    percdamp: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """SparseGPT N:M: ``(W', keep)`` for ``W[out, in]`` and ``H = X^T X [in, in]`` (any scale).

    ``groups [g, M]``: column indices of every N:M group (each row of a group keeps ``n`` of its
    ``M`` weights); columns in no group are never pruned and still absorb error (e.g. an intercept
    column of ones). ``prev`` (bool ``[out, in]``): weights already pruned stay pruned (their
    saliency is -inf, so a group prunes them first). Columns are visited group by group, then the
    never-pruned ones, so a trailing intercept column takes the mean of every error.
    ``W'`` minimises ``||X W^T - X W'^T||`` greedily (module docstring); pruned entries are exactly 0.
    """
    W = np.array(w_rows, dtype=np.float64)
    H = np.array(H, dtype=np.float64)
    groups = np.asarray(groups, dtype=np.int64)
    out, d = W.shape
    if H.shape != (d, d):
        raise DataError(f"Hessian shape {H.shape} does not match weight rows {W.shape}", where="H")
    if groups.ndim != 2 or not 0 < n < groups.shape[1]:
        raise ConfigError(f"groups must be [g, M] with 0 < n < M, got {groups.shape} and n={n}", where="groups")
    m = groups.shape[1]
    flat = groups.ravel()
    if len(np.unique(flat)) != flat.size or flat.min(initial=0) < 0 or flat.max(initial=0) >= d:
        raise ConfigError("group columns must be distinct indices of the weight's input axis", where="groups")
    if not (np.all(np.isfinite(H)) and np.all(np.isfinite(W))):
        raise DataError("weight or Hessian contains inf or NaN", where="H")
    rest = np.setdiff1d(np.arange(d), flat)
    perm = np.concatenate([flat, rest])
    ng = flat.size
    W, H = W[:, perm], H[np.ix_(perm, perm)]
    forced = np.zeros((out, d), bool) if prev is None else ~np.asarray(prev, bool)[:, perm]
    dead = np.diag(H) <= 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    U = _inverse_cholesky_upper(H, percdamp)
    keep = np.ones((out, d), bool)
    bs = max(m, blocksize - blocksize % m)
    for i1 in range(0, ng, bs):
        i2 = min(i1 + bs, ng)
        W1 = W[:, i1:i2].copy()
        E1 = np.zeros_like(W1)
        U1 = U[i1:i2, i1:i2]
        for i in range(0, i2 - i1, m):
            j = i1 + i
            k, e = _group_step(W1[:, i:i + m], U1[i:i + m, i:i + m], n, forced[:, j:j + m])
            keep[:, j:j + m] = k
            W1[:, i:] -= e @ U1[i:i + m, i:]
            W1[:, i:i + m][~k] = 0.0
            E1[:, i:i + m] = e
        W[:, i1:i2] = W1
        W[:, i2:] -= E1 @ U[i1:i2, i2:]
    W[~keep] = 0.0
    res, kres = np.empty_like(W), np.empty_like(keep)
    res[:, perm], kres[:, perm] = W, keep
    return res, kres


def _group_step(w: np.ndarray, Ug: np.ndarray, n: int, forced: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One group of ``M`` columns: ``(keep [out, M], E [out, M])``. Per row, the ``M - n`` weights ``P``
    to prune are those of least joint OBS error ``w_P^T [(H_F^-1)_PP]^-1 w_P`` (``F`` = the columns
    not yet visited, ``(H_F^-1)`` on the group = ``Ug^T Ug``), every pattern tried; the optimal update
    of all of ``F`` is ``-E U[group, F]`` with ``E = Ug[:, P] (H_F^-1)_PP^-1 w_P``. Rows with
    forced-pruned weights only consider patterns that prune them (all, if there are more than
    ``M - n``: then the group prunes exactly those)."""
    out, m = w.shape
    A = Ug.T @ Ug
    nf = forced.sum(axis=1)
    pats = [list(c) for c in itertools.combinations(range(m), m - n)]
    cost = np.empty((out, len(pats)))
    for t, P in enumerate(pats):
        wp = w[:, P]
        cost[:, t] = np.einsum("ri,ij,rj->r", wp, np.linalg.inv(A[np.ix_(P, P)]), wp)
        cost[forced[:, P].sum(axis=1) < np.minimum(nf, m - n), t] = np.inf
    best = np.argmin(cost, axis=1)
    keep = np.ones((out, m), bool)
    E = np.zeros((out, m))
    for t, P in enumerate(pats):
        rows = np.nonzero(best == t)[0]
        keep[np.ix_(rows, P)] = False
    over = np.nonzero(nf > m - n)[0]
    keep[over] = ~forced[over]
    for r_pat in {tuple(np.nonzero(~k)[0]) for k in keep}:    # distinct pruned patterns
        P = list(r_pat)
        rows = np.nonzero(np.all(keep == np.isin(np.arange(m), P, invert=True), axis=1))[0]
        if not P or rows.size == 0:
            continue
        v = w[np.ix_(rows, P)] @ np.linalg.inv(A[np.ix_(P, P)])
        E[rows] = v @ Ug[:, P].T
    return keep, E
