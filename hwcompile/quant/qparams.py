"""Scale / zero-point math and the numpy reference for QuantizeLinear / DequantizeLinear.

Affine quantization maps ``x`` to ``q = saturate(round_half_even(x / s) + z)`` and back to
``x' = (q - z) * s``. ``round`` and ``saturate`` are exactly ONNX QuantizeLinear's: ``x / s`` is
computed in float32, ties go to the even integer, and ``q`` is clipped to the storage type's range
(int8 [-128, 127], uint8 [0, 255], int4 [-8, 7], uint4 [0, 15], ...). So a Q/DQ model run by
onnxruntime equals :func:`fake_quant` bit for bit (tests/test_quant_qparams.py checks it).

Ranges: a quantization range always contains 0, so that 0 (padding, ReLU zeros) is exact.
Symmetric signed: ``z = 0`` and ``s = max|x| / (2**(b-1) - 1)`` (int8 uses [-127, 127] for the
range; -128 stays reachable only by saturation). Symmetric unsigned: ``z = 2**(b-1)``, same ``s``.
Asymmetric: ``s = (hi - lo) / (qmax - qmin)`` and ``z = clip(round(qmin - lo / s), qmin, qmax)``.

Granularity: per tensor (``axis=None``), per channel (``axis=i``, scale of shape ``[D_i]``), or
block-wise (``axis=i, block_size=B``: scale has x's shape with ``D_i`` replaced by ``ceil(D_i/B)``,
ONNX opset 21 blocked quantization; used for INT4 weight-only along the reduction axis).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError, DataError

__all__ = [
    "QParams",
    "qparams_from_range",
    "weight_qparams",
    "blockwise_qparams",
    "mse_optimal_symmetric_scale",
    "quantize",
    "dequantize",
    "fake_quant",
    "int_range",
]


def int_range(bits: int, signed: bool) -> tuple[int, int]:
    """Saturation range of a ``bits``-wide integer: (qmin, qmax)."""
    if not 2 <= bits <= 16:
        raise ConfigError(f"bits must be in [2, 16], got {bits}", where="bits")
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)


@dataclass
class QParams:
    """Quantization parameters of one tensor. ``scale`` float32, ``zero_point`` int64 values.

    ``axis=None``: per tensor (scalar arrays). ``axis`` set, ``block_size=None``: per channel
    (1-D arrays of length ``x.shape[axis]``). Both set: block-wise (arrays of x's rank).
    """

    scale: np.ndarray
    zero_point: np.ndarray
    bits: int = 8
    signed: bool = True
    axis: int | None = None
    block_size: int | None = None

    def __post_init__(self) -> None:
        self.scale = np.asarray(self.scale, dtype=np.float32)
        self.zero_point = np.asarray(self.zero_point, dtype=np.int64)
        qmin, qmax = int_range(self.bits, self.signed)
        if self.scale.shape != self.zero_point.shape:
            raise ConfigError(f"scale shape {self.scale.shape} != zero_point shape {self.zero_point.shape}",
                              where="QParams.zero_point")
        if not np.all(np.isfinite(self.scale)) or np.any(self.scale <= 0):
            raise ConfigError("scales must be finite and > 0", where="QParams.scale")
        if np.any(self.zero_point < qmin) or np.any(self.zero_point > qmax):
            raise ConfigError(f"zero point outside [{qmin}, {qmax}]", where="QParams.zero_point")
        if self.block_size is not None and (self.axis is None or self.block_size < 1):
            raise ConfigError("block-wise quantization needs an axis and block_size >= 1", where="QParams.block_size")

    @property
    def qmin(self) -> int:
        return int_range(self.bits, self.signed)[0]

    @property
    def qmax(self) -> int:
        return int_range(self.bits, self.signed)[1]

    @property
    def dtype_name(self) -> str:
        """ONNX-style element type name: 'int8', 'uint8', 'int4', 'uint4', 'int16', ..."""
        return f"{'' if self.signed else 'u'}int{self.bits}"

    @property
    def storage_dtype(self) -> np.dtype:
        """numpy dtype that holds the integers (int4 lives in int8, one value per byte)."""
        if self.bits <= 8:
            return np.dtype(np.int8 if self.signed else np.uint8)
        return np.dtype(np.int16 if self.signed else np.uint16)


# -- ranges -> parameters -------------------------------------------------------------------

def qparams_from_range(lo, hi, bits: int = 8, symmetric: bool = True, signed: bool = True,
                       axis: int | None = None) -> QParams:
    """QParams covering [lo, hi] (scalars, or 1-D arrays for per-channel with ``axis``).

    The range is first widened to contain 0. A degenerate range (all zeros) gets scale 1.
    """
    lo = np.minimum(np.asarray(lo, dtype=np.float64), 0.0)
    hi = np.maximum(np.asarray(hi, dtype=np.float64), 0.0)
    if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
        raise DataError("quantization range is not finite", where="range", hint="check calibration data for inf/NaN")
    qmin, qmax = int_range(bits, signed)
    if symmetric:
        amax = np.maximum(-lo, hi)
        half = 2 ** (bits - 1) - 1
        scale = amax / half
        zp = np.zeros_like(scale) if signed else np.full_like(scale, 2 ** (bits - 1))
    else:
        scale = (hi - lo) / (qmax - qmin)
        safe = np.where(scale > 0, scale, 1.0)
        zp = np.clip(np.rint(qmin - lo / safe), qmin, qmax)
    scale = scale.astype(np.float32)
    scale = np.where((scale > 0) & np.isfinite(scale), scale, np.float32(1.0)).astype(np.float32)
    return QParams(scale, zp.astype(np.int64), bits, signed, axis, None)


def _channels(w: np.ndarray, axis: int | None, name: str) -> np.ndarray:
    """w as [C, n] with the channel axis first (C = 1 per tensor)."""
    if axis is None:
        return w.reshape(1, -1)
    if not -w.ndim <= axis < w.ndim:
        raise ConfigError(f"axis {axis} out of range for {name} of shape {w.shape}", where=f"{name}.axis")
    return np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)


def _check_weight(w, name: str) -> np.ndarray:
    w = np.asarray(w, dtype=np.float32)
    if w.size == 0:
        raise DataError("empty weight", where=name)
    if not np.all(np.isfinite(w)):
        raise DataError("weight contains inf or NaN", where=name)
    return w


def weight_qparams(w, bits: int = 8, axis: int | None = 0, symmetric: bool = True, method: str = "minmax",
                   signed: bool | None = None, name: str = "weight") -> QParams:
    """Per-channel (along ``axis``) or per-tensor (``axis=None``) weight parameters.

    ``method='minmax'`` covers each channel's full range; ``'mse'`` clips to the range minimizing
    ``||w - fake_quant(w)||^2`` per channel (:func:`mse_optimal_symmetric_scale`; asymmetric: the
    same search over a common shrink ratio of both ends).
    """
    w = _check_weight(w, name)
    signed = symmetric if signed is None else signed
    rows = _channels(w, axis, name).astype(np.float64)
    ax = None if axis is None else axis % w.ndim
    lo, hi = rows.min(axis=1), rows.max(axis=1)
    if method == "minmax":
        pass
    elif method == "mse":
        if symmetric:
            s = mse_optimal_symmetric_scale(rows, bits, axis=0).astype(np.float64)
            hi = s * (2 ** (bits - 1) - 1)
            lo = -hi
        else:
            r = _search_ratio(rows, lambda rr: qparams_from_range(lo * rr, hi * rr, bits, False, signed, 0), bits)
            lo, hi = lo * r, hi * r
    else:
        raise ConfigError(f"unknown weight method {method!r}", where="method", hint="use 'minmax' or 'mse'")
    qp = qparams_from_range(lo, hi, bits, symmetric, signed, ax)
    if axis is None:
        qp = QParams(qp.scale.reshape(()), qp.zero_point.reshape(()), bits, signed, None, None)
    return qp


def blockwise_qparams(w, bits: int = 4, block_size: int = 32, axis: int = -1, symmetric: bool = True,
                      method: str = "minmax", name: str = "weight") -> QParams:
    """Block-wise parameters: one scale per ``block_size`` consecutive elements along ``axis``.

    The last block is padded with zeros (which never change a block's range: ranges contain 0).
    Scale shape is ``w.shape`` with ``D = w.shape[axis]`` replaced by ``ceil(D / block_size)``.
    """
    w = _check_weight(w, name)
    if block_size < 1:
        raise ConfigError(f"block_size must be >= 1, got {block_size}", where="block_size")
    if not -w.ndim <= axis < w.ndim:
        raise ConfigError(f"axis {axis} out of range for {name} of shape {w.shape}", where=f"{name}.axis")
    ax = axis % w.ndim
    d = w.shape[ax]
    nb = -(-d // block_size)
    moved = np.moveaxis(w, ax, -1)
    padded = np.zeros(moved.shape[:-1] + (nb * block_size,), dtype=np.float32)
    padded[..., :d] = moved
    blocks = padded.reshape(-1, block_size)  # [prod(other) * nb, block]
    flat = weight_qparams(blocks, bits, axis=0, symmetric=symmetric, method=method, name=name)
    shape = moved.shape[:-1] + (nb,)
    scale = np.moveaxis(flat.scale.reshape(shape), -1, ax)
    zp = np.moveaxis(flat.zero_point.reshape(shape), -1, ax)
    return QParams(scale, zp, bits, flat.signed, ax, block_size)


def mse_optimal_symmetric_scale(w, bits: int, axis: int | None = None, grid: int = 100,
                                refine_steps: int = 24) -> np.ndarray:
    """Symmetric scale per channel (``axis``) or per tensor minimizing ``||w - fake_quant(w; s)||^2``.

    The clip threshold is ``T = r * max|w|`` with ``s = T / (2**(b-1) - 1)``. The error as a function
    of ``r`` is piecewise smooth and not unimodal (rounding boundaries move), so first a grid over
    ``r in (0, 1]`` (``grid`` points) finds the best basin, then golden-section search refines ``r``
    within one grid step on each side; the refined ratio is kept only where it is no worse. The error
    is measured with the exact saturating rounding of :func:`quantize`.
    """
    w = np.asarray(w, dtype=np.float64)
    rows = _channels(w, axis, "weight")
    amax = np.abs(rows).max(axis=1)
    half = 2 ** (bits - 1) - 1
    qmin, qmax = int_range(bits, True)

    def err(r: np.ndarray) -> np.ndarray:
        s = np.maximum(r * amax, 1e-30) / half
        s32 = s.astype(np.float32).astype(np.float64)[:, None]
        q = np.clip(np.rint((rows / s32).astype(np.float32)), qmin, qmax)
        return ((rows - q * s32) ** 2).sum(axis=1)

    ratios = np.linspace(1.0 / grid, 1.0, grid)
    errs = np.stack([err(np.full(len(amax), r)) for r in ratios])  # [grid, C]
    best_i = errs.argmin(axis=0)
    best_r, best_e = ratios[best_i], errs[best_i, np.arange(len(amax))]
    step = 1.0 / grid
    a, b = np.maximum(best_r - step, 1e-6), np.minimum(best_r + step, 1.0)
    g = (np.sqrt(5.0) - 1.0) / 2.0
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = err(c), err(d)
    for _ in range(refine_steps):
        left = fc < fd
        b = np.where(left, d, b)
        a = np.where(left, a, c)
        c_new, d_new = b - g * (b - a), a + g * (b - a)
        # reuse the interior point that survives, evaluate the other
        c, d = np.where(left, c_new, d), np.where(left, c, d_new)
        fc, fd = np.where(left, err(c), fd), np.where(left, fc, err(d))
    r_ref = np.where(fc < fd, c, d)
    e_ref = np.minimum(fc, fd)
    r = np.where(e_ref < best_e, r_ref, best_r)
    scale = np.maximum(r * amax, 0.0) / half
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    return scale.reshape(()) if axis is None else scale


def _search_ratio(rows: np.ndarray, make, bits: int, grid: int = 100) -> np.ndarray:
    """Per-row shrink ratio (grid search) minimizing fake-quant error for ``make(ratio) -> QParams``."""
    best_r = np.ones(rows.shape[0])
    best_e = np.full(rows.shape[0], np.inf)
    for r in np.linspace(1.0 / grid, 1.0, grid):
        qp = make(r)
        e = ((fake_quant(rows.astype(np.float32), qp).astype(np.float64) - rows) ** 2).sum(axis=1)
        better = e < best_e
        best_r, best_e = np.where(better, r, best_r), np.where(better, e, best_e)
    return best_r


# -- quantize / dequantize --------------------------------------------------------------------

def _broadcast(a: np.ndarray, qp: QParams, shape: tuple[int, ...]) -> np.ndarray:
    """Per-element view of a scale or zero-point array for a tensor of ``shape``."""
    if qp.axis is None:
        if a.size != 1:
            raise ConfigError(f"per-tensor parameters must be scalars, got shape {a.shape}", where="QParams.axis")
        return a.reshape(())
    ax = qp.axis % len(shape)
    d = shape[ax]
    if qp.block_size is None:
        if a.size != d:
            raise ConfigError(f"{a.size} per-channel parameters for axis {ax} of length {d}", where="QParams.scale")
        view = [1] * len(shape)
        view[ax] = d
        return a.reshape(view)
    nb = -(-d // qp.block_size)
    expect = shape[:ax] + (nb,) + shape[ax + 1:]
    if a.shape != expect:
        raise ConfigError(f"block scales of shape {a.shape}, expected {expect}", where="QParams.scale")
    return np.repeat(a, qp.block_size, axis=ax).take(np.arange(d), axis=ax)


def quantize(x, qp: QParams) -> np.ndarray:
    """``saturate(round_half_even(x / s) + z)`` exactly as ONNX QuantizeLinear (float32 division)."""
    x = np.asarray(x, dtype=np.float32)
    s = _broadcast(qp.scale, qp, x.shape)
    z = _broadcast(qp.zero_point, qp, x.shape).astype(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        v = np.rint(x / s) + z
    return np.clip(v, qp.qmin, qp.qmax).astype(qp.storage_dtype)


def dequantize(q, qp: QParams) -> np.ndarray:
    """``(q - z) * s`` in float32, as ONNX DequantizeLinear."""
    q = np.asarray(q)
    s = _broadcast(qp.scale, qp, q.shape)
    z = _broadcast(qp.zero_point, qp, q.shape)
    return ((q.astype(np.int32) - z.astype(np.int32)).astype(np.float32) * s).astype(np.float32)


def fake_quant(x, qp: QParams) -> np.ndarray:
    """``dequantize(quantize(x))``: what a QuantizeLinear -> DequantizeLinear pair computes."""
    return dequantize(quantize(x, qp), qp)
