"""Graph-level variants of a quantized build, kept only where measured faster and accurate enough.

The attention products Q K^T and P V multiply two activations, so they are not layers with a weight
the per-layer planner assigns; they are variants of the whole build: ``attention int8 QK^T`` and
``attention int8 QK^T+PV`` (``passes/quantize_attention.py``). Each is applied to a copy of the
compiled graph, lowered and measured on the target like the build itself; ``choose_variant`` keeps
the fastest one that is

- resolved faster: its median plus its spread below the base build's median minus its spread, and
- accurate enough: its task metric (top-1, Spearman) at most ``max_drop`` below the base build's,
  or, with no task metric, its output SNR against FP32 at most ``SNR_TOLERANCE_DB`` below the base's.

Otherwise the base build stays. The decision is a pure function of the measurements (tested with
synthetic ones); ``try_attention_variants`` is the glue that builds and measures through callbacks.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..ir import Graph
from ..passes.quantize_attention import attention_matmuls, quantize_attention

__all__ = ["Variant", "ATTENTION_VARIANTS", "SNR_TOLERANCE_DB", "choose_variant", "try_attention_variants"]

SNR_TOLERANCE_DB = 1.0
DEFAULT_MAX_DROP = 0.003


@dataclass(frozen=True)
class Variant:
    name: str
    products: tuple[str, ...]      # which attention products run in dynamic INT8: "qk", "pv"

    def apply(self, graph: Graph) -> Graph:
        quantize_attention(graph, self.products)
        graph.lint()
        return graph


ATTENTION_VARIANTS = (Variant("attention int8 QK^T", ("qk",)), Variant("attention int8 QK^T+PV", ("qk", "pv")))


def choose_variant(base: dict, measured: dict[str, dict], *, max_drop: float | None = None) -> tuple[str | None, dict]:
    """(the chosen variant's name or None, {name: why kept or refused}). ``base`` and each measured
    entry carry ``latency_ms``, ``latency_ms_spread`` and ``metrics`` (as the pipeline measures)."""
    why, ok = {}, []
    bound = base["latency_ms"] - base.get("latency_ms_spread", 0.0)
    for name, m in measured.items():
        upper = m["latency_ms"] + m.get("latency_ms_spread", 0.0)
        if upper >= bound:
            why[name] = f"not resolved faster ({m['latency_ms']:.3f} ms vs {base['latency_ms']:.3f} ms, spreads included)"
            continue
        reason = _accuracy_refusal(base.get("metrics", {}), m.get("metrics", {}), max_drop)
        if reason:
            why[name] = reason
            continue
        why[name] = f"faster ({m['latency_ms']:.3f} ms vs {base['latency_ms']:.3f} ms) and accurate enough"
        ok.append(name)
    chosen = min(ok, key=lambda n: measured[n]["latency_ms"]) if ok else None
    return chosen, why


def _accuracy_refusal(base: dict, m: dict, max_drop: float | None) -> str | None:
    for key in ("spearman", "top1"):
        if key in base:
            if key not in m:
                return f"no {key} measured"
            drop = base[key] - m[key]
            limit = DEFAULT_MAX_DROP if max_drop is None else max_drop
            return None if drop <= limit else f"{key} {drop:.4f} below the base build (limit {limit})"
    if "snr_db" in base:
        if "snr_db" not in m:
            return "no output SNR measured"
        drop = base["snr_db"] - m["snr_db"]
        return None if drop <= SNR_TOLERANCE_DB else f"output SNR {drop:.2f} dB below the base build"
    return "no accuracy measured (needs --eval or --calib data)"


def try_attention_variants(graph: Graph, base: dict, lower: Callable[[Graph, Path], object],
                           measure: Callable[[object], dict], work: Path, *, max_drop: float | None = None):
    """Build and measure every attention variant of the compiled ``graph`` (measured as ``base``);
    returns (graph, artifact or None, measured or None, record): the chosen variant's, or
    ``(graph, None, None, record)`` when the base build stays."""
    sites = attention_matmuls(graph)
    record: dict = {"attention_products": {k: len(v) for k, v in sites.items()}, "measured": {}}
    if not sites["qk"]:
        record["chosen"] = None
        return graph, None, None, record
    built, measured = {}, {}
    for i, v in enumerate(ATTENTION_VARIANTS):
        g = v.apply(graph.clone())
        art = lower(g, work / f"variant-{i}")
        built[v.name] = (g, art)
        measured[v.name] = measure(art)
        record["measured"][v.name] = {"latency_ms": measured[v.name]["latency_ms"],
                                      "latency_ms_spread": measured[v.name].get("latency_ms_spread"),
                                      "metrics": measured[v.name].get("metrics", {})}
    chosen, why = choose_variant(base, measured, max_drop=max_drop)
    record.update(chosen=chosen, why=why)
    if chosen is None:
        return graph, None, None, record
    g, art = built[chosen]
    return g, art, measured[chosen], record
