"""The precision map: the model's graph drawn as inline SVG, each layer coloured by its choice.

``outline(graph)`` is the plain data (``report.json``'s ``graph``): every node's name, op and
whether it is a layer, and the edges along which values flow. ``draw`` lays it out by longest
path from the inputs (column = depth), wrapping the columns into bands so deep models stay
readable; layers are squares in their choice's colour, other ops small grey dots, and every
node has a tooltip (name, op, choice, why).
"""
from __future__ import annotations

import html

from .svg import color

__all__ = ["outline", "draw"]

e = html.escape


def outline(graph) -> dict:
    """{nodes: [{name, op, layer}], edges: [[producer index, consumer index], ...]} in graph order."""
    nodes = list(graph.main)
    index = {id(n): i for i, n in enumerate(nodes)}
    layers = {id(n) for n in graph.layers()}
    edges = set()
    for j, n in enumerate(nodes):
        for v in n.inputs:
            p = v.producer() if v is not None else None
            if p is not None and id(p) in index:
                edges.add((index[id(p)], j))
    return {"nodes": [{"name": n.name, "op": n.op_type, "layer": id(n) in layers} for n in nodes],
            "edges": sorted([a, b] for a, b in edges)}


def draw(outline: dict, choices: dict[str, str], reasons: dict[str, str], *, band_columns: int = 36) -> str:
    nodes, edges = outline.get("nodes") or [], outline.get("edges") or []
    if not nodes:
        return "<p><em>no graph outline in the report</em></p>"
    depth = [0] * len(nodes)
    preds: dict[int, list[int]] = {}
    for a, b in edges:
        preds.setdefault(b, []).append(a)
    for j in range(len(nodes)):            # graph order is topological
        depth[j] = max((depth[a] + 1 for a in preds.get(j, []) if a < j), default=0)
    columns: dict[int, list[int]] = {}
    for j, d in enumerate(depth):
        columns.setdefault(d, []).append(j)
    dx, dy, top = 26, 18, 24
    bands = (max(depth) // band_columns) + 1
    band_rows = [max(len(columns.get(d, [])) for d in range(b * band_columns, (b + 1) * band_columns)) or 1
                 for b in range(bands)]
    band_y = [top + sum(r * dy + 34 for r in band_rows[:b]) for b in range(bands)]
    pos = {}
    for d, members in columns.items():
        b = d // band_columns
        for k, j in enumerate(members):
            pos[j] = (14 + (d % band_columns) * dx, band_y[b] + k * dy + 8)
    width = 28 + band_columns * dx
    height = band_y[-1] + band_rows[-1] * dy + 24
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
           f'role="img" font-family="sans-serif" font-size="10">']
    for a, b in edges:
        (x1, y1), (x2, y2) = pos[a], pos[b]
        wrap = depth[b] // band_columns != depth[a] // band_columns
        if not wrap and depth[b] - depth[a] > 1:   # a skip connection: an arc above, not hidden under the chain
            lift = min(8 + 2 * (depth[b] - depth[a]), 22)
            out.append(f'<path d="M{x1},{y1} Q{(x1 + x2) / 2},{min(y1, y2) - lift} {x2},{y2}" fill="none" '
                       f'stroke="#7a9cc6" stroke-width="0.9"/>')
        else:
            out.append(f'<line x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}" stroke="{"#ddd" if wrap else "#aaa"}" '
                       f'stroke-width="0.8"/>')
    for j, n in enumerate(nodes):
        x, y = pos[j]
        if n.get("layer"):
            c = choices.get(n["name"], "fp32")
            tip = f"{n['name']} ({n['op']}): {c}" + (f" - {reasons[n['name']]}" if reasons.get(n["name"]) else "")
            out.append(f'<rect x="{x - 6}" y="{y - 6}" width="12" height="12" rx="2" fill="{color(c)}" stroke="#222" '
                       f'stroke-width="0.6"><title>{e(tip)}</title></rect>')
        else:
            out.append(f'<circle cx="{x}" cy="{y}" r="3" fill="#d0d0d0" stroke="#888" stroke-width="0.5">'
                       f'<title>{e(n["name"])} ({e(n["op"])})</title></circle>')
    out.append("</svg>")
    used = sorted({choices.get(n["name"], "fp32") for n in nodes if n.get("layer")})
    legend = " ".join(f'<span class="chip" style="background:{color(c)}"></span>{e(c)}' for c in used)
    return f'<div class="legend">{legend} <span class="dot"></span>other ops</div>{"".join(out)}'
