"""Sibling MatMuls merged into one: ``x @ W_i (+ b_i)`` for the same ``x`` becomes
``Split(x @ [W_1 | W_2 | ...] (+ [b_1 | b_2 | ...]))``. Preserves outputs exactly (every output
column is the same dot product as before; only the GEMM that computes it is wider).

Attention's Q, K and V projections read the same hidden state: three GEMMs of N = hidden become one
of N = 3 x hidden, one kernel instead of three (and, in dynamic INT8, one activation quantization
and one integer GEMM). Per-output-column weight scales are unchanged by the concatenation, so an
INT8 plan of the merged layer quantizes each column as it quantized the separate layers.

``check_merge`` declines a group, with the reason, when a weight is not a 2-D constant or is shared
with another node, the weights differ in dtype or K, or fewer than two siblings remain. A bias Add
(constant [N_i], the MatMul's only consumer) merges too when every sibling has one. The merged
layer is named after the first sibling with ``_merged``; ``graph.meta["merged_matmuls"]`` maps it to
the layers it replaced.
"""
from __future__ import annotations

import numpy as np
import onnx_ir as ir

from ..ir import Graph, const_array, is_constant
from .base import PassResult

__all__ = ["merge_parallel_matmuls", "check_merge"]


def merge_parallel_matmuls(graph: Graph) -> PassResult:
    groups: dict[int, list[ir.Node]] = {}
    for node in graph.main:
        if node.op_type == "MatMul" and node.domain == "" and is_constant(node.inputs[1]) \
                and not is_constant(node.inputs[0]):
            groups.setdefault(id(node.inputs[0]), []).append(node)
    merged, declined = 0, {}
    for nodes in groups.values():
        if len(nodes) < 2:
            continue
        reason = check_merge(graph, nodes)
        if reason:
            declined[nodes[0].name] = reason
            continue
        _merge(graph, nodes)
        merged += 1
    graph.meta.setdefault("merge_matmuls_declined", {}).update(declined)
    return PassResult(graph, merged > 0, {"matmul_groups_merged": merged})


merge_parallel_matmuls.name, merge_parallel_matmuls.in_place = "merge_parallel_matmuls", True


def check_merge(graph: Graph, nodes: list[ir.Node]) -> str | None:
    """None if the sibling MatMuls ``nodes`` can be merged, else the reason."""
    ws = [const_array(n.inputs[1]) for n in nodes]
    if any(w.ndim != 2 for w in ws):
        return "a weight is not 2-D"
    if len({w.shape[0] for w in ws}) != 1 or len({w.dtype for w in ws}) != 1:
        return "weights differ in K or dtype"
    for n in nodes:
        if graph.uses_count(n.inputs[1]) != 1:
            return f"weight '{n.inputs[1].name}' is shared with another node"
        if n.outputs[0].is_graph_output() or not n.outputs[0].uses():
            return f"output of '{n.name}' is a graph output or unread"
    return None


def _bias_of(graph: Graph, mm: ir.Node) -> ir.Node | None:
    users = graph.consumers(mm.outputs[0])
    if len(users) != 1 or users[0].op_type != "Add" or mm.outputs[0].is_graph_output():
        return None
    add = users[0]
    other = add.inputs[1] if add.inputs[0] is mm.outputs[0] else add.inputs[0]
    if not is_constant(other) or graph.uses_count(other) != 1:
        return None
    b = const_array(other)
    n = const_array(mm.inputs[1]).shape[1]
    return add if b.shape == (n,) else None


def _merge(graph: Graph, nodes: list[ir.Node]) -> None:
    first = nodes[0]
    widths = [const_array(n.inputs[1]).shape[1] for n in nodes]
    w = np.concatenate([const_array(n.inputs[1]) for n in nodes], axis=1)
    biases = [_bias_of(graph, n) for n in nodes]
    with_bias = all(b is not None for b in biases)
    w_val = graph.add_initializer(f"{first.inputs[1].name}_merged", w)
    mm = graph.new_node("MatMul", [first.inputs[0], w_val], name=f"{first.name}_merged")
    chain = [mm]
    y = mm.outputs[0]
    if with_bias:
        b = np.concatenate([const_array(a.inputs[1] if is_constant(a.inputs[1]) else a.inputs[0]) for a in biases])
        add = graph.new_node("Add", [y, graph.add_initializer(f"{first.name}_merged_bias", b)],
                             name=f"{first.name}_merged_bias_add", serves=mm.name)
        chain.append(add)
        y = add.outputs[0]
    sizes = graph.add_initializer(f"{first.name}_merged_sizes", np.array(widths, np.int64))
    split = graph.new_node("Split", [y, sizes], {"axis": -1}, name=f"{first.name}_merged_split",
                           num_outputs=len(nodes), serves=mm.name)
    chain.append(split)
    graph.insert_before(_first_use(graph, nodes, biases if with_bias else None), chain)
    lead = first.outputs[0].shape
    for i, (n, out) in enumerate(zip(nodes, split.outputs)):
        old = biases[i].outputs[0] if with_bias else n.outputs[0]
        out.dtype = old.dtype
        out.shape = old.shape
        graph.replace_all_uses(old, out)
    for v in chain[:-1]:
        v.outputs[0].dtype = first.outputs[0].dtype
        if lead is not None:
            v.outputs[0].shape = ir.Shape([*list(lead.dims)[:-1], int(w.shape[1])])
    for i, n in enumerate(nodes):
        if with_bias:
            graph.erase(biases[i])
        graph.erase(n)
    graph.meta.setdefault("merged_matmuls", {})[mm.name] = [n.name for n in nodes]


def _first_use(graph: Graph, nodes: list[ir.Node], biases) -> ir.Node | None:
    """The first node (in graph order) that reads any output being replaced, so the merged chain
    sits after the shared input and before every reader."""
    outs = {id(b.outputs[0]) for b in biases} if biases else {id(n.outputs[0]) for n in nodes}
    skip = {id(n) for n in nodes} | ({id(b) for b in biases} if biases else set())
    for n in graph.main:
        if id(n) not in skip and any(v is not None and id(v) in outs for v in n.inputs):
            return n
    return None
