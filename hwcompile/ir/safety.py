"""Checks on an untrusted ModelProto before anything else reads it, and lazy external data.

- External data: every location must be a plain relative path to a regular file inside the
  model's folder (no ``..``, absolute paths, drive letters, symlinked components, devices or
  pipes), and the bytes it names (offset, length) must exist and match the tensor's declared
  shape and dtype. Checked here, whatever onnx or onnx_ir would allow.
- Inline tensors: the stored values must match the declared shape and dtype.
- Caps: nodes (all graphs together), subgraph nesting depth, elements of a graph input.
- External tensors are left in their files and read through memory maps on first use
  (``attach_external``), so a large model is not held in memory next to its own copy.
"""
from __future__ import annotations

import math
import os
import stat
from pathlib import Path
from typing import Iterator

import onnx
import onnx_ir as ir

from ..errors import ModelLoadError

__all__ = ["check_proto", "attach_external", "MAX_NODES", "MAX_DEPTH", "MAX_INPUT_ELEMENTS"]

MAX_NODES = 1_000_000
MAX_DEPTH = 16
MAX_INPUT_ELEMENTS = 2 ** 31
_VALUE_FIELDS = ("float_data", "int32_data", "string_data", "int64_data", "double_data", "uint64_data")


def check_proto(proto: onnx.ModelProto, base: Path | None, where: str) -> None:
    """ModelLoadError naming the tensor, node or input that breaks a rule (``base``: the model's
    folder, None for an in-memory model, which then may not use external data)."""
    count = 0
    for graph, depth in _graphs(proto.graph, 0):
        if depth > MAX_DEPTH:
            raise ModelLoadError(f"subgraphs nested deeper than {MAX_DEPTH} levels (graph '{graph.name}')",
                                 where=where)
        count += len(graph.node)
        if count > MAX_NODES:
            raise ModelLoadError(f"more than {MAX_NODES:,} nodes", where=where)
    for tensor, owner in _tensors(proto.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            if base is None:
                raise ModelLoadError(f"tensor '{tensor.name}' ({owner}) uses external data but the model was "
                                     "not loaded from a file", where=where)
            _check_external(tensor, owner, base, where)
        else:
            _check_inline(tensor, owner, where)
    for value in proto.graph.input:
        dims = value.type.tensor_type.shape.dim if value.type.HasField("tensor_type") else []
        known = [d.dim_value for d in dims if d.HasField("dim_value")]
        if known and math.prod(max(d, 1) for d in known) > MAX_INPUT_ELEMENTS:
            raise ModelLoadError(f"input '{value.name}' declares shape {known} (more than {MAX_INPUT_ELEMENTS:,} "
                                 "elements)", where=where)


def _graphs(graph: onnx.GraphProto, depth: int) -> Iterator[tuple[onnx.GraphProto, int]]:
    stack = [(graph, depth)]
    while stack:
        g, d = stack.pop()
        yield g, d
        if d > MAX_DEPTH:
            return
        for node in g.node:
            for a in node.attribute:
                stack.extend((s, d + 1) for s in ([a.g] if a.HasField("g") else []) + list(a.graphs))


def _tensors(graph: onnx.GraphProto) -> Iterator[tuple[onnx.TensorProto, str]]:
    for g, _ in _graphs(graph, 0):
        for t in g.initializer:
            yield t, f"initializer of graph '{g.name}'"
        for s in g.sparse_initializer:
            yield s.values, f"sparse initializer of graph '{g.name}'"
            yield s.indices, f"sparse initializer of graph '{g.name}'"
        for node in g.node:
            for a in node.attribute:
                owner = f"attribute '{a.name}' of node '{node.name or node.op_type}'"
                if a.HasField("t"):
                    yield a.t, owner
                for t in a.tensors:
                    yield t, owner


def _declared_bytes(tensor: onnx.TensorProto, owner: str, where: str) -> tuple[int, float | None]:
    """(elements, bytes per element or None for strings)."""
    if any(d < 0 for d in tensor.dims):
        raise ModelLoadError(f"tensor '{tensor.name}' ({owner}) has a negative dimension {list(tensor.dims)}",
                             where=where)
    try:
        dtype = ir.DataType(tensor.data_type)
    except ValueError:
        raise ModelLoadError(f"tensor '{tensor.name}' ({owner}) has unknown data_type {tensor.data_type}",
                             where=where) from None
    if dtype == ir.DataType.UNDEFINED:
        raise ModelLoadError(f"tensor '{tensor.name}' ({owner}) has no data_type", where=where)
    n = math.prod(tensor.dims)
    return n, None if dtype == ir.DataType.STRING else dtype.itemsize


def _check_inline(tensor: onnx.TensorProto, owner: str, where: str) -> None:
    n, itemsize = _declared_bytes(tensor, owner, where)
    what = f"tensor '{tensor.name}' ({owner}) declares shape {list(tensor.dims)}"
    if tensor.HasField("raw_data"):
        want = math.ceil(n * itemsize) if itemsize is not None else None
        if want is None or len(tensor.raw_data) != want:
            raise ModelLoadError(f"{what} ({want} bytes) but holds {len(tensor.raw_data)} bytes", where=where)
        return
    values = sum(len(getattr(tensor, f)) for f in _VALUE_FIELDS)
    if itemsize is not None and itemsize < 1:  # 4-bit types: two per stored value
        n = math.ceil(n * itemsize)
    if tensor.data_type in (onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128):
        n *= 2
    if values != n:
        raise ModelLoadError(f"{what} ({n} values) but holds {values}", where=where)


def _check_external(tensor: onnx.TensorProto, owner: str, base: Path, where: str) -> None:
    info = {e.key: e.value for e in tensor.external_data}
    loc = info.get("location", "")
    name = f"tensor '{tensor.name}' ({owner})"
    hint = "store external data as plain files beside the model"
    if (not loc or "\0" in loc or os.path.isabs(loc) or loc.startswith(("/", "\\")) or ":" in loc
            or ".." in Path(loc.replace("\\", "/")).parts):
        raise ModelLoadError(f"external data location {loc!r} of {name} leaves the model's folder",
                             where=where, hint=hint)
    cur = base
    for part in Path(loc).parts:
        cur = cur / part
        if cur.is_symlink():
            raise ModelLoadError(f"external data location {loc!r} of {name} is a symlink", where=where, hint=hint)
    if not str(os.path.realpath(cur)).startswith(str(base) + os.sep):
        raise ModelLoadError(f"external data location {loc!r} of {name} leaves the model's folder",
                             where=where, hint=hint)
    try:
        st = os.stat(cur)
    except OSError:
        raise ModelLoadError(f"external data file {loc!r} of {name} is missing", where=where) from None
    if not stat.S_ISREG(st.st_mode):
        raise ModelLoadError(f"external data file {loc!r} of {name} is not a regular file", where=where, hint=hint)
    try:
        offset = int(info.get("offset", "0") or 0)
        length = int(info["length"]) if info.get("length") else st.st_size - offset
    except ValueError:
        raise ModelLoadError(f"{name} has a non-integer external data offset or length", where=where) from None
    if offset < 0 or length < 0 or offset + length > st.st_size:
        raise ModelLoadError(f"{name} reads bytes {offset}..{offset + length} of {loc!r}, which has "
                             f"{st.st_size} bytes (truncated?)", where=where)
    n, itemsize = _declared_bytes(tensor, owner, where)
    if itemsize is None:
        raise ModelLoadError(f"{name}: string tensors cannot be stored as external data", where=where)
    if length != math.ceil(n * itemsize):
        raise ModelLoadError(f"{name} declares shape {list(tensor.dims)} ({math.ceil(n * itemsize)} bytes) but its "
                             f"external data has {length} bytes", where=where)


def attach_external(model: ir.Model, base: Path) -> None:
    """Point external tensors at ``base`` and make them lazy: bytes are memory-mapped on first use
    and serialized inline (``to_bytes``) only when a consumer asks for a serialized model."""
    for graph in (model.graph, *model.graph.subgraphs()):
        for value in graph.initializers.values():
            if isinstance(value.const_value, ir.ExternalTensor):
                value.const_value = _lazy(value.const_value, base)
        for node in graph:
            for key, attr in list(node.attributes.items()):
                if attr.type == ir.AttributeType.TENSOR and isinstance(attr.value, ir.ExternalTensor):
                    node.attributes[key] = ir.AttrTensor(key, _lazy(attr.value, base))


def _lazy(tensor: ir.ExternalTensor, base: Path) -> ir.LazyTensor:
    tensor.base_dir = str(base)
    return ir.LazyTensor(lambda: tensor, dtype=tensor.dtype, shape=tensor.shape, name=tensor.name)
