"""An independent numpy reference for the TensorRT-ready ONNX: fake quantization done by hand.

The model is interpreted by ``onnx.reference.ReferenceEvaluator`` (the ONNX project's numpy
implementation of every operator, no onnxruntime code involved), with QuantizeLinear and
DequantizeLinear replaced by the arithmetic TensorRT's explicit quantization implements::

    q  = clip(rint(x / s) + z, lo, hi)        (rint: round half to even, as ONNX specifies)
    x' = (q - z) * s

with ``s``/``z`` broadcast per tensor, per channel on ``axis`` or per block of ``block_size``
along ``axis``. Comparing onnxruntime's output on the same model against this says the model
computes what its Q/DQ say, independently of onnxruntime's Q/DQ kernels and graph optimizations.
Exact agreement is not expected: the two accumulate in different orders, and a value landing on
a rounding boundary can move by one step (``s``) in one of them and propagate.

Slow (numpy loops for Conv): meant for a handful of samples.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import onnx
from onnx import TensorProto

__all__ = ["fake_quant_reference", "compare"]

_RANGES = {TensorProto.INT8: (-128, 127, np.int8), TensorProto.UINT8: (0, 255, np.uint8),
           TensorProto.INT4: (-8, 7, np.int8), TensorProto.UINT4: (0, 15, np.uint8),
           TensorProto.INT16: (-32768, 32767, np.int16), TensorProto.UINT16: (0, 65535, np.uint16)}


def _broadcast(param: np.ndarray, shape: Sequence[int], axis: int, block: int) -> np.ndarray:
    """``param`` (scalar, 1-D per-axis, or block-wise) as an array broadcastable to ``shape``."""
    param = np.asarray(param)
    if param.size == 1 and not block:
        return param.reshape(())
    axis = axis % len(shape)
    if block:
        param = np.repeat(param, block, axis=axis)
        return np.take(param, np.arange(shape[axis]), axis=axis)
    view = [1] * len(shape)
    view[axis] = param.size
    return param.reshape(view)


def _int_value(a: np.ndarray) -> np.ndarray:
    return np.asarray(a).astype(np.int32)  # ml_dtypes int4/uint4 and plain ints alike


def _make_ops():
    from onnx.helper import np_dtype_to_tensor_dtype
    from onnx.reference.op_run import OpRun

    class QuantizeLinear(OpRun):
        op_domain = ""

        def _run(self, x, scale, zero_point=None, axis=1, saturate=True, block_size=0, output_dtype=0,
                 precision=0):
            if zero_point is not None:
                dtype = np_dtype_to_tensor_dtype(zero_point.dtype)
            else:
                dtype = output_dtype or TensorProto.UINT8
            if dtype not in _RANGES:
                raise NotImplementedError(f"numpy reference handles integer Q/DQ only, not {dtype}")
            lo, hi, np_type = _RANGES[dtype]
            s = _broadcast(scale, x.shape, axis, block_size or 0).astype(np.float32)
            z = 0 if zero_point is None else _broadcast(_int_value(zero_point), x.shape, axis, block_size or 0)
            q = np.clip(np.rint(x.astype(np.float32) / s).astype(np.int64) + z, lo, hi)
            if zero_point is not None:
                return (q.astype(zero_point.dtype),)
            return (q.astype(np_type),)

    class DequantizeLinear(OpRun):
        op_domain = ""

        def _run(self, q, scale, zero_point=None, axis=1, block_size=0, output_dtype=0):
            s = _broadcast(scale, q.shape, axis, block_size or 0)
            z = 0 if zero_point is None else _broadcast(_int_value(zero_point), q.shape, axis, block_size or 0)
            return (((_int_value(q) - z).astype(np.float32) * s).astype(scale.dtype),)

    return [QuantizeLinear, DequantizeLinear]


def fake_quant_reference(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """The model's outputs computed in numpy, Q/DQ by the formulas in the module docstring."""
    from onnx.reference import ReferenceEvaluator

    ev = ReferenceEvaluator(model, new_ops=_make_ops())
    names = [i.name for i in model.graph.input]
    return ev.run(None, {k: feeds[k] for k in names if k in feeds})


def compare(got: Sequence[np.ndarray], ref: Sequence[np.ndarray]) -> dict[str, float]:
    """max |got - ref|, that relative to max |ref|, and the mean |got - ref| / max |ref|, over all outputs."""
    diff = max(float(np.max(np.abs(np.asarray(g, np.float64) - np.asarray(r, np.float64)))) for g, r in zip(got, ref))
    scale = max(float(np.max(np.abs(r))) for r in ref) or 1.0
    mean = float(np.mean([np.mean(np.abs(np.asarray(g, np.float64) - r)) for g, r in zip(got, ref)]))
    return {"max_abs_err": diff, "max_rel_err": diff / scale, "mean_abs_err_rel": mean / scale, "ref_max_abs": scale}
