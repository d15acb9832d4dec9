"""onnxruntime sessions as hwcompile runs them, from a settings dict (what ``session.json`` records).

Settings: ``graph_optimization_level`` (disable | basic | extended | all, default all),
``intra_op_num_threads`` (0: onnxruntime's default), ``allow_spinning`` (default off). Sessions are
sequential with one inter-op thread. Spinning is off by default because onnxruntime's idle
intra-op workers spin-wait after each run and take the cores from any other session in the
process (the build a measurement alternates with, or a second model); measurements in
``benchmarks/`` quantify it.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import onnxruntime as ort

from . import ort_guard
from .data import Dataset, as_feeds
from .ir import Graph, to_bytes

__all__ = ["LEVELS", "session_options", "cpu_session", "InMemoryRunner"]

LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def session_options(settings: Mapping | None = None) -> ort.SessionOptions:
    """Session options for ``settings`` (module docstring)."""
    settings = settings or {}
    so = ort.SessionOptions()
    so.graph_optimization_level = LEVELS[settings.get("graph_optimization_level", "all")]
    so.intra_op_num_threads = int(settings.get("intra_op_num_threads", 0))
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if settings.get("allow_spinning") else "0")
    return so


def cpu_session(model: bytes | str, settings: Mapping | None = None) -> ort.InferenceSession:
    """A CPU-provider session of a serialized model (or a model path) under ``settings``."""
    where = model if isinstance(model, str) else "in-memory model"
    return ort_guard.session(model, session_options(settings), ["CPUExecutionProvider"], where=where)


class InMemoryRunner:
    """An onnxruntime session on the serialized graph (no files); runs a Dataset, batched if it can."""

    def __init__(self, graph: Graph, settings: Mapping | None = None):
        self.graph = graph
        self.sess = cpu_session(to_bytes(graph), settings)
        dims = [i.shape for i in self.sess.get_inputs()]
        self.batched = all(d and not isinstance(d[0], int) for d in dims)

    def run(self, data: Dataset) -> list[np.ndarray]:
        outs: list[list[np.ndarray]] = []
        for batch in data.batches(batch_size=len(data) if self.batched else 1):
            outs.append(ort_guard.run(self.sess, None, as_feeds(batch, self.graph),
                                      where=self.graph.source or "in-memory graph"))
        return [np.concatenate([o[i] for o in outs]) for i in range(len(outs[0]))]
