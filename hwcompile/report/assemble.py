"""The content of ``report.json``: one dict with stable keys, assembled from what the pipeline measured."""
from __future__ import annotations

from typing import Any

from ..analysis.stats import layer_stats, model_summary
from ..contract import Artifact, Backend, PrecisionPlan, Profile
from ..ir import Graph
from ..targets import Target
from ..version import __version__
from ..versions import tool_versions

__all__ = ["assemble_report", "build_notes"]


def assemble_report(model_path, input_hash, target: Target, backend: Backend, graph: Graph, compiled_graph: Graph,
                    plan: PrecisionPlan, baseline: dict | None, compiled: dict, profile: Profile, pass_log: dict,
                    artifact: Artifact, search_info: dict | None, seconds: float) -> dict[str, Any]:
    """``report.json``'s content: model, target, baseline vs compiled, per-layer table, passes, versions, notes."""
    stats = layer_stats(graph)
    layers = {}
    for lid, s in stats.items():
        entry = dict(s)
        if lid in profile.layers_ms:
            entry["latency_ms"] = profile.layers_ms[lid]
        if s["flops"] or s["params"]:
            entry["choice"] = plan.choice(lid).candidate
            entry["sparsity"] = plan.choice(lid).sparsity
        layers[lid] = entry
    for lid, ms in profile.layers_ms.items():  # layers our passes introduced (e.g. folded-bias Add)
        layers.setdefault(lid, {"op": "?", "params": 0, "flops": 0})["latency_ms"] = ms
    report = {
        "format": "hwcompile.report/1",
        "model": {"path": str(model_path), "sha256": input_hash, **model_summary(graph)},
        "target": {"name": target.name, "backend": target.backend, "path": target.path,
                   "fingerprint": target.fingerprint(tool_versions(backend)),
                   "capabilities": backend.capabilities(target).to_dict()},
        "backend": backend.name,
        "precision": plan.default.candidate if not plan.layers else "mixed",
        "baseline": baseline,
        "compiled": compiled,
        "speedup": (baseline["latency_ms"] / compiled["latency_ms"]) if baseline else None,
        "layers": layers,
        "unmapped_kernels_ms": profile.unmapped_ms,
        "kernels": profile.info.get("kernels", [])[:50],
        "per_layer_timer": profile.info.get("per_layer_timer"),
        "passes": pass_log,
        "plan_passes": compiled_graph.meta.get("plan_passes", {}),
        "specialization": {"shapes": graph.meta.get("shape_specialization"),
                           "attention_masks": graph.meta.get("attention_masks"),
                           "nan_guards_declined": graph.meta.get("nan_guards_declined") or {}},
        "artifact": {"files": artifact.files, **{k: v for k, v in artifact.info.items() if k != "session"}},
        "compiled_ops": model_summary(compiled_graph)["ops"],
        "versions": {"hwcompile": __version__, **tool_versions(backend)},
        "seconds": round(seconds, 2),
    }
    if search_info:
        report.update(search_info)
    report["notes"] = build_notes(artifact, profile, compiled_graph)
    return report


def build_notes(artifact: Artifact, profile: Profile, graph: Graph) -> list[str]:
    """Sentences for people: what was not built or not applied, and why."""
    notes = []
    if artifact.info.get("engine_built") is False:
        notes.append(f"no engine was built: {artifact.info.get('engine_reason')}; the deployable ONNX was written "
                     "and validated, and latency/accuracy were measured with onnxruntime on this CPU")
    if graph.meta.get("int8_embeddings"):
        notes.append("INT8 embedding tables (per-row scales; plan.quant.embeddings = 'float' keeps them float): "
                     + ", ".join(graph.meta["int8_embeddings"]))
    kept = graph.meta.get("float_tensors") or {}
    if kept:
        notes.append(f"{len(kept)} activation(s) kept float under INT8, e.g. "
                     + "; ".join(f"{k}: {v}" for k, v in list(kept.items())[:3]))
    for key, what in (("dynamic_skipped", "dynamic INT8"), ("int4_skipped", "INT4"), ("prune_skipped", "pruning"),
                      ("channel_prune_skipped", "channel pruning")):
        skipped = graph.meta.get(key) or {}
        if skipped:
            notes.append(f"{what} not applied to {len(skipped)} layer(s), e.g. "
                         + "; ".join(f"{k}: {v}" for k, v in list(skipped.items())[:3]))
    return notes
