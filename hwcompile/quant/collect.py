"""Calibration collection: run the float graph over data and stream per-tensor statistics.

An interpreter over the Graph (backed by onnxruntime for speed): the tensors of interest are made
extra outputs of an in-memory copy of the model, never saved to disk, and each batch's values are
folded into mergeable statistics (``TensorStats``) and dropped, so memory does not grow with the
number of samples. ``visit`` callbacks see each batch's values too (Hessians for GPTQ, input
means for bias correction) and must also stream.
"""
from __future__ import annotations

from typing import Callable, Iterable, Mapping

import numpy as np
import onnx
import onnxruntime as ort

from ..data import Dataset, as_feeds, iterate
from .. import ort_guard
from ..errors import DataError
from ..ir import Graph, to_proto
from .observers import TensorStats

__all__ = ["collect_stats", "in_memory_session", "run_with_outputs", "session_with_outputs"]

Visit = Callable[[Mapping[str, np.ndarray]], None]


def session_with_outputs(graph: Graph, names: list[str]) -> ort.InferenceSession:
    """An in-memory onnxruntime session of ``graph`` that also returns the tensors ``names``."""
    proto = to_proto(graph)
    existing = {o.name for o in proto.graph.output}
    for n in names:
        if n not in existing:
            proto.graph.output.append(onnx.ValueInfoProto(name=n))
    return in_memory_session(proto)


def in_memory_session(proto: onnx.ModelProto) -> ort.InferenceSession:
    """A CPU session of ``proto`` as written (basic optimizations only, so every requested tensor
    survives), never saved to disk; intra-op spinning off (see ``backends.onnxruntime.session_options``:
    these sessions share the process with timed ones)."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.log_severity_level = 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort_guard.session(proto.SerializeToString(), so, ["CPUExecutionProvider"], where="calibration graph")


def run_with_outputs(graph: Graph, data: Dataset | Iterable[Mapping[str, np.ndarray]], names: list[str],
                     visit: Visit, *, batch_size: int = 8, limit: int | None = None,
                     session: ort.InferenceSession | None = None) -> int:
    """Run the graph over ``data``; call ``visit`` with {name: value} (and the inputs) per batch.
    ``session``: one that computes ``names`` (default: the whole graph with them as outputs); with no
    names nothing runs and ``visit`` sees the inputs only."""
    sess = session if session is not None else (session_with_outputs(graph, names) if names else None)
    batch_size = graph.fixed_batch() or batch_size  # a fixed-batch export takes exactly that many per run
    if limit is not None and hasattr(data, "take"):
        data = data.take(limit)    # the same samples whatever the batch size
    seen = 0
    for batch in iterate(data, batch_size):
        feeds = as_feeds(batch, graph)
        outs = ort_guard.run(sess, names, feeds, where="calibration graph") if sess is not None else []
        visit({**feeds, **dict(zip(names, outs))})
        seen += len(next(iter(feeds.values())))
        if limit is not None and seen >= limit:
            break
    if seen == 0:
        raise DataError("calibration data is empty", where="--calib")
    return seen


def collect_stats(graph: Graph, data, tensors: list[str], *, bins: int = 2048, batch_size: int = 8,
                  limit: int | None = None, extra: Visit | None = None) -> dict[str, TensorStats]:
    """Streaming statistics for each named tensor (graph inputs included)."""
    inputs = {v.name for v in graph.main.inputs}
    outs = [t for t in tensors if t not in inputs]
    stats = {t: TensorStats(bins=bins, name=t) for t in tensors}

    def visit(values: Mapping[str, np.ndarray]) -> None:
        for t in tensors:
            stats[t].update(np.asarray(values[t], dtype=np.float32))
        if extra is not None:
            extra(values)

    run_with_outputs(graph, data, outs, visit, batch_size=batch_size, limit=limit)
    return stats
