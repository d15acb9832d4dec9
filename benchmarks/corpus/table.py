"""Markdown table of ``benchmarks/results/corpus.json`` (what RESULTS.md shows).

    python -m benchmarks.corpus.table [results/corpus.json]

Latency ratios are per-round paired medians with their bootstrap 95 % interval: below 1 is faster.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

__all__ = ["markdown"]


def _ratio(r: dict | None) -> str:
    if not r:
        return "-"
    lo, hi = r["ci95"]
    return f"{r['latency_ratio_median']:.2f} [{lo:.2f}, {hi:.2f}]"


def _metric(m: dict) -> str:
    return ", ".join(f"{k} {v:.3f}" for k, v in (m or {}).items()) or "-"


def markdown(doc: dict) -> str:
    lines = ["| model | build | result | SNR vs FP32 (dB) | task metric | latency ms | vs FP32 | vs onnxruntime tool |",
             "|---|---|---|---|---|---|---|---|"]
    for m in doc["models"]:
        for name, b in m["builds"].items():
            status = b["status"] if b["status"] == "built" else f"{b['status']}: {b.get('message', '')[:90]}"
            snr = "-" if b.get("snr_db") is None else f"{b['snr_db']:.1f}"
            lat = "-" if "latency_ms_median" not in b else f"{b['latency_ms_median']:.3f}"
            lines.append(f"| {m['model']} | {name} | {status.replace('|', '/')} | {snr} | {_metric(b.get('metrics'))} "
                         f"| {lat} | {_ratio(b.get('vs_fp32'))} | {_ratio(b.get('vs_peer'))} |")
    return "\n".join(lines)


if __name__ == "__main__":
    p = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "results" / "corpus.json"
    print(markdown(json.loads(p.read_text())))
