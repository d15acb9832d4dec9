"""Constant nodes become initializers. Preserves outputs, value names and numerics exactly.

A ``Constant`` node's payload is moved verbatim into an initializer of the same name, so every
consumer reads the same tensor; Constants that are graph outputs stay (an output must be produced).
Delegates to onnx_ir's well-tested lifting, with every Constant lifted whatever its size.
"""
from __future__ import annotations

from onnx_ir.passes.common import LiftConstantsToInitializersPass

from ..ir import Graph
from .base import PassResult

__all__ = ["lift_constants"]


def lift_constants(graph: Graph) -> PassResult:
    before = sum(1 for n in graph.main if n.op_type == "Constant")
    result = LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(graph.model)
    after = sum(1 for n in graph.main if n.op_type == "Constant")
    return PassResult(graph, result.modified, {"constants_lifted": before - after})


lift_constants.name = "lift_constants"
lift_constants.in_place = True
