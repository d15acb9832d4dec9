"""Pass infrastructure: a pass is ``Graph -> PassResult``; a pipeline repeats passes to a fixpoint.

Each pass declares ``in_place``. In-place passes edit the Graph they are given and return it;
functional passes return a new Graph and leave theirs untouched (the runner checks both).
After every pass the runner lints the graph, so an invariant a pass broke is reported with the
pass's name rather than surfacing later as a wrong number.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

from ..errors import HwcompileError, PassError
from ..ir import Graph

__all__ = ["PassResult", "Pass", "run_passes", "PassFn"]


@dataclass
class PassResult:
    graph: Graph
    modified: bool
    details: dict = field(default_factory=dict)


class Pass(Protocol):
    name: str
    in_place: bool

    def __call__(self, graph: Graph) -> PassResult: ...


PassFn = Callable[[Graph], PassResult]


def run_passes(graph: Graph, passes: Sequence[Pass], *, max_rounds: int = 8, lint: bool = True,
               log: dict | None = None) -> Graph:
    """Run ``passes`` in order, repeating the whole list until none modifies the graph."""
    for _ in range(max_rounds):
        changed = False
        for p in passes:
            name = getattr(p, "name", getattr(p, "__name__", type(p).__name__))
            try:
                result = p(graph)
            except HwcompileError:
                raise
            except Exception as e:  # a bug in a pass: say which pass
                raise PassError(f"{type(e).__name__}: {e}", where=f"pass {name}") from e
            if getattr(p, "in_place", True) and result.graph is not graph:
                raise PassError("declared in_place but returned a different graph", where=f"pass {name}")
            graph = result.graph
            if lint:
                try:
                    graph.lint()
                except PassError as e:
                    raise PassError(f"after pass {name}: {e.message}", where=e.where) from None
            if log is not None and result.modified:
                entry = log.setdefault(name, {"runs": 0})
                entry["runs"] += 1
                for k, v in result.details.items():
                    entry[k] = entry.get(k, 0) + v if isinstance(v, int) else v
            changed |= result.modified
        if not changed:
            return graph
    return graph
