"""hwcompile: a hardware-aware deployment compiler for neural networks.

ONNX in; clean-up, BN folding, quantization and pruning passes driven by a per-layer
PrecisionPlan; lowering through a backend (onnxruntime, TVM, TensorRT) for a target device;
latency measured on that device fed back into the plan.
"""
from .version import __version__

from .errors import HwcompileError  # noqa: E402
from .contract import LayerChoice, PrecisionPlan, QuantSettings  # noqa: E402

__all__ = ["__version__", "HwcompileError", "PrecisionPlan", "LayerChoice", "QuantSettings", "compile", "compile_model",
           "CompileOptions", "CompileResult", "load"]


def __getattr__(name):  # keep `import hwcompile` light: the pipeline pulls in onnxruntime
    if name == "compile":
        from .api import compile

        return compile
    if name == "CompileResult":
        from .pipeline import CompileResult

        return CompileResult
    if name in ("compile_model", "CompileOptions"):
        from . import pipeline

        return getattr(pipeline, name)
    if name == "load":
        from .ir import load

        return load
    raise AttributeError(name)
