"""hwcompile's models for the benchmarks, lowered the way ``hwcompile compile`` lowers them."""
from __future__ import annotations

from pathlib import Path

from hwcompile.backends.onnxruntime import OnnxRuntimeBackend
from hwcompile.ir import Graph
from hwcompile.contract import PrecisionPlan
from hwcompile.targets import load_target


def lower_host_cpu(graph: Graph, directory: Path, plan: PrecisionPlan | None = None) -> Path:
    """The onnxruntime backend's artifact for the host-cpu target in ``directory``; its model path.
    (The backend's lowering is more than saving the graph: see ``hwcompile.backends.ort_layernorm``.)"""
    art = OnnxRuntimeBackend().lower(graph, plan or PrecisionPlan.uniform("fp32"), load_target("host-cpu"),
                                     Path(directory))
    return art.path("model")
