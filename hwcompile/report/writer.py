"""The output folder: artifact files, ``plan.json``, ``report.json``, ``report.html`` with plots,
and ``manifest.json`` (sha256 of every file). Every file is written atomically."""
from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

from ..atomic import write_text_atomic
from ..contract import PrecisionPlan

__all__ = ["write_outputs", "render_html", "summary_rows", "json_default"]


def json_default(o: Any):
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)


def write_outputs(out: Path, artifact, plan: PrecisionPlan, report: dict, profile, *, table=None, options=None,
                  model_path: Path | None = None, target=None) -> None:
    """plan.json, report.json (no measured times), timings.json, latency.json, config.json, report.html and
    manifest.json (inputs, tools, target, the sha256 of every file), each written atomically."""
    from .manifest import input_entry, model_entry, write_manifest
    from .timings import split

    plan.save(out / "plan.json")
    stable, times = split(report)
    write_text_atomic(out / "report.json", json.dumps(stable, indent=2, default=json_default) + "\n")
    write_text_atomic(out / "timings.json", json.dumps(times, indent=2, default=json_default) + "\n")
    if table is not None:
        write_text_atomic(out / "latency.json", table.to_json())
    inputs: dict = {}
    if options is not None:
        from ..config import effective_config

        write_text_atomic(out / "config.json", json.dumps(effective_config(options), indent=2, sort_keys=True) + "\n")
        inputs = {"calib": input_entry(options.calib), "eval": input_entry(options.eval),
                  "config": {"file": "config.json", "sha256": input_entry(out / "config.json")["sha256"]},
                  "latency_table": input_entry(options.latency_table),
                  "recover_data": input_entry(getattr(options, "recover_data", None))}
    if model_path is not None:
        inputs["model"] = model_entry(Path(model_path))
    if target is not None:
        inputs["target"] = input_entry(target.path) if target.path else None
    write_text_atomic(out / "report.html", render_html(report))
    write_manifest(out, inputs={k: v for k, v in inputs.items() if v is not None}, tools=report.get("versions", {}),
                   target={"name": report["target"]["name"], "fingerprint": report["target"].get("fingerprint")})


def summary_rows(report: dict) -> list[tuple[str, str, str]]:
    """(what, baseline, compiled) rows for the CLI table and the human report."""
    b, c = report.get("baseline") or {}, report["compiled"]
    rows = [("latency (median ms)", _f(b.get("latency_ms")), _f(c.get("latency_ms"))),
            ("latency spread (IQR ms)", _f(b.get("latency_ms_spread")), _f(c.get("latency_ms_spread"))),
            ("size (bytes)", _i(b.get("size_bytes")), _i(c.get("size_bytes")))]
    for k in sorted(set(b.get("metrics", {})) | set(c.get("metrics", {}))):
        rows.append((k, _f(b.get("metrics", {}).get(k)), _f(c.get("metrics", {}).get(k))))
    return rows


def _f(x) -> str:
    return "-" if x is None else f"{x:.4g}"


def _i(x) -> str:
    return "-" if x is None else f"{x:,}"


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def _plots(report: dict) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots = []
    layers = [(k, v["latency_ms"]) for k, v in report["layers"].items() if "latency_ms" in v]
    if layers:
        top = sorted(layers, key=lambda kv: -kv[1])[:25]
        fig, ax = plt.subplots(figsize=(8, 0.28 * len(top) + 1))
        ax.barh([k for k, _ in top][::-1], [v for _, v in top][::-1], color="#4a7bb7")
        timer = report.get("per_layer_timer")
        ax.set_xlabel(f"ms per run ({timer})" if timer else "ms per run")
        ax.set_title("Slowest layers of the compiled model")
        plots.append(("Per-layer latency", _png(fig)))
        plt.close(fig)
    pareto = report.get("pareto")
    if pareto:
        fig, ax = plt.subplots(figsize=(6, 4))
        metric = report.get("accuracy_metric", "snr_db")
        xs = [p["latency_ms"] for p in pareto]
        ys = [p["metrics"].get(metric) for p in pareto]
        ax.plot(xs, ys, "o-", label="hwcompile Pareto front")
        for u in report.get("uniform", []):
            ax.plot(u["latency_ms"], u["metrics"].get(metric), "s", label=u["name"])
        ax.set_xlabel("measured latency (ms)")
        ax.set_ylabel(metric)
        ax.legend(fontsize=7)
        ax.set_title("Accuracy vs latency")
        plots.append(("Pareto front", _png(fig)))
        plt.close(fig)
    return plots


def render_html(report: dict) -> str:
    e = html.escape
    rows = "".join(f"<tr><td>{e(a)}</td><td>{e(b)}</td><td>{e(c)}</td></tr>" for a, b, c in summary_rows(report))
    layer_rows = "".join(
        f"<tr><td>{e(k)}</td><td>{e(v['op'])}</td><td>{v.get('params', 0):,}</td><td>{v.get('flops', 0):,}</td>"
        f"<td>{e(str(v.get('choice', '')))}</td><td>{_f(v.get('latency_ms'))}</td></tr>"
        for k, v in report["layers"].items() if v.get("params") or "latency_ms" in v)
    imgs = "".join(f"<h2>{e(t)}</h2><img src='data:image/png;base64,{d}'/>" for t, d in _plots(report))
    notes = "".join(f"<li>{e(n)}</li>" for n in report.get("notes", []))
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>hwcompile report</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1000px}}td,th{{padding:2px 8px;border-bottom:1px solid #ddd}}
table{{border-collapse:collapse}}</style></head><body>
<h1>hwcompile: {e(Path(report['model']['path']).name)} for {e(report['target']['name'])}</h1>
<p>backend {e(report['backend'])}, precision {e(str(report['precision']))},
speedup {_f(report.get('speedup'))}x, built in {report['seconds']} s</p>
<table><tr><th></th><th>baseline (fp32)</th><th>compiled</th></tr>{rows}</table>
<ul>{notes}</ul>{imgs}
<h2>Layers</h2><table><tr><th>layer</th><th>op</th><th>params</th><th>FLOPs</th><th>choice</th><th>ms</th></tr>
{layer_rows}</table>
<h2>Versions</h2><pre>{e(json.dumps(report['versions'], indent=1))}</pre></body></html>
"""
