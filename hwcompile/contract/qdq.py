"""QDQStyle: how the quantize passes must shape Q/DQ for a backend (passes read it, never a target)."""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["QDQStyle"]


@dataclass(frozen=True)
class QDQStyle:
    """How the quantize pass must shape Q/DQ for a backend."""

    activation_dtype: str = "uint8"      # "uint8" (asymmetric allowed) or "int8"
    weight_dtype: str = "int8"           # Conv weights
    gemm_weight_dtype: str = "int8"      # MatMul/Gemm weights ("uint8": x86 without VNNI saturates u8*s8)
    reduce_range_conv: bool = False      # 7-bit Conv weights in int8: u8*s8 pair sums stay below 2^15
    symmetric_activations: bool = False  # zero points must be 0 (TensorRT)
    quantize_bias: bool = True           # INT32 bias DQ (onnxruntime's integer groups); False: float bias
    allow_dynamic: bool = True           # DynamicQuantizeLinear / MatMulInteger
    allow_contrib_ops: bool = True       # com.microsoft ops (MatMulNBits)
    int8_embeddings: bool = True         # INT8 Gather tables + Cast (False: INT8 only through Q/DQ)
