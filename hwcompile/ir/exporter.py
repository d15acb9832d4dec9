"""Export: Graph -> ONNX, deterministic and atomic.

Preserves the graph exactly. Node order is the graph's (topological) order; initializers are
sorted by name and metadata is fixed, so the same Graph always gives the same bytes. Files are
written to a temporary name beside the destination and renamed into place when complete.
"""
from __future__ import annotations

import os
from pathlib import Path

import onnx
import onnx_ir as ir

from ..atomic import atomic_path
from .graph import Graph

__all__ = ["to_proto", "save", "to_bytes"]

_EXTERNAL_THRESHOLD = 1_800_000_000  # protobuf's 2 GiB limit, with margin


def to_proto(graph: Graph) -> onnx.ModelProto:
    proto = ir.to_proto(graph.model)
    inits = sorted(proto.graph.initializer, key=lambda t: t.name)
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(inits)
    if not proto.producer_name:
        proto.producer_name = "hwcompile"
    return proto


def to_bytes(graph: Graph) -> bytes:
    return to_proto(graph).SerializeToString(deterministic=True)


def save(graph: Graph | onnx.ModelProto, path: str | os.PathLike) -> Path:
    """Write ``graph`` to ``path`` atomically; large models get one external-data file beside it."""
    proto = to_proto(graph) if isinstance(graph, Graph) else graph
    dest = Path(path)
    with atomic_path(dest) as tmp:
        if proto.ByteSize() > _EXTERNAL_THRESHOLD:
            data_name = dest.name + ".data"
            onnx.save_model(proto, str(tmp), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=data_name + ".tmp")
            os.replace(dest.parent / (data_name + ".tmp"), dest.parent / data_name)
            _rename_location(str(tmp), data_name)
        else:
            tmp.write_bytes(proto.SerializeToString(deterministic=True))
    return dest


def _rename_location(model_path: str, new_location: str) -> None:
    m = onnx.load_model(model_path, load_external_data=False)
    for t in onnx.external_data_helper._get_all_tensors(m):
        for e in t.external_data:
            if e.key == "location":
                e.value = new_location
    with open(model_path, "wb") as f:
        f.write(m.SerializeToString(deterministic=True))
