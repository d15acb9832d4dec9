"""Graph: the compiler's IR, a thin layer over ``onnx_ir`` with what a compiler needs on top.

Vocabulary (documented once):
- a **layer** is an ``onnx_ir.Node`` of the main graph; its **layer id** is its node name, made
  unique and non-empty by the importer (``{op_type}_{index}`` for unnamed nodes), so sensitivity,
  latency, the plan and the report all speak of the same names from import to kernel;
- a **value** is an ``onnx_ir.Value`` (an edge); initializers are values with ``const_value``;
- analysis scratch goes in ``node.meta`` / ``value.meta``, never as attributes on objects;
- nodes a pass inserts on behalf of a layer (Q/DQ, casts) carry ``metadata_props[SERVES]`` = that
  layer's id, so profiles can charge their time to it.

Editing verbs: ``insert_before`` / ``insert_after`` / ``replace_all_uses`` / ``erase`` (refuses
while the node's outputs still have users), ``add_initializer`` (the graph mints the name).
``lint()`` checks topological order, ownership, unique names and that every input is defined.
"""
from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import networkx as nx
import numpy as np
import onnx_ir as ir

from ..errors import PassError

__all__ = ["Graph", "SERVES", "layer_id", "const_array", "is_constant"]

SERVES = "hwcompile.serves"

#: Ops whose second input is a weight and that the planner treats as layers with a precision.
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def layer_id(node: ir.Node) -> str:
    return node.name or ""


def is_constant(value: ir.Value | None) -> bool:
    return value is not None and value.const_value is not None and not value.is_graph_input()


def const_array(value: ir.Value) -> np.ndarray:
    """The numpy payload of an initializer value."""
    if value.const_value is None:
        raise PassError("value has no constant payload", where=f"value '{value.name}'")
    return value.const_value.numpy()


@dataclass
class Graph:
    """An imported model: ``model`` is the ``onnx_ir.Model``; ``source`` names where it came from."""

    model: ir.Model
    source: str = ""
    meta: dict = field(default_factory=dict)
    _name_counter: Counter = field(default_factory=Counter, repr=False)
    _index: dict = field(default_factory=dict, repr=False, compare=False)   # layer id -> node (see ``node``)

    # -- views --------------------------------------------------------------------------
    @property
    def main(self) -> ir.Graph:
        return self.model.graph

    @property
    def opset(self) -> int:
        return self.main.opset_imports.get("", self.model.opset_imports.get("", 0))

    def nodes(self) -> list[ir.Node]:
        return list(self.main)

    def node(self, lid: str) -> ir.Node:
        """The node with layer id ``lid`` (KeyError if none): a dict lookup, the index rebuilt only when an
        edit made it stale (a node renamed, removed or added since)."""
        hit = self._index.get(lid)
        if hit is not None and hit.name == lid and hit.graph is self.main:
            return hit
        self._index = {n.name: n for n in self.main}
        try:
            return self._index[lid]
        except KeyError:
            raise KeyError(lid) from None

    def layers(self, ops: Iterable[str] = WEIGHTED_OPS) -> list[ir.Node]:
        """Nodes with a constant weight that a plan can assign a precision to."""
        ops = tuple(ops)
        return [n for n in self.main if n.op_type in ops and n.domain == "" and self.weight_of(n) is not None]

    def weight_of(self, node: ir.Node) -> ir.Value | None:
        """The constant weight input of a Conv/ConvTranspose/Gemm/MatMul, or None."""
        if node.op_type in ("Conv", "ConvTranspose", "Gemm") and len(node.inputs) > 1:
            w = node.inputs[1]
            return w if is_constant(w) else None
        if node.op_type == "MatMul":
            w = node.inputs[1]
            if is_constant(w):
                return w
        return None

    def initializers(self) -> dict[str, ir.Value]:
        return dict(self.main.initializers)

    # -- names --------------------------------------------------------------------------
    def mint_name(self, base: str) -> str:
        """A value or node name not yet used in the graph, derived from ``base``."""
        used = self._used_names()
        if base not in used:
            return base
        while True:
            self._name_counter[base] += 1
            cand = f"{base}__{self._name_counter[base]}"
            if cand not in used:
                return cand

    def _used_names(self) -> set[str]:
        names = {n.name for n in self.main if n.name}
        names.update(v.name for v in self.main.inputs if v.name)
        names.update(self.main.initializers.keys())
        for n in self.main:
            names.update(o.name for o in n.outputs if o.name)
        return names

    # -- editing verbs ------------------------------------------------------------------
    def add_initializer(self, base: str, array: np.ndarray) -> ir.Value:
        name = self.mint_name(base)
        tensor = ir.tensor(np.array(array, order="C", copy=True), name=name)
        value = ir.Value(name=name, shape=tensor.shape, type=ir.TensorType(tensor.dtype), const_value=tensor)
        self.main.register_initializer(value)
        return value

    def replace_initializer(self, value: ir.Value, array: np.ndarray) -> None:
        """Give an initializer a new payload (and shape) in place, keeping its name and uses."""
        tensor = ir.tensor(np.array(array, order="C", copy=True), name=value.name)
        value.const_value = tensor
        value.shape = tensor.shape
        value.type = ir.TensorType(tensor.dtype)

    def new_node(self, op_type: str, inputs: list[ir.Value | None], attributes: dict | None = None, *,
                 name: str, num_outputs: int = 1, serves: str | None = None, domain: str = "") -> ir.Node:
        attrs = [ir.convenience.convert_attribute(k, v) for k, v in (attributes or {}).items()]
        node = ir.Node(domain, op_type, inputs, attrs, num_outputs=num_outputs, name=self.mint_name(name))
        for i, out in enumerate(node.outputs):
            out.name = self.mint_name(f"{node.name}_out{i}" if num_outputs > 1 else f"{node.name}_out")
        if serves:
            node.metadata_props[SERVES] = serves
        return node

    def insert_before(self, anchor: ir.Node, nodes: ir.Node | list[ir.Node]) -> None:
        self.main.insert_before(anchor, nodes)

    def insert_after(self, anchor: ir.Node, nodes: ir.Node | list[ir.Node]) -> None:
        self.main.insert_after(anchor, nodes)

    def replace_all_uses(self, old: ir.Value, new: ir.Value) -> None:
        """Point every consumer (and graph output slot) of ``old`` at ``new``."""
        old.replace_all_uses_with(new, replace_graph_outputs=True)

    def fixed_batch(self) -> int | None:
        """The batch size a model exported with a fixed first input dimension takes (the smallest), or None."""
        fixed = [v.shape.dims[0] for v in self.main.inputs
                 if v.shape is not None and len(v.shape) and isinstance(v.shape.dims[0], int)]
        return min(fixed) if fixed else None

    def substitute(self, old: ir.Value, new: ir.Value) -> None:
        """Replace ``old`` by ``new`` everywhere; a graph output keeps its name (``new`` takes it)."""
        self.replace_all_uses(old, new)
        if new.is_graph_output():
            name = old.name
            old.name = self.mint_name(name + "__replaced")
            new.name = name

    def erase(self, node: ir.Node) -> None:
        for out in node.outputs:
            if out.uses() or out.is_graph_output():
                raise PassError("cannot erase a node whose outputs are still used", where=f"node '{node.name}'")
        self.main.remove(node, safe=True)

    def uses_count(self, value: ir.Value) -> int:
        return len(value.uses()) + (1 if value.is_graph_output() else 0)

    # -- checks and views ---------------------------------------------------------------
    def lint(self) -> None:
        """Raise PassError unless the graph is topologically ordered, owned and uniquely named."""
        defined: set[int] = {id(v) for v in self.main.inputs}
        defined.update(id(v) for v in self.main.initializers.values())
        node_names: set[str] = set()
        value_names: set[str] = {v.name for v in self.main.inputs} | set(self.main.initializers)
        for node in self.main:
            where = f"node '{node.name}' ({node.op_type})"
            if not node.name:
                raise PassError("node has no name (layer id)", where=where)
            if node.name in node_names:
                raise PassError("duplicate node name", where=where)
            node_names.add(node.name)
            if node.graph is not self.main:
                raise PassError("node is not owned by the main graph", where=where)
            for i, v in enumerate(node.inputs):
                if v is None:
                    continue
                if id(v) not in defined:
                    raise PassError(f"input {i} '{v.name}' is used before it is defined", where=where)
            for out in node.outputs:
                if out.name in value_names:
                    raise PassError(f"value name '{out.name}' defined twice", where=where)
                value_names.add(out.name)
                defined.add(id(out))
        for out in self.main.outputs:
            if id(out) not in defined:
                raise PassError("graph output is not produced by any node or input", where=f"output '{out.name}'")

    def to_networkx(self) -> nx.DiGraph:
        """Layers as nodes (by layer id), one edge per value from producer to consumer."""
        g = nx.DiGraph()
        for node in self.main:
            g.add_node(node.name, op=node.op_type)
        for node in self.main:
            for v in node.inputs:
                if v is None:
                    continue
                prod = v.producer()
                if prod is not None and prod.graph is self.main:
                    g.add_edge(prod.name, node.name, value=v.name)
        return g

    def consumers(self, value: ir.Value) -> list[ir.Node]:
        return [u.node for u in value.uses()]

    def iter_values(self) -> Iterator[ir.Value]:
        yield from self.main.inputs
        for node in self.main:
            yield from node.outputs

    def clone(self) -> "Graph":
        """A deep copy: nodes, values, weights (copied, so an edit of the copy never reaches this graph)
        and ``meta``. Layer ids and value names are kept."""
        model = self.model.clone(deep_copy=True)
        for value in model.graph.initializers.values():
            if value.const_value is not None:
                const = value.const_value
                value.const_value = ir.tensor(np.array(const.numpy(), copy=True), dtype=const.dtype, name=value.name)
        return Graph(model, source=self.source, meta=copy.deepcopy(self.meta))

