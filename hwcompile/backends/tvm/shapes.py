"""Folding shape computations to constants before TVM's ONNX frontend sees them.

Preserves the outputs for the given input shapes: a ``Shape`` node whose input's shape is fully
static (after ONNX shape inference with the inputs fixed) is a constant, and so is every small
integer computation on it (``Cast``, ``Slice``, ``Concat``, ``Gather``, ...) whose inputs are all
constants. Exported graphs compute Reshape targets that way (``Reshape(x, Concat(Cast(Slice(Cast(
Shape(x)))), [-1]))``); the Relax frontend tracks ``Shape`` values only through some ops and fails on
the rest (``Reshape requires the input new shape to be Shape``). The folded values become
initializers; nodes left without users are dropped. Weights are never evaluated: only values
derived from a ``Shape`` are folded.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

__all__ = ["fold_shapes"]

#: ops evaluated on constant shape values (all cheap integer ops of opset 13+)
_FOLDABLE = {"Cast", "Slice", "Concat", "Gather", "Unsqueeze", "Squeeze", "Add", "Sub", "Mul", "Div", "Reshape",
             "Identity", "ReduceProd", "Equal", "Where", "Range", "Expand", "Max", "Min", "Abs", "Neg"}
_MAX_ELEMENTS = 4096


def fold_shapes(proto: onnx.ModelProto, input_shapes: dict[str, list[int]]) -> tuple[onnx.ModelProto, list[str]]:
    """(graph with shape computations folded, names of the folded nodes); ``proto`` itself is not changed."""
    if not any(n.op_type == "Shape" for n in proto.graph.node):
        return proto, []
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    for vi in model.graph.input:  # fix the given shapes so inference sees them
        if vi.name in input_shapes:
            dims = vi.type.tensor_type.shape.dim
            del dims[:]
            for d in input_shapes[vi.name]:
                dims.add().dim_value = int(d)
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # inference fails on some exported graphs: fold nothing, let the frontend speak
        return proto, []
    shapes = _static_shapes(inferred.graph)
    consts = {t.name: t for t in model.graph.initializer}
    values: dict[str, np.ndarray] = {}  # shape-derived constants
    folded: list[int] = []  # node indices
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    for index, node in enumerate(model.graph.node):
        if node.op_type == "Shape" and node.input[0] in shapes:
            dims = np.array(shapes[node.input[0]], np.int64)
            attrs = {a.name: a.i for a in node.attribute}
            values[node.output[0]] = dims[attrs.get("start", 0):attrs.get("end", len(dims))]
            folded.append(index)
        elif node.op_type == "Constant" and node.output[0] not in consts and len(node.output) == 1:
            t = next((a.t for a in node.attribute if a.name == "value"), None)
            if t is not None:
                consts[node.output[0]] = t
        elif node.op_type in _FOLDABLE and node.domain in ("", "ai.onnx") and node.input \
                and any(i in values for i in node.input) \
                and all(not i or i in values or _small_const(consts.get(i)) for i in node.input):
            args = [values[i] if i in values else numpy_helper.to_array(consts[i]) for i in node.input if i]
            out = _evaluate(node, args, opset)
            if out is None:
                continue
            values[node.output[0]] = out
            folded.append(index)
    if not folded:
        return proto, []
    gone = set(folded)
    names = [model.graph.node[i].name or f"#{i} {model.graph.node[i].op_type}" for i in folded]
    nodes = [onnx.NodeProto() for _ in range(len(model.graph.node) - len(gone))]
    for new, old in zip(nodes, (n for i, n in enumerate(model.graph.node) if i not in gone)):
        new.CopyFrom(old)
    used = {i for n in nodes for i in n.input} | {o.name for o in model.graph.output}
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in values.items() if k in used)
    return model, names


def _static_shapes(graph) -> dict[str, list[int]]:
    out = {}
    for vi in list(graph.input) + list(graph.value_info) + list(graph.output):
        tt = vi.type.tensor_type
        if tt.HasField("shape") and all(d.HasField("dim_value") and d.dim_value >= 0 for d in tt.shape.dim):
            out[vi.name] = [d.dim_value for d in tt.shape.dim]
    return out


def _small_const(t) -> bool:
    return t is not None and int(np.prod(t.dims)) <= _MAX_ELEMENTS


def _evaluate(node, args: list[np.ndarray], opset: int) -> np.ndarray | None:
    """The node's single output on constant inputs (onnx's reference evaluator), or None."""
    from onnx.reference import ReferenceEvaluator

    if len(node.output) != 1:
        return None
    names = [f"i{k}" for k in range(len(args))]
    inputs = iter(names)
    one = helper.make_node(node.op_type, [next(inputs) if i else "" for i in node.input], ["o"],
                           **{a.name: helper.get_attribute_value(a) for a in node.attribute})
    graph = helper.make_graph([one], "fold", [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype),
                                                                            a.shape) for n, a in zip(names, args)],
                              [helper.make_tensor_value_info("o", onnx.TensorProto.UNDEFINED, None)])
    try:
        out = ReferenceEvaluator(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]))\
            .run(None, dict(zip(names, args)))[0]
    except Exception:
        return None
    out = np.asarray(out)
    return out if out.size <= _MAX_ELEMENTS else None
