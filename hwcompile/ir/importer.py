"""Import: ONNX file or proto -> Graph, safely.

Preserves what the model computes. Steps: read (refusing missing, truncated and non-ONNX files),
check external-data locations, tensor sizes and graph caps (``safety``: onnx CVE-2022-25882,
CVE-2024-27318, CVE-2026-27489; onnx_ir skips the location checks when its base_dir is empty, so we
check before anything loads; external tensors stay memory-mapped), ``onnx.checker``, refuse ops no schema
knows (naming the node), convert opsets older than ``MIN_OPSET`` with onnx's version converter,
infer shapes, lift initializers out of graph inputs (IR < 4 style), and give every node a unique,
stable name: its layer id.
"""
from __future__ import annotations

import os
from pathlib import Path

import onnx
import onnx_ir as ir
from google.protobuf.message import DecodeError
from onnx import external_data_helper, shape_inference, version_converter

from ..errors import ModelLoadError, UnsupportedError
from .graph import Graph
from .safety import attach_external, check_proto

__all__ = ["load", "from_proto", "MIN_OPSET", "CONTROL_FLOW_OPS"]

MIN_OPSET = 13
CONTROL_FLOW_OPS = ("If", "Loop", "Scan")
_KNOWN_DOMAINS = ("", "ai.onnx", "com.microsoft", "ai.onnx.ml")


def load(path: str | os.PathLike) -> Graph:
    """Load an ONNX file into a Graph. The file is only read, never written."""
    p = Path(path)
    if not p.exists():
        raise ModelLoadError("file not found", where=str(p))
    if not p.is_file():
        raise ModelLoadError("not a file", where=str(p))
    data = p.read_bytes()
    if not data:
        raise ModelLoadError("file is empty", where=str(p))
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as e:
        raise ModelLoadError(f"not a valid ONNX model (truncated or corrupt protobuf: {e})", where=str(p)) from None
    if not proto.HasField("graph") or not proto.graph.node:
        raise ModelLoadError("not an ONNX model (no graph or no nodes)", where=str(p))
    try:
        graph = from_proto(proto, source=str(p), path=p)
    except UnicodeDecodeError as e:  # protobuf decodes string fields (names, attributes) lazily
        raise ModelLoadError(f"a name or string field is not valid UTF-8 ({e.reason} at byte {e.start})",
                             where=str(p)) from None
    attach_external(graph.model, Path(os.path.realpath(p.parent)))
    return graph


def from_proto(proto: onnx.ModelProto, *, source: str = "", normalize: bool = True,
               path: Path | None = None) -> Graph:
    """ModelProto -> Graph. With ``normalize`` the model is checked, converted and renamed
    (``path``: the file it was read from, where onnx's checker finds its external data)."""
    if normalize:
        check_proto(proto, None if path is None else Path(os.path.realpath(Path(path).parent)), source)
        proto = _check_and_convert(proto, source, path)
    model = ir.from_proto(proto)
    graph = Graph(model=model, source=source)
    if normalize:
        _lift_initializer_inputs(graph)
        _name_nodes(graph)
    return graph


def _check_and_convert(proto: onnx.ModelProto, where: str, path: Path | None = None) -> onnx.ModelProto:
    external = path is not None and any(external_data_helper.uses_external_data(t)
                                        for t in external_data_helper._get_all_tensors(proto))
    try:
        onnx.checker.check_model(str(path) if external else proto)
    except onnx.checker.ValidationError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "invalid model"
        raise ModelLoadError(f"ONNX checker rejected the model: {first}", where=where) from None
    for i, node in enumerate(proto.graph.node):
        name = node.name or f"{node.op_type}_{i}"
        if node.domain not in _KNOWN_DOMAINS:
            raise UnsupportedError(f"op {node.domain}::{node.op_type} is from an unknown domain",
                                   where=f"node '{name}'", hint="custom ops need a backend that registers them")
        if node.domain in ("", "ai.onnx") and not onnx.defs.has(node.op_type):
            raise UnsupportedError(f"unknown op {node.op_type!r}", where=f"node '{name}'")
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:
        try:
            proto = version_converter.convert_version(proto, MIN_OPSET)
        except Exception as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UnsupportedError(f"cannot convert opset {opset} to {MIN_OPSET}: {msg}", where=where,
                                   hint="re-export the model at opset >= 13") from None
    if proto.ir_version < 7:
        proto.ir_version = 7
    _unknown_negative_dims(proto.graph)
    try:
        proto = shape_inference.infer_shapes(proto, data_prop=True)
    except Exception as e:  # inconsistent shapes in the file itself
        raise ModelLoadError(f"shape inference failed: {str(e).strip().splitlines()[0]}", where=where) from None
    return proto


def _unknown_negative_dims(graph: onnx.GraphProto) -> None:
    """Exporters (PaddlePaddle, some TF converters) write ``dim_value: -1`` for a dynamic dimension;
    ONNX says dims are non-negative, so make it what it means: an unknown dimension."""
    for value in (*graph.input, *graph.output, *graph.value_info):
        if value.type.HasField("tensor_type") and value.type.tensor_type.HasField("shape"):
            for dim in value.type.tensor_type.shape.dim:
                if dim.HasField("dim_value") and dim.dim_value < 0:
                    dim.Clear()


def _lift_initializer_inputs(graph: Graph) -> None:
    """IR < 4 lists initializers as graph inputs; a compiler treats them as constants."""
    main = graph.main
    keep = [v for v in main.inputs if v.name not in main.initializers]
    if len(keep) != len(main.inputs):
        main.inputs.clear()
        main.inputs.extend(keep)


def _name_nodes(graph: Graph) -> None:
    """Give unnamed and duplicate-named nodes the id ``{op_type}_{index}`` (stable: index in file order)."""
    seen: set[str] = set()
    nodes = list(graph.main)
    taken = {n.name for n in nodes if n.name}
    for i, node in enumerate(nodes):
        name = node.name
        if not name or name in seen:
            base = f"{node.op_type}_{i}"
            name = base
            k = 1
            while name in taken or name in seen:
                name = f"{base}_{k}"
                k += 1
            node.name = name
        seen.add(name)
