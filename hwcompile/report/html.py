"""``report.html``: one self-contained page that explains the decision.

Sections: the result (latency, size, accuracy against the FP32 baseline); the decision (objective,
constraints, the chosen measured point or why FP32 was kept); the precision map over the graph;
per-layer sensitivity against per-layer FP32 latency; the Pareto front with every measured point
drawn and numbered; the feedback iterations (predicted against measured latency); where the time
goes before and after, by op type and by layer; why each layer got its choice. Charts are inline
SVG with tooltips; there are no scripts and no external URLs.
"""
from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from . import graphmap, svg

__all__ = ["render", "summary_rows"]

e = html.escape
_CSS = """body{font-family:sans-serif;margin:1.5em auto;max-width:1100px;color:#222;padding:0 1em}
td,th{padding:2px 8px;border-bottom:1px solid #ddd;text-align:left;vertical-align:top;font-size:13px}
table{border-collapse:collapse;margin:.5em 0}h2{margin-top:1.6em;border-bottom:2px solid #eee}
.chip{display:inline-block;width:11px;height:11px;border-radius:2px;margin:0 4px 0 10px;border:1px solid #222}
.dot{display:inline-block;width:7px;height:7px;border-radius:50%;background:#d0d0d0;margin:0 4px 0 10px}
.legend{margin:.3em 0}.muted{color:#666;font-size:13px}.scroll{overflow-x:auto}"""


def _f(x, nd: int = 4) -> str:
    return "-" if x is None else f"{x:.{nd}g}"


def render(report: dict[str, Any], plan=None) -> str:
    """The page for a full report (``report.json`` + ``timings.json``) and its plan."""
    choices = {lid: v["choice"] for lid, v in report.get("layers", {}).items() if "choice" in v}
    reasons = {lid: c.reason for lid, c in (plan.layers.items() if plan is not None else []) if c.reason}
    metric = report.get("accuracy_metric") or _first_metric(report)
    parts = [f"<h1>hwcompile: {e(Path(report['model']['path']).name)} for {e(report['target']['name'])}</h1>",
             _result(report), _decision(report, metric),
             "<h2>Precision map</h2><p class='muted'>Every node of the graph in topological order (column = "
             "depth from the inputs, wrapped into bands); layers are squares in their choice's colour. Hover for "
             "names and reasons.</p><div class='scroll'>"
             + graphmap.draw(report.get("graph") or {}, choices, reasons) + "</div>",
             _sensitivity(report, choices), _pareto(report, metric), _feedback(report), _time(report),
             _why(report, choices, reasons), _footer(report)]
    return ("<!doctype html><html lang='en'><head><meta charset='utf-8'><title>hwcompile report</title>"
            f"<style>{_CSS}</style></head><body>{''.join(parts)}</body></html>\n")


def summary_rows(report: dict) -> list[tuple[str, str, str]]:
    """(what, baseline, compiled) rows for the CLI table and the human report."""
    b, c = report.get("baseline") or {}, report["compiled"]
    rows = [("latency (median ms)", _g(b.get("latency_ms")), _g(c.get("latency_ms"))),
            ("latency spread (IQR ms)", _g(b.get("latency_ms_spread")), _g(c.get("latency_ms_spread"))),
            ("size (bytes)", _i(b.get("size_bytes")), _i(c.get("size_bytes")))]
    p = report.get("speedup_paired")
    if p:
        rows.append(("speed-up vs fp32 (paired rounds)", "1", f"{p['speedup_median']:.2f}x "
                     f"[{p['ci95'][0]:.2f}, {p['ci95'][1]:.2f}] {p['resolved']}"))
    for k in sorted(set(b.get("metrics", {})) | set(c.get("metrics", {}))):
        rows.append((k, _g(b.get("metrics", {}).get(k)), _g(c.get("metrics", {}).get(k))))
    return rows


def _g(x) -> str:
    return "-" if x is None else f"{x:.4g}"


def _i(x) -> str:
    return "-" if x is None else f"{x:,}"


def _first_metric(report: dict) -> str:
    m = (report.get("compiled") or {}).get("metrics") or {}
    return next((k for k in ("top1", "spearman", "top5", "snr_db") if k in m), "snr_db")


def _result(report: dict) -> str:
    rows = "".join(f"<tr><td>{e(a)}</td><td>{e(b)}</td><td>{e(c)}</td></tr>" for a, b, c in summary_rows(report))
    notes = "".join(f"<li>{e(n)}</li>" for n in report.get("notes", []))
    speed = report.get("speedup")
    return (f"<p>backend <b>{e(report['backend'])}</b>, precision <b>{e(str(report['precision']))}</b>, "
            f"{'speed-up <b>' + _f(speed, 3) + 'x</b> over FP32, ' if speed else ''}"
            f"compiled in {_f(report.get('seconds'), 3)} s.</p>"
            f"<table><tr><th></th><th>baseline (fp32)</th><th>compiled</th></tr>{rows}</table>"
            + (f"<ul>{notes}</ul>" if notes else ""))


def _decision(report: dict, metric: str) -> str:
    s = report.get("search")
    if not s:
        return (f"<h2>Decision</h2><p>Uniform plan: every layer runs <b>{e(str(report['precision']))}</b> as asked "
                "(no search; <code>--precision mixed</code> chooses per layer from measurements).</p>")
    chosen = s.get("chosen") or {}
    items = [f"objective: {e(s.get('objective', ''))}", f"accuracy rule: {e(str(s.get('accuracy_rule')))}"]
    for key, what in (("latency_budget_ms", "latency budget (ms)"), ("size_budget_bytes", "size budget (bytes)"),
                      ("max_accuracy_drop", "largest accuracy drop"), ("min_snr_db", "SNR floor (dB)")):
        if s.get(key) is not None:
            items.append(f"{what}: {_f(s[key])}")
    if chosen:
        items.append(f"chosen measured point: <b>{e(str(chosen.get('source')))}</b>, {_f(chosen.get('latency_ms'))} ms, "
                     f"{metric} {_f((chosen.get('metrics') or {}).get(metric))}")
    if s.get("fallback"):
        items.append(f"kept FP32 because: {e(s['fallback'])}")
    if s.get("converged"):
        items.append(f"search stopped: {e(s['converged'])}")
    for cand, why in (s.get("not_offered") or {}).items():
        items.append(f"{e(cand)} not offered: {e(why)}")
    return "<h2>Decision</h2><ul>" + "".join(f"<li>{i}</li>" for i in items) + "</ul>"


def _sensitivity(report: dict, choices: dict) -> str:
    rows = (report.get("sensitivity") or {}).get("rows") or []
    base = report.get("baseline_layers_ms") or {}
    head = "<h2>Sensitivity against latency, per layer</h2>"
    if not rows:
        return head + "<p class='muted'>No per-layer sensitivity: only <code>--precision mixed</code> scores layers.</p>"
    by_layer: dict[str, dict[str, float]] = {}
    for r in rows:
        by_layer.setdefault(r["layer"], {})[r["candidate"]] = r["snr_db"]
    cands = sorted({r["candidate"] for r in rows})
    ref = "int8" if "int8" in cands else cands[0]
    pts = []
    for lid, snrs in by_layer.items():
        c = choices.get(lid, "fp32")
        shown = c if c in snrs else ref
        if shown not in snrs:
            continue
        pts.append({"x": base.get(lid, report.get("layers", {}).get(lid, {}).get("latency_ms")), "y": snrs[shown],
                    "color": svg.color(c), "tip": f"{lid}: chose {c}; alone in {shown}: {snrs[shown]:.1f} dB"})
    chart = svg.scatter(pts, xlabel="FP32 layer latency (ms, baseline profile)",
                        ylabel="output SNR with this layer alone quantized (dB)")
    return (head + f"<p class='muted'>One point per layer, coloured by its choice; y is the layer's own damage in its "
            f"chosen candidate (FP32 layers: in {e(ref)}). High and right: worth quantizing; low: sensitive.</p>"
            + chart)


def _pareto(report: dict, metric: str) -> str:
    pts = report.get("measured") or []
    head = "<h2>Pareto front</h2>"
    if not pts:
        return head + "<p class='muted'>No search: a single measured build.</p>"
    front = {(p["source"], p["latency_ms"]) for p in report.get("pareto") or []}
    chosen = (report.get("search") or {}).get("chosen") or {}
    marks, rows = [], []
    for k, p in enumerate(pts, 1):
        y = (p.get("metrics") or {}).get(metric)
        on = (p["source"], p["latency_ms"]) in front
        is_chosen = p["source"] == chosen.get("source") and p["latency_ms"] == chosen.get("latency_ms")
        c = svg.color(p["source"].split(":", 1)[1]) if p["source"].startswith("uniform:") else svg.color("mixed")
        marks.append({"x": p["latency_ms"], "y": y, "label": str(k), "color": c, "ring": is_chosen,
                      "tip": f"{k}. {p['source']}: {p['latency_ms']:.4g} ms, {metric} {_f(y)}"})
        summary = ", ".join(f"{n} {c}" for c, n in (p.get("plan_summary") or {}).items())
        rows.append(f"<tr><td>{k}</td><td>{e(p['source'])}</td><td>{_f(p['latency_ms'])}</td>"
                    f"<td>{_f(p.get('latency_ms_spread'))}</td><td>{_f(y)}</td><td>{p.get('size_bytes', 0):,}</td>"
                    f"<td>{'yes' if on else ''}{' (chosen)' if is_chosen else ''}</td><td>{e(summary)}</td></tr>")
    line = [(p["latency_ms"], (p.get("metrics") or {}).get(metric)) for p in report.get("pareto") or []
            if (p.get("metrics") or {}).get(metric) is not None]
    chart = svg.scatter(marks, xlabel="measured latency (ms, on the FP32 reference's scale)", ylabel=metric, line=line)
    return (head + "<p class='muted'>Every measured build, numbered as in the table; the line joins the front; the "
            "ringed point was chosen. Uniform builds in their candidate's colour, mixed plans in purple.</p>" + chart
            + "<table><tr><th>#</th><th>build</th><th>ms</th><th>IQR ms</th><th>" + e(metric)
            + "</th><th>bytes</th><th>on front</th><th>plan</th></tr>" + "".join(rows) + "</table>")


def _feedback(report: dict) -> str:
    check = (report.get("search") or {}).get("prediction_check") or {}
    rows = (check.get("before_feedback") or []) + (check.get("after_feedback") or [])
    head = "<h2>Feedback iterations: predicted against measured latency</h2>"
    if not rows:
        return head + "<p class='muted'>No mixed plan was predicted and measured.</p>"
    pts = [{"x": r["measured_latency_ms"], "y": r["predicted_latency_ms"], "label": r["source"],
            "color": "#8e5bb5" if r["mixed_points_in_fit"] else "#e08a1e",
            "tip": f"{r['source']}: predicted {r['predicted_latency_ms']:.4g} ms, measured "
                   f"{r['measured_latency_ms']:.4g} ms ({r['error_pct']:+.1f} %)"} for r in rows]
    table = "".join(f"<tr><td>{e(r['source'])}</td><td>{_f(r['predicted_latency_ms'])}</td>"
                    f"<td>{_f(r['measured_latency_ms'])}</td><td>{r['error_pct']:+.1f} %</td>"
                    f"<td>{r['mixed_points_in_fit']}</td></tr>" for r in rows)
    return (head + "<p class='muted'>Orange: predicted before any mixed plan was measured; purple: after the "
            "corrections were fitted on measured plans. The dashed line is a perfect prediction.</p>"
            + svg.scatter(pts, xlabel="measured (ms)", ylabel="predicted (ms)", diagonal=True)
            + "<table><tr><th>plan</th><th>predicted ms</th><th>measured ms</th><th>error</th>"
              "<th>mixed plans in the fit</th></tr>" + table + "</table>")


def _time(report: dict) -> str:
    base = report.get("baseline_layers_ms") or {}
    layers = report.get("layers") or {}
    after = {lid: v["latency_ms"] for lid, v in layers.items() if "latency_ms" in v}
    head = "<h2>Where the time goes, before and after</h2>"
    if not base and not after:
        return head + "<p class='muted'>No per-layer profile.</p>"
    ops: dict[str, list[float]] = {}
    for lid, ms in base.items():
        ops.setdefault(layers.get(lid, {}).get("op", "?"), [0.0, 0.0])[0] += ms
    for lid, ms in after.items():
        ops.setdefault(layers.get(lid, {}).get("op", "?"), [0.0, 0.0])[1] += ms
    by_op = [(op, [(b, svg.color("fp32"), f"{op} FP32: {b:.4g} ms"),
                   (a, svg.color("mixed"), f"{op} compiled: {a:.4g} ms")])
             for op, (b, a) in sorted(ops.items(), key=lambda kv: -max(kv[1]))]
    top = sorted(set(base) | set(after), key=lambda l: -max(base.get(l, 0.0), after.get(l, 0.0)))[:20]
    by_layer = [(lid, [(base.get(lid, 0.0), svg.color("fp32"), f"{lid} FP32: {base.get(lid, 0.0):.4g} ms"),
                       (after.get(lid, 0.0), svg.color(layers.get(lid, {}).get("choice", "mixed")),
                        f"{lid} compiled ({layers.get(lid, {}).get('choice', '-')}): {after.get(lid, 0.0):.4g} ms")])
                for lid in top]
    timer = report.get("per_layer_timer") or "the backend's profiler"
    return (head + f"<p class='muted'>Kernel time per run ({e(str(timer))}), mapped to layer ids; grey: the "
            "FP32 baseline, coloured: the compiled build.</p><h3>By op type</h3>"
            + svg.hbars(by_op, xlabel="ms per run") + "<h3>The 20 slowest layers</h3>"
            + svg.hbars(by_layer, xlabel="ms per run"))


def _why(report: dict, choices: dict, reasons: dict) -> str:
    base = report.get("baseline_layers_ms") or {}
    rows = []
    for lid, v in (report.get("layers") or {}).items():
        if "choice" not in v:
            continue
        c = v["choice"]
        why = reasons.get(lid) or (f"uniform {c} plan" if not report.get("search") else "")
        rows.append(f"<tr><td>{e(lid)}</td><td>{e(v.get('op', '?'))}</td><td><span class='chip' "
                    f"style='background:{svg.color(c)}'></span>{e(c)}</td><td>{_f(base.get(lid))}</td>"
                    f"<td>{_f(v.get('latency_ms'))}</td><td>{e(why)}</td></tr>")
    return ("<h2>Why each layer got its choice</h2><table><tr><th>layer</th><th>op</th><th>choice</th>"
            "<th>FP32 ms</th><th>compiled ms</th><th>reason</th></tr>" + "".join(rows) + "</table>")


def _footer(report: dict) -> str:
    m = report.get("measurements") or {}
    return ("<h2>Measurements and versions</h2>"
            f"<p class='muted'>profiles this compile measured: {m.get('measured', '-')}, replayed from a pinned table: "
            f"{m.get('pinned', '-')}, replayed from the cache: {m.get('cached', '-')} (see latency.json; "
            "<code>--remeasure</code> measures again). Target fingerprint "
            f"{e(str(report['target'].get('fingerprint')))}.</p>"
            f"<pre>{e(json.dumps(report.get('versions', {}), indent=1))}</pre>")
