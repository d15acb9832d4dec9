"""hwcompile's imports follow the layer order and have no cycles.

Every ``import`` / ``from ... import`` of an hwcompile module anywhere in the package (at module
level or inside a function: a lazy import is still a dependency) is read with ``ast``. Each module
belongs to a layer (``LAYERS``, lowest first; README's layout section explains the order); a
module may import its own layer and those below, never above, and the module graph has no cycle.
A new top-level module or package must be placed in ``LAYERS``.
"""
from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "hwcompile"

#: lowest first; a name is a top-level module or subpackage of hwcompile
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("errors", "version", "atomic", "output", "ort_guard", "models", "cache")),
    ("ir", ("ir", "data", "metrics", "ort_session")),
    ("contract", ("contract", "plan", "targets", "versions")),
    # recover (training) sits with the passes: gradient pruning criteria and prune -> recover cycles use it
    ("numerics", ("quant", "prune", "passes", "analysis", "transform", "recover")),
    ("measure", ("measure", "latency_table", "build_cache", "paired")),
    ("search", ("search",)),
    ("backends", ("backends",)),
    ("pipeline", ("pipeline", "profiling", "report", "config", "gates")),
    ("cli", ("cli", "__main__", "", "api")),      # "": the package itself (hwcompile/__init__.py, the API)
]
RANK = {name: k for k, (_, names) in enumerate(LAYERS) for name in names}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def is_module(name: str) -> bool:
    p = ROOT / name.replace(".", "/")
    return p.with_suffix(".py").is_file() or (p / "__init__.py").is_file()


def imports_of(path: Path) -> set[str]:
    return imports_in(path.read_text(), module_name(path), path.name == "__init__.py")


def imports_in(source: str, me: str, is_package: bool) -> set[str]:
    """The hwcompile modules module ``me`` imports (``from pkg import mod`` counts as ``pkg.mod``)."""
    package = me.split(".") if is_package else me.split(".")[:-1]
    out: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "hwcompile")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "hwcompile":
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                out.add(sub if is_module(sub) else target)
    out.discard(me)
    return out


def import_graph() -> nx.DiGraph:
    g = nx.DiGraph()
    for path in sorted(PKG.rglob("*.py")):
        me = module_name(path)
        g.add_node(me)
        for other in imports_of(path):
            g.add_edge(me, other)
    return g


def layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_module_has_a_layer():
    missing = sorted({layer_of(m) for m in import_graph() if layer_of(m) not in RANK})
    assert not missing, f"place these hwcompile modules in LAYERS (tests/test_layers.py): {missing}"


def test_no_import_against_the_layer_order():
    g = import_graph()
    bad = []
    for a, b in g.edges:
        la, lb = layer_of(a), layer_of(b)
        if la in RANK and lb in RANK and RANK[lb] > RANK[la]:
            bad.append(f"{a} ({LAYERS[RANK[la]][0]}) imports {b} ({LAYERS[RANK[lb]][0]})")
    assert not bad, "imports against the layer order:\n" + "\n".join(sorted(bad))


def test_no_import_cycles():
    g = import_graph()
    # the package itself is imported implicitly by every submodule; only its own imports count
    cycles = [c for c in nx.simple_cycles(g) if "hwcompile" not in c]
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c + c[:1]) for c in cycles)
    assert not any(a != "hwcompile" and b == "hwcompile" for a, b in g.edges), \
        "a module imports the hwcompile package itself (import what it needs from its module)"


def test_no_private_names_across_modules():
    """``from x import _name`` across modules is refused: what another module needs is public."""
    bad = []
    for path in sorted(PKG.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("hwcompile")):
                bad += [f"{module_name(path)}: {node.module}.{a.name}" for a in node.names
                        if a.name.startswith("_") and not a.name.startswith("__")]
    assert not bad, "private names imported across modules:\n" + "\n".join(bad)


def test_the_reader_sees_lazy_relative_and_submodule_imports():
    """The reader above finds imports inside functions, relative ones and ``from pkg import module``."""
    src = ("from __future__ import annotations\nfrom . import milp\nfrom ..ir import Graph\n\n"
           "def f():\n    from ..pipeline import build\n    import hwcompile.cli\n")
    assert imports_in(src, "hwcompile.search.probe", False) == {
        "hwcompile.search.milp", "hwcompile.ir", "hwcompile.pipeline", "hwcompile.cli"}
    g = nx.DiGraph([("hwcompile.a", "hwcompile.b"), ("hwcompile.b", "hwcompile.a")])
    assert list(nx.simple_cycles(g))
