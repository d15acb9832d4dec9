"""Pruning masks: N:M structured, per-tensor and global magnitude, and the N:M validity check.

A mask is a boolean array of the weight's shape, True = keep. Scores default to |w|; any
importance score of the same shape can be given instead, e.g. Wanda's
``S_ij = |W_ij| * ||X_j||_2`` (Sun et al. 2023), where ``||X_j||_2`` is the L2 norm over the
calibration tokens of the activation feeding input feature j (``wanda_scores``).

N:M sparsity: along the reduction axis (the one summed over in the dot product: input channels /
the K dimension), every group of M consecutive elements keeps the N with the largest score. This
is the layout sparse tensor cores read (2:4 on Ampere and later): for a Conv weight
[K, C, R, S] TensorRT groups, at every (k, r, s) position, each 4 consecutive input channels c;
for a MatMul B [K, N] the groups run along K; see ``reduction_axis``. If the axis length is not a
multiple of M, ``nm_mask`` raises ConfigError naming the tensor unless ``pad=True``: then the axis
is treated as zero-padded to a multiple of M and the trailing partial group of r < M elements
keeps its top min(N, r) (the padded tensor is valid N:M).

Ties are broken toward the lower index (stable ordering), so masks are deterministic.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ConfigError, DataError, UnsupportedError

__all__ = [
    "NMViolation",
    "nm_mask",
    "magnitude_mask",
    "global_magnitude_masks",
    "check_nm",
    "reduction_axis",
    "wanda_scores",
]


@dataclass(frozen=True)
class NMViolation:
    """A group holding more than N nonzeros. ``index`` is the full index of its first element."""

    index: tuple[int, ...]
    nonzeros: int


def _check_nm_args(n: int, m: int, name: str) -> None:
    if not (isinstance(n, (int, np.integer)) and isinstance(m, (int, np.integer)) and 0 < n < m):
        raise ConfigError(f"N:M sparsity needs integers 0 < N < M, got {n}:{m}", where=name)


def _axis(w: np.ndarray, axis: int, name: str) -> int:
    if not -w.ndim <= axis < w.ndim:
        raise ConfigError(f"axis {axis} out of range for shape {tuple(w.shape)}", where=name)
    return axis % w.ndim


def _scores(w: np.ndarray, score: np.ndarray | None, name: str) -> np.ndarray:
    s = np.abs(w.astype(np.float64)) if score is None else np.asarray(score, dtype=np.float64)
    if s.shape != w.shape:
        raise ConfigError(f"score shape {s.shape} differs from weight shape {w.shape}", where=name)
    if not np.all(np.isfinite(s)):
        raise DataError("scores hold NaN or inf", where=name, hint="check the weights and input norms")
    return s


def nm_mask(w: np.ndarray, n: int = 2, m: int = 4, axis: int = -1, *, score: np.ndarray | None = None,
            pad: bool = False, name: str = "weight") -> np.ndarray:
    """Keep the N highest-score elements of every M consecutive ones along ``axis``."""
    w = np.asarray(w)
    _check_nm_args(n, m, name)
    ax = _axis(w, axis, name)
    s = np.moveaxis(_scores(w, score, name), ax, -1)
    length = s.shape[-1]
    rem = length % m
    if rem and not pad:
        raise ConfigError(f"axis {ax} has length {length}, not a multiple of M={m}", where=name,
                          hint="pass pad=True to treat it as zero-padded, or leave this layer dense")
    if rem:  # padded slots score -inf so they are never preferred over a real element
        s = np.concatenate([s, np.full(s.shape[:-1] + (m - rem,), -np.inf)], axis=-1)
    groups = s.reshape(s.shape[:-1] + (-1, m))
    order = np.argsort(-groups, axis=-1, kind="stable")[..., :n]
    keep = np.zeros(groups.shape, dtype=bool)
    np.put_along_axis(keep, order, True, axis=-1)
    keep = keep.reshape(s.shape)[..., :length]
    return np.moveaxis(keep, -1, ax)


def magnitude_mask(w: np.ndarray, sparsity: float, *, score: np.ndarray | None = None,
                   name: str = "weight") -> np.ndarray:
    """Unstructured: prune exactly round(sparsity * size) lowest-score elements (ties: keep lower index)."""
    w = np.asarray(w)
    return global_magnitude_masks({name: w}, sparsity, scores=None if score is None else {name: score})[name]


def global_magnitude_masks(weights: Mapping[str, np.ndarray], sparsity: float, *,
                           scores: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """One threshold over all tensors: prune exactly round(sparsity * total) lowest-score elements.

    Scores of different tensors are compared directly, so layers with small weights lose more.
    Ties are broken toward the earlier tensor (mapping order) and the lower flat index.
    """
    if not 0.0 <= float(sparsity) <= 1.0:
        raise ConfigError(f"sparsity must be in [0, 1], got {sparsity!r}", where="sparsity")
    arrays = {k: np.asarray(v) for k, v in weights.items()}
    flat = [_scores(a, None if scores is None else scores.get(k), k).ravel() for k, a in arrays.items()]
    allscores = np.concatenate(flat) if flat else np.zeros(0)
    total = allscores.size
    n_keep = total - int(math.floor(float(sparsity) * total + 0.5))
    keep = np.zeros(total, dtype=bool)
    keep[np.argsort(-allscores, kind="stable")[:n_keep]] = True
    out: dict[str, np.ndarray] = {}
    start = 0
    for k, a in arrays.items():
        out[k] = keep[start:start + a.size].reshape(a.shape)
        start += a.size
    return out


def check_nm(w: np.ndarray, n: int = 2, m: int = 4, axis: int = -1, *,
             name: str = "weight") -> list[NMViolation]:
    """Groups of M consecutive elements along ``axis`` with more than N nonzeros (any dtype,
    e.g. float weights or int8 quantized ones). A trailing partial group is checked too, as if
    zero-padded. An empty list means the tensor is valid N:M."""
    w = np.asarray(w)
    _check_nm_args(n, m, name)
    ax = _axis(w, axis, name)
    nz = np.moveaxis(w != 0, ax, -1)
    length = nz.shape[-1]
    rem = length % m
    if rem:
        nz = np.concatenate([nz, np.zeros(nz.shape[:-1] + (m - rem,), dtype=bool)], axis=-1)
    counts = nz.reshape(nz.shape[:-1] + (-1, m)).sum(axis=-1)
    out = []
    for idx in zip(*np.nonzero(counts > n)):
        full = list(int(i) for i in idx[:-1])
        full.insert(ax, int(idx[-1]) * m)
        out.append(NMViolation(tuple(full), int(counts[idx])))
    return out


def reduction_axis(op_type: str, weight_shape: tuple[int, ...] | list[int],
                   attrs: Mapping[str, Any] | None = None, *, name: str = "weight") -> int:
    """The axis of the weight that the op sums over, i.e. where N:M groups run.

    Conv   W [K, C/groups, R, S(, ...)] -> 1: at each (k, r, s), every M consecutive input
           channels form a group (TensorRT's 2:4 layout rule).
    MatMul B [..., K, N] (y = x @ B)    -> ndim - 2 (axis 0 for a 2-D weight): along K.
    Gemm   transB=1: B [N, K] -> 1; transB=0: B [K, N] -> 0 (y = x @ op(B)).
    Other ops raise UnsupportedError.
    """
    attrs = attrs or {}
    shape = tuple(int(d) for d in weight_shape)
    if op_type == "Conv":
        if len(shape) < 3:
            raise ConfigError(f"Conv weight needs rank >= 3, got shape {shape}", where=name)
        return 1
    if op_type == "MatMul":
        if len(shape) < 2:
            raise ConfigError(f"MatMul weight needs rank >= 2, got shape {shape}", where=name)
        return len(shape) - 2
    if op_type == "Gemm":
        if len(shape) != 2:
            raise ConfigError(f"Gemm weight needs rank 2, got shape {shape}", where=name)
        return 1 if int(attrs.get("transB", 0)) else 0
    raise UnsupportedError(f"no N:M reduction axis known for op {op_type!r}", where=name,
                           hint="N:M masks apply to Conv, MatMul and Gemm weights")


def wanda_scores(w: np.ndarray, input_norms: np.ndarray, axis: int, *, name: str = "weight") -> np.ndarray:
    """Wanda importance |W| * ||X||_2, the norm of input feature j broadcast along ``axis`` (the
    reduction axis: ``input_norms[j]`` multiplies every weight that reads input feature j)."""
    w = np.asarray(w)
    ax = _axis(w, axis, name)
    norms = np.asarray(input_norms, dtype=np.float64)
    if norms.shape != (w.shape[ax],):
        raise ConfigError(f"input_norms shape {norms.shape} != ({w.shape[ax]},) for axis {ax}", where=name)
    if np.any(norms < 0) or not np.all(np.isfinite(norms)):
        raise DataError("input norms must be finite and non-negative", where=name)
    shape = [1] * w.ndim
    shape[ax] = -1
    return np.abs(w.astype(np.float64)) * norms.reshape(shape)
