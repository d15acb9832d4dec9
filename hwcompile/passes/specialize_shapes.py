"""Shape specialization: fix the graph's input shapes and fold the shape arithmetic. Preserves the
outputs for inputs of the given shapes (other shapes are refused by the specialized graph).

An exporter writes a dynamic graph: ``Shape -> Gather -> Unsqueeze -> Concat -> Reshape`` chains,
``Range``/``ConstantOfShape``/``Expand`` sized from a runtime dimension, all evaluated on every call.
With the deployment shapes known, every such value is a constant. The pass sets the input dims,
re-runs onnx's shape inference (with data propagation) and constant folding (``fold_constants``:
onnx's reference evaluator, node by node) until nothing changes, then bypasses what became an
identity: a ``Reshape``/``Expand`` whose input already has the output's static shape, a ``Cast`` to
the input's own type.

``check_specialize_shapes`` says why it declines: an input has no shape given and a dynamic dim,
or a given shape does not fit the declared one (a ConfigError naming the input). Without shapes the
graph stays dynamic; ``graph.meta["shape_specialization"]`` records which build was made.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import onnx
import onnx_ir as ir

from ..errors import ConfigError
from ..ir import Graph, is_constant
from ..ir.exporter import to_proto
from .base import PassResult
from .dead_code import eliminate_dead_code
from .fold_constants import fold_constants

__all__ = ["specialize_shapes", "check_specialize_shapes", "deployment_shapes", "dynamic_dims", "MAX_ROUNDS"]

MAX_ROUNDS = 12


def dynamic_dims(graph: Graph) -> dict[str, list[int | str | None]]:
    """Every graph input with a dimension that is not a fixed integer: {name: dims}."""
    out = {}
    for v in graph.main.inputs:
        dims = list(v.shape.dims) if v.shape is not None else None
        if dims is None or not all(isinstance(d, int) for d in dims):
            out[v.name] = [d if isinstance(d, int) else (getattr(d, "value", None)) for d in dims or []]
    return out


def deployment_shapes(graph: Graph, given: Mapping[str, Sequence[int]],
                      samples: Mapping[str, np.ndarray] | None = None) -> dict[str, list[int]]:
    """The shapes the deployment will feed: ``given`` (``--shape``) for the inputs it names; a
    dynamic input it does not name takes the batch of the given shapes (when they agree on it)
    and the per-sample dims of ``samples`` (calibration/evaluation arrays, [n, ...])."""
    shapes = {k: [int(d) for d in v] for k, v in given.items()}
    batches = {v[0] for v in shapes.values() if v}
    for name in dynamic_dims(graph):
        if name in shapes or samples is None or name not in samples or len(batches) != 1:
            continue
        shapes[name] = [next(iter(batches)), *map(int, np.asarray(samples[name]).shape[1:])]
    return shapes


def check_specialize_shapes(graph: Graph, shapes: Mapping[str, Sequence[int]]) -> str | None:
    """None if ``shapes`` fixes every input dim, else the reason the graph stays dynamic.
    A shape that contradicts an input's declared rank or fixed dims is a ConfigError."""
    inputs = {v.name: v for v in graph.main.inputs}
    for name, dims in shapes.items():
        if name not in inputs:
            raise ConfigError(f"model has no input {name!r} (inputs: {sorted(inputs)})", where="--shape")
        declared = inputs[name].shape
        if declared is not None and (len(declared) != len(dims) or any(
                isinstance(d, int) and d != s for d, s in zip(declared.dims, dims))):
            raise ConfigError(f"shape {list(dims)} does not fit input '{name}' {list(declared.dims)}",
                              where="--shape")
        if any(int(s) <= 0 for s in dims):
            raise ConfigError(f"shape {list(dims)} of input '{name}' has a dim <= 0", where="--shape")
    missing = [n for n in dynamic_dims(graph) if n not in shapes]
    if missing:
        return f"no deployment shape for dynamic input(s) {', '.join(missing)}"
    return None


def specialize_shapes(graph: Graph, shapes: Mapping[str, Sequence[int]] | None = None) -> PassResult:
    """Fix the input shapes to ``shapes`` and fold every shape computation (see the module doc)."""
    shapes = {k: [int(d) for d in v] for k, v in (shapes or {}).items()}
    reason = check_specialize_shapes(graph, shapes) if dynamic_dims(graph) else None
    if reason:
        graph.meta["shape_specialization"] = {"build": "dynamic", "reason": reason,
                                              "dynamic_inputs": dynamic_dims(graph)}
        return PassResult(graph, False, {})
    before = graph.main.num_nodes()
    for v in graph.main.inputs:
        if v.name in shapes:
            v.shape = ir.Shape(shapes[v.name])
    folded = bypassed = 0
    for _ in range(MAX_ROUNDS):
        _infer_shapes(graph)
        f = fold_constants(graph).details.get("nodes_folded", 0)
        b = _bypass_identities(graph)
        eliminate_dead_code(graph)
        folded, bypassed = folded + f, bypassed + b
        if not f and not b:
            break
    symbolic = sorted({v.name for v in graph.iter_values() if v.shape is not None
                       and not all(isinstance(d, int) for d in v.shape.dims)})
    graph.meta["shape_specialization"] = {
        "build": "specialized", "input_shapes": shapes, "nodes_folded": folded, "identities_bypassed": bypassed,
        "nodes_before": before, "nodes_after": graph.main.num_nodes(), "values_left_symbolic": symbolic[:20]}
    return PassResult(graph, before != graph.main.num_nodes(),
                      {"shape_nodes_folded": folded, "identities_bypassed": bypassed})


specialize_shapes.name, specialize_shapes.in_place = "specialize_shapes", True


def _infer_shapes(graph: Graph) -> None:
    """onnx shape inference (data propagation on) from the inputs alone: every stale intermediate
    shape is dropped first, so a symbolic dim never survives where the inputs now fix it."""
    stale = [v for v in graph.iter_values() if not v.is_graph_input()]
    for v in stale:
        v.shape = None
    proto = to_proto(graph)
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True, data_prop=True)
    except Exception as e:  # the given shapes contradict the graph (e.g. a Reshape that cannot hold)
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"shape inference with the deployment shapes failed: {msg}", where="--shape") from None
    found = {}
    for vi in (*inferred.graph.value_info, *inferred.graph.output):
        t = vi.type.tensor_type
        if t.HasField("shape"):
            found[vi.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]
    for v in stale:
        if v.name in found:
            v.shape = ir.Shape(found[v.name])


def _static(value: ir.Value | None) -> tuple[int, ...] | None:
    if value is None or value.shape is None or not all(isinstance(d, int) for d in value.shape.dims):
        return None
    return tuple(value.shape.dims)


def _bypass_identities(graph: Graph) -> int:
    """Reshape/Expand/Cast nodes that became identities under the static shapes are bypassed."""
    n = 0
    for node in list(graph.main):
        if node.domain not in ("", "ai.onnx") or not node.inputs or node.inputs[0] is None:
            continue
        x, y = node.inputs[0], node.outputs[0]
        if node.op_type in ("Reshape", "Expand"):
            if len(node.inputs) < 2 or not is_constant(node.inputs[1]):
                continue
            shape_in, shape_out = _static(x), _static(y)
            if shape_in is None or shape_in != shape_out:
                continue
        elif node.op_type == "Cast":
            to = node.attributes.get("to")
            if to is None or x.dtype is None or ir.DataType(to.as_int()) != x.dtype:
                continue
        else:
            continue
        if y.is_graph_output() and (x.is_graph_input() or x.is_graph_output() or is_constant(x)):
            continue  # an output name must keep a producing node
        graph.substitute(y, x)
        graph.erase(node)
        n += 1
    return n
