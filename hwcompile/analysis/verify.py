"""Check the additive sensitivity model against the real build, and rank by measurement where it fails.

``debug`` ranks layers by the damage each does alone and predicts the whole build's output SNR as
``-10 log10(sum_i damage_i)`` (independent noise adds). That fails where the layers' errors are
correlated (two branches whose rounding errors cancel in a difference, a layer whose error is
masked or amplified by its neighbours' quantization): the single-layer figures, the prediction
and the real build then disagree. This module builds the whole model at the candidate (the same
passes, calibration and Q/DQ style as ``compile``) and measures its SNR; when the prediction
misses it by more than ``tolerance_db`` it builds the model once per layer with only that layer
left in FP32 (leave-one-out, most damaging first, at most ``max_layers``) and ranks the layers by
the measured SNR of those builds: the layer whose return to FP32 raises the measured SNR most
comes first.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

from ..contract import Backend, LayerChoice, PrecisionPlan, QuantSettings
from ..data import Dataset
from ..errors import HwcompileError
from ..ir import Graph
from ..metrics import error_power, output_weights, snr_from_power
from ..passes.candidates import target_candidates
from ..passes.plan import apply_plan
from ..targets import Target
from .sensitivity import SensitivityTable, noise_to_db

__all__ = ["verify_ranking"]


def verify_ranking(graph: Graph, target: Target, backend: Backend, calib: Dataset, table: SensitivityTable,
                   candidate: str = "int8", *, samples: int = 32, quant: QuantSettings | None = None,
                   tolerance_db: float = 3.0, max_layers: int = 48, always: bool = False,
                   progress: Callable[[str], None] | None = None, cache: dict | None = None) -> dict:
    """{measured_snr_db, predicted_snr_db, agrees, ranking_by, leave_one_out: [{layer, op, snr_db, gain_db}]}.
    ``always``: measure leave-one-out even when the prediction agrees."""
    progress = progress or (lambda s: None)
    cache = cache if cache is not None else {}
    ranked = table.ranked(candidate)
    cand = next(c for c in target_candidates(target, backend.capabilities(target), [candidate]) if c.name == candidate)
    data = calib.take(min(samples, len(calib)))
    reference = backend.graph_runner(graph, target).run(data)
    weights = output_weights(data.inputs, reference)
    style = backend.qdq_style(target)
    full = PrecisionPlan(default=cand.choice(), quant=dataclasses.replace(quant or QuantSettings(), embeddings="float"))

    def measure(plan: PrecisionPlan) -> float:
        g = apply_plan(graph.clone(), plan, style, calib, cache=cache)
        sig, err, _ = error_power(reference, backend.graph_runner(g, target).run(data), weights)
        return snr_from_power(sig, err)

    progress(f"verify: whole model at {candidate}")
    measured = measure(full)
    predicted = noise_to_db(sum(r.damage for r in ranked)) if ranked else None
    agrees = predicted is not None and abs(predicted - measured) <= tolerance_db
    out = {"candidate": cand.name, "measured_snr_db": measured, "predicted_snr_db": predicted,
           "tolerance_db": tolerance_db, "agrees": agrees, "ranking_by": "additive", "leave_one_out": []}
    if agrees and not always:
        return out
    fp32 = LayerChoice()
    rows = []
    for k, r in enumerate(ranked[:max_layers]):
        progress(f"verify: leave-one-out {k + 1}/{min(len(ranked), max_layers)}: {r.layer}")
        try:
            snr = measure(full.with_layer(r.layer, fp32))
        except HwcompileError as e:
            rows.append({"layer": r.layer, "op": r.op, "snr_db": None, "gain_db": None, "error": str(e)[:200]})
            continue
        rows.append({"layer": r.layer, "op": r.op, "snr_db": snr, "gain_db": snr - measured})
    rows.sort(key=lambda x: (x["snr_db"] is None, -(x["snr_db"] or 0.0), x["layer"]))
    out["leave_one_out"] = rows
    out["ranking_by"] = "leave-one-out" if not agrees else "additive"
    out["layers_left_out"] = len(rows)
    out["layers_total"] = len(ranked)
    return out
