"""Small inline-SVG charts for the self-contained report: scatter (with labels and a line), bars.

No scripts, no external URLs: each chart is one ``<svg>`` element with ``<title>`` tooltips.
Axes are linear with "nice" ticks; every point given is drawn inside the plot area.
"""
from __future__ import annotations

import html
import math
from typing import Sequence

__all__ = ["COLORS", "color", "scatter", "hbars", "ticks"]

COLORS = {"fp32": "#9e9e9e", "fp16": "#4a7bb7", "int8": "#2e9e5b", "int8dyn": "#18a7a0", "int4w": "#e08a1e",
          "mixed": "#8e5bb5"}
_EXTRA = ["#c2416b", "#6b8e23", "#b8860b", "#5f6caf"]
e = html.escape


def color(name: str) -> str:
    base = name.split("+")[0]
    return COLORS.get(base, _EXTRA[sum(map(ord, base)) % len(_EXTRA)])


def ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.ceil(lo / step) * step
    return [round(start + i * step, 12) for i in range(int((hi - start) / step + 1e-9) + 1)]


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def _range(vals: Sequence[float]) -> tuple[float, float]:
    lo, hi = min(vals), max(vals)
    pad = (hi - lo) * 0.08 or abs(hi) * 0.05 or 1.0
    return lo - pad, hi + pad


def scatter(points: Sequence[dict], *, xlabel: str, ylabel: str, width: int = 640, height: int = 380,
            line: Sequence[tuple[float, float]] = (), diagonal: bool = False, title: str = "") -> str:
    """Points ``{x, y, label?, color?, tip?, ring?}``; ``line``: a polyline (e.g. the Pareto front);
    ``diagonal``: the y = x line (predicted vs measured)."""
    pts = [p for p in points if p.get("x") is not None and p.get("y") is not None
           and math.isfinite(p["x"]) and math.isfinite(p["y"])]
    if not pts:
        return "<p><em>nothing to plot</em></p>"
    ml, mr, mt, mb = 64, 20, 24 if title else 12, 46
    xs = [p["x"] for p in pts] + [x for x, _ in line]
    ys = [p["y"] for p in pts] + [y for _, y in line]
    if diagonal:
        xs = ys = xs + ys
    x0, x1 = _range(xs)
    y0, y1 = _range(ys)
    sx = lambda x: ml + (x - x0) / (x1 - x0) * (width - ml - mr)
    sy = lambda y: height - mb - (y - y0) / (y1 - y0) * (height - mt - mb)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" font-family="sans-serif" font-size="11">']
    if title:
        out.append(f'<text x="{width / 2}" y="14" text-anchor="middle" font-size="13">{e(title)}</text>')
    out.append(f'<rect x="{ml}" y="{mt}" width="{width - ml - mr}" height="{height - mt - mb}" fill="#fafafa" '
               f'stroke="#bbb"/>')
    for t in ticks(x0, x1):
        out.append(f'<line x1="{sx(t):.1f}" y1="{height - mb}" x2="{sx(t):.1f}" y2="{height - mb + 4}" stroke="#555"/>'
                   f'<text x="{sx(t):.1f}" y="{height - mb + 16}" text-anchor="middle">{_fmt(t)}</text>')
    for t in ticks(y0, y1):
        out.append(f'<line x1="{ml - 4}" y1="{sy(t):.1f}" x2="{ml}" y2="{sy(t):.1f}" stroke="#555"/>'
                   f'<text x="{ml - 6}" y="{sy(t) + 4:.1f}" text-anchor="end">{_fmt(t)}</text>')
    out.append(f'<text x="{(ml + width - mr) / 2}" y="{height - 8}" text-anchor="middle">{e(xlabel)}</text>'
               f'<text transform="translate(14 {(mt + height - mb) / 2}) rotate(-90)" text-anchor="middle">'
               f'{e(ylabel)}</text>')
    if diagonal:
        lo, hi = max(x0, y0), min(x1, y1)
        out.append(f'<line x1="{sx(lo):.1f}" y1="{sy(lo):.1f}" x2="{sx(hi):.1f}" y2="{sy(hi):.1f}" '
                   f'stroke="#999" stroke-dasharray="4 3"><title>predicted = measured</title></line>')
    if line:
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in sorted(line))
        out.append(f'<polyline points="{path}" fill="none" stroke="#333" stroke-width="1.5"/>')
    for p in pts:
        cx, cy = sx(p["x"]), sy(p["y"])
        tip = e(p.get("tip") or p.get("label") or "")
        if p.get("ring"):
            out.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="9" fill="none" stroke="#d62728" stroke-width="2"/>')
        out.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="5" fill="{p.get("color", "#4a7bb7")}" stroke="#222" '
                   f'stroke-width="0.6"><title>{tip}</title></circle>')
        if p.get("label"):
            out.append(f'<text x="{cx + 7:.1f}" y="{cy - 6:.1f}" font-size="10">{e(str(p["label"]))}</text>')
    out.append("</svg>")
    return "".join(out)


def hbars(rows: Sequence[tuple[str, Sequence[tuple[float, str, str]]]], *, xlabel: str, width: int = 720,
          label_width: int = 230) -> str:
    """Horizontal bar groups: ``[(row label, [(value, color, tip), ...]), ...]``, one bar per value."""
    if not rows:
        return "<p><em>nothing to plot</em></p>"
    per = max(len(v) for _, v in rows)
    bar, gap = 9, 6
    height = 30 + len(rows) * (per * bar + gap)
    vmax = max((v for _, vals in rows for v, _, _ in vals), default=0.0) or 1.0
    span = width - label_width - 60
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" font-family="sans-serif" font-size="10">']
    y = 6
    for label, vals in rows:
        out.append(f'<text x="{label_width - 6}" y="{y + per * bar / 2 + 4:.1f}" text-anchor="end">'
                   f'{e(label[-40:])}<title>{e(label)}</title></text>')
        for k, (v, c, tip) in enumerate(vals):
            w = max(0.5, v / vmax * span)
            out.append(f'<rect x="{label_width}" y="{y + k * bar}" width="{w:.1f}" height="{bar - 1}" fill="{c}">'
                       f'<title>{e(tip)}</title></rect><text x="{label_width + w + 3:.1f}" y="{y + k * bar + 8}">'
                       f'{_fmt(v)}</text>')
        y += per * bar + gap
    out.append(f'<text x="{label_width + span / 2}" y="{height - 6}" text-anchor="middle">{e(xlabel)}</text></svg>')
    return "".join(out)
