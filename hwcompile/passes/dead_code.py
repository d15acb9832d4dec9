"""Dead-code and Identity removal. Preserves graph outputs (names and values) exactly.

A node none of whose outputs reaches a graph output is removed; so are initializers nothing
reads. An Identity is bypassed by pointing its consumers at its input, unless its output is a
graph output whose name must be kept (then it stays). Both delegate to onnx_ir's passes.
"""
from __future__ import annotations

from onnx_ir.passes.common import IdentityEliminationPass, RemoveUnusedNodesPass

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
    before, shape = sum(1 for n in graph.main if n.op_type == "Identity"), structure(graph)
    IdentityEliminationPass()(graph.model)
    after = sum(1 for n in graph.main if n.op_type == "Identity")
    return PassResult(graph, structure(graph) != shape, {"identities_removed": before - after})


eliminate_dead_code.name, eliminate_dead_code.in_place = "eliminate_dead_code", True
eliminate_identity.name, eliminate_identity.in_place = "eliminate_identity", True
