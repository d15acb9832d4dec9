"""Pass infrastructure: a pass is ``Graph -> PassResult``; the runner checks every pass and repeats a list to a fixpoint.

A pass declares ``in_place``: in-place passes edit the Graph they are given and return it;
functional passes return a new Graph and leave theirs untouched. A ``PassResult`` says whether
the pass modified the graph, what it did (``details``: counts) and what it declined and why
(``declined``: node or layer id -> reason).

``run_passes`` runs a list in order and, after every pass, checks (PassError naming the pass):
- an in-place pass returned the graph it was given; a functional pass left its input's structure
  (nodes, their inputs, outputs and attributes, initializers, graph outputs) unchanged;
- a pass that reports ``modified=False`` left that structure unchanged;
- with ``lint`` (the default), ``Graph.lint`` holds: topological order, ownership, unique names.
It repeats the whole list until a round modifies nothing, at most ``max_rounds`` times
(``max_rounds=1``: each pass once, for passes that are not idempotent, such as the plan's).
With ``log`` it records per pass the runs that modified the graph, summed details and the union
of what was declined; ``log["_rounds"]`` says how many rounds ran and whether the list converged.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

from ..errors import HwcompileError, PassError
from ..ir import Graph

__all__ = ["PassResult", "Pass", "PassFn", "BoundPass", "run_passes", "structure"]


@dataclass
class PassResult:
    graph: Graph
    modified: bool
    details: dict = field(default_factory=dict)            # what it did: counts
    declined: dict[str, str] = field(default_factory=dict)  # node/layer id -> why the pass left it alone


class Pass(Protocol):
    name: str
    in_place: bool

    def __call__(self, graph: Graph) -> PassResult: ...


PassFn = Callable[[Graph], PassResult]


@dataclass(frozen=True)
class BoundPass:
    """A pass with its arguments bound (a plan, a Q/DQ style, data): ``fn(graph, *args, **kwargs)``."""

    name: str
    fn: Callable[..., PassResult]
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    in_place: bool = True

    def __call__(self, graph: Graph) -> PassResult:
        return self.fn(graph, *self.args, **self.kwargs)


def structure(graph: Graph) -> tuple:
    """A cheap fingerprint of the graph's structure: identity of every node, its inputs, outputs and
    attributes, of every initializer and its payload, and of the graph outputs (not tensor contents)."""
    main = graph.main
    nodes = tuple((id(n), n.name, n.op_type, tuple(map(id, n.inputs)), tuple(map(id, n.outputs)),
                   tuple((k, id(a)) for k, a in n.attributes.items())) for n in main)
    inits = tuple((k, id(v), id(v.const_value)) for k, v in main.initializers.items())
    return id(graph.model), nodes, inits, tuple(map(id, main.outputs)), tuple(map(id, main.inputs))


def _name(p) -> str:
    return getattr(p, "name", getattr(p, "__name__", type(p).__name__))


def run_passes(graph: Graph, passes: Sequence[Pass], *, max_rounds: int = 8, lint: bool = True,
               log: dict | None = None) -> Graph:
    """Run ``passes`` in order, checking each (module docstring), until a round modifies nothing."""
    rounds, changed = 0, False
    for rounds in range(1, max_rounds + 1):
        changed = False
        for p in passes:
            graph, modified = _run_one(graph, p, lint, log)
            changed |= modified
        if not changed:
            break
    if log is not None and max_rounds > 1:
        log["_rounds"] = {"rounds": rounds, "converged": not changed}
    return graph


def _run_one(graph: Graph, p: Pass, lint: bool, log: dict | None) -> tuple[Graph, bool]:
    name = _name(p)
    in_place = getattr(p, "in_place", True)
    before = structure(graph)
    try:
        result = p(graph)
    except HwcompileError:
        raise
    except Exception as e:  # a bug in a pass: say which pass
        raise PassError(f"{type(e).__name__}: {e}", where=f"pass {name}") from e
    if not isinstance(result, PassResult):
        raise PassError(f"returned {type(result).__name__}, not a PassResult", where=f"pass {name}")
    if in_place and result.graph is not graph:
        raise PassError("declared in_place but returned a different graph", where=f"pass {name}")
    if not in_place and structure(graph) != before:
        raise PassError("declared functional (in_place = False) but edited the graph it was given",
                        where=f"pass {name}")
    if not result.modified and structure(result.graph) != (before if in_place else structure(result.graph)):
        raise PassError("reported modified=False but changed the graph", where=f"pass {name}")
    if lint:
        try:
            result.graph.lint()
        except PassError as e:
            raise PassError(f"after pass {name}: {e.message}", where=e.where) from None
    if log is not None and (result.modified or result.declined):
        entry = log.setdefault(name, {"runs": 0})
        entry["runs"] += int(result.modified)
        for k, v in result.details.items():
            entry[k] = entry.get(k, 0) + v if isinstance(v, int) and not isinstance(v, bool) else v
        if result.declined:
            entry.setdefault("declined", {}).update(result.declined)
    return result.graph, result.modified
