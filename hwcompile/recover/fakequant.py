"""Fake quantization with a straight-through estimator, in torch.

``round_ste`` rounds forward and passes gradients through unchanged; ``fake_quant`` is
``(clamp(round(x / s) + z, lo, hi) - z) * s`` with ``s``/``z`` broadcast along ``axis`` (per-axis)
or repeated over blocks of ``block`` along ``axis`` (block-wise, ONNX ``block_size``). Gradients
are zero where the clamp saturates (the usual clipped STE). The integer range follows the zero
point's ONNX type.
"""
from __future__ import annotations

import torch

__all__ = ["round_ste", "fake_quant", "quantize_ste", "broadcast_param", "INT_RANGES"]

#: ONNX element type name -> (lowest, highest) integer level.
INT_RANGES = {"INT8": (-128, 127), "UINT8": (0, 255), "INT4": (-8, 7), "UINT4": (0, 15),
              "INT16": (-32768, 32767), "UINT16": (0, 65535), "INT32": (-2 ** 31, 2 ** 31 - 1)}


def round_ste(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.round(x) - x).detach()


def broadcast_param(p: torch.Tensor, x: torch.Tensor, axis: int, block: int = 0) -> torch.Tensor:
    """A scale or zero point shaped to broadcast against ``x`` (scalar, per-axis or block-wise)."""
    if p.dim() == 0 or p.numel() == 1 and block == 0:
        return p.reshape(())
    axis = axis % x.dim()
    if block:
        p = torch.repeat_interleave(p, block, dim=axis)
        p = p.narrow(axis, 0, x.shape[axis])
        return p
    shape = [1] * x.dim()
    shape[axis] = -1
    return p.reshape(shape)


def quantize_ste(x, scale, zero, lo: int, hi: int, axis: int = 1, block: int = 0) -> torch.Tensor:
    """The integer levels (as floats) of ``x``, gradient straight through the rounding."""
    s = broadcast_param(scale, x, axis, block)
    z = broadcast_param(zero.to(x.dtype), x, axis, block) if zero is not None else 0.0
    return torch.clamp(round_ste(x / s) + z, lo, hi)


def fake_quant(x, scale, zero, lo: int, hi: int, axis: int = 1, block: int = 0) -> torch.Tensor:
    s = broadcast_param(scale, x, axis, block)
    z = broadcast_param(zero.to(x.dtype), x, axis, block) if zero is not None else 0.0
    return (torch.clamp(round_ste(x / s) + z, lo, hi) - z) * s
