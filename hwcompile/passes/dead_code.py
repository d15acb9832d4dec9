"""Dead-code and Identity removal. Preserves graph outputs (names and values) exactly.

A node none of whose outputs reaches a graph output is removed; so are initializers nothing
reads (onnx_ir's pass). An Identity of the main graph is bypassed by pointing its consumers
(subgraph readers included) at its input, unless its output is a graph output whose name must be
kept (then it stays); Identities inside If/Loop bodies are left alone (onnx_ir's identity pass
failed on an If branch whose output an Identity produces: silero-vad).
"""
from __future__ import annotations

from onnx_ir.passes.common import RemoveUnusedNodesPass

from ..ir import Graph
from .base import PassResult, structure

__all__ = ["eliminate_dead_code", "eliminate_identity"]


def eliminate_dead_code(graph: Graph) -> PassResult:
    """Also drops attributes equal to a removed default (onnx_ir does); ``modified`` is whether anything changed."""
    before, shape = (graph.main.num_nodes(), len(graph.main.initializers)), structure(graph)
    RemoveUnusedNodesPass()(graph.model)
    after = graph.main.num_nodes(), len(graph.main.initializers)
    return PassResult(graph, structure(graph) != shape,
                      {"nodes_removed": before[0] - after[0], "initializers_removed": before[1] - after[1]})


def eliminate_identity(graph: Graph) -> PassResult:
    removed = 0
    for node in list(graph.main):
        if node.op_type != "Identity" or not node.inputs or node.inputs[0] is None:
            continue
        out = node.outputs[0]
        if out.is_graph_output():
            continue
        graph.replace_all_uses(out, node.inputs[0])
        graph.erase(node)
        removed += 1
    return PassResult(graph, removed > 0, {"identities_removed": removed})


eliminate_dead_code.name, eliminate_dead_code.in_place = "eliminate_dead_code", True
eliminate_identity.name, eliminate_identity.in_place = "eliminate_identity", True
