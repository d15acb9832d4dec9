"""Per-layer sensitivity: how much each layer alone damages the model output under each candidate.

For every layer ``i`` and candidate ``c`` the target supports, the plan "everything FP32 except
layer i, which takes c" is applied to a clone of the graph (the real passes, with a shared
calibration ``cache`` so statistics are collected once) and run in memory with the backend's
numerics (``Backend.graph_runner``) on the first ``samples`` calibration samples. Against the cached FP32 outputs ``y`` the damage is

    mse_ic = mean((y - y_ic)^2)
    snr_ic = 10 log10(sum y^2 / sum (y - y_ic)^2)            [dB, over all outputs, capped at 200]

(sums and means over the positions that count: a token output's padding positions, marked by an
``attention_mask`` input, do not; ``hwcompile.metrics.output_weights``)
    kl_ic  = mean_n KL(softmax(y_n) || softmax(y_ic,n))       [only for a 2-D first output: logits]

and the noise-to-signal ratio ``damage_ic = 10^(-snr_ic/10)``. Quantization noise of different
layers is close to independent, so noise powers add: the planner predicts a plan's output SNR as
``-10 log10(sum_i damage_i)`` (``hwcompile.search.milp``).

Calibration statistics come from the whole calibration set (as in the final build, so the
scales are the ones deployed); only the scoring uses the ``samples`` subset. ``debug_report``
ranks the layers for INT8: the answer to "which layer broke my INT8 accuracy".
"""
from __future__ import annotations

import dataclasses

from dataclasses import asdict, dataclass, field
from typing import Callable, Mapping

import numpy as np
import onnxruntime as ort

from ..contract import Backend, Candidate
from ..data import Dataset, as_feeds
from ..errors import DataError, HwcompileError
from ..ir import Graph, to_bytes
from ..metrics import error_power, output_weights, snr_from_power
from ..contract import PrecisionPlan, QuantSettings
from ..ort_session import InMemoryRunner
from ..passes.candidates import applicable, target_candidates
from ..passes.plan import apply_plan
from ..targets import Target

__all__ = ["SensitivityRow", "SensitivityTable", "layer_sensitivity", "debug_report", "InMemoryRunner"]

_SKIP_META = {"int8dyn": "dynamic_skipped", "int4w": "int4_skipped"}
_ORT_ERRORS = tuple(getattr(ort.capi.onnxruntime_pybind11_state, n) for n in
                    ("Fail", "InvalidGraph", "NotImplemented", "RuntimeException", "InvalidArgument"))


@dataclass
class SensitivityRow:
    layer: str
    op: str
    candidate: str
    snr_db: float
    mse: float
    damage: float                 # 10^(-snr_db/10): the noise-to-signal power ratio
    kl: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SensitivityTable:
    rows: list[SensitivityRow]
    samples: int
    candidates: list[str]
    skipped: dict[str, str] = field(default_factory=dict)   # "layer|candidate" -> why not measured

    def ranked(self, candidate: str | None = "int8") -> list[SensitivityRow]:
        """Rows for ``candidate`` (None: all), most damaging (lowest SNR) first."""
        rows = [r for r in self.rows if candidate is None or r.candidate == candidate]
        return sorted(rows, key=lambda r: (r.snr_db, -r.mse, r.layer))

    def lookup(self, layer: str, candidate: str) -> SensitivityRow | None:
        return next((r for r in self.rows if r.layer == layer and r.candidate == candidate), None)

    def to_dict(self, top: int | None = None) -> dict:
        rows = self.ranked(None)
        return {"samples": self.samples, "candidates": self.candidates,
                "rows": [r.to_dict() for r in (rows if top is None else rows[:top])],
                "skipped": dict(self.skipped)}


def layer_sensitivity(graph: Graph, target: Target, backend: Backend, calib: Dataset,
                      candidates: list[str] | None = None, samples: int = 32,
                      progress: Callable[[str], None] | None = None, cache: dict | None = None,
                      quant: QuantSettings | None = None) -> SensitivityTable:
    """Damage of every (layer, candidate) on its own; see the module docstring for the math."""
    if calib is None or len(calib) == 0:
        raise DataError("sensitivity analysis needs calibration data", where="--calib")
    progress = progress or (lambda s: None)
    cache = cache if cache is not None else {}
    caps = backend.capabilities(target)
    cands = [c for c in target_candidates(target, caps, candidates) if c.name != "fp32"]
    data = calib.take(min(samples, len(calib)))
    from .stored import load_sensitivity, save_sensitivity, sensitivity_key

    stored_key = sensitivity_key(graph, target, backend, data, [c.name for c in cands], quant)  # None: no cache
    hit = load_sensitivity(stored_key)
    if hit is not None:
        try:
            return SensitivityTable(rows=[SensitivityRow(**r) for r in hit["rows"]], samples=int(hit["samples"]),
                                    candidates=list(hit["candidates"]), skipped=dict(hit.get("skipped", {})))
        except (KeyError, TypeError, ValueError):
            pass    # a stored table of another shape: score again
    reference = backend.graph_runner(graph, target).run(data)
    weights = output_weights(data.inputs, reference)     # padding tokens do not count (metrics.output_weights)
    style = backend.qdq_style(target)
    # one layer's damage only: embedding tables (quantized with any quantized layer) would add theirs to every row
    base = PrecisionPlan(quant=dataclasses.replace(quant or QuantSettings(), embeddings="float"))
    rows: list[SensitivityRow] = []
    skipped: dict[str, str] = {}
    layers = graph.layers()
    for k, node in enumerate(layers):
        progress(f"sensitivity {k + 1}/{len(layers)}: {node.name}")
        for cand in cands:
            key = f"{node.name}|{cand.name}"
            if not applicable(graph, node, cand):
                skipped[key] = f"{cand.name} does not apply to {node.op_type}"
                continue
            try:
                g = apply_plan(graph.clone(), base.with_layer(node.name, cand.choice()), style, calib, cache=cache)
                if node.name in g.meta.get(_SKIP_META.get(cand.precision, ""), {}):
                    skipped[key] = g.meta[_SKIP_META[cand.precision]][node.name]
                    continue
                out = backend.graph_runner(g, target).run(data)
            except (HwcompileError, *_ORT_ERRORS) as e:  # a candidate a pass or the runtime refuses
                skipped[key] = str(e).splitlines()[0][:200]
                continue
            rows.append(_row(node.name, node.op_type, cand, reference, out, weights))
    table = SensitivityTable(rows=rows, samples=len(data), candidates=[c.name for c in cands], skipped=skipped)
    save_sensitivity(stored_key, table)
    return table


def _row(layer: str, op: str, cand: Candidate, ref: list[np.ndarray], out: list[np.ndarray],
         weights: list[np.ndarray | None]) -> SensitivityRow:
    sig, err, n = error_power(ref, out, weights)
    snr, mse = snr_from_power(sig, err), err / max(n, 1.0)
    kl = _kl(ref[0], out[0]) if ref[0].ndim == 2 and ref[0].shape[1] >= 2 else None
    return SensitivityRow(layer=layer, op=op, candidate=cand.name, snr_db=snr, mse=mse,
                          damage=float(10.0 ** (-snr / 10.0)), kl=kl)


def _kl(ref: np.ndarray, out: np.ndarray) -> float:
    def log_softmax(x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float64) - x.max(axis=1, keepdims=True)
        return x - np.log(np.exp(x).sum(axis=1, keepdims=True))

    lp, lq = log_softmax(ref), log_softmax(out)
    return float(np.mean(np.sum(np.exp(lp) * (lp - lq), axis=1)))


def debug_report(table: SensitivityTable, candidate: str = "int8", top: int = 10, verified: dict | None = None) -> dict:
    """Which layers break ``candidate`` accuracy: the ranking, the culprit and what to try.
    ``verified`` (``analysis.verify.verify_ranking``): the measured whole build; where it disagrees
    with the additive prediction the ranking is the leave-one-out measurement's."""
    if verified and verified.get("ranking_by") == "leave-one-out" and verified.get("leave_one_out"):
        return _measured_report(table, candidate, top, verified)
    ranked = table.ranked(candidate)
    if not ranked:
        return {"candidate": candidate, "samples": table.samples, "ranking": [], "culprit": None,
                "predicted_snr_db_all": None,
                "advice": f"no layer could be measured with {candidate} (available: {table.candidates})"}
    total = sum(r.damage for r in ranked)
    ranking = []
    for r in ranked[:top]:
        d = r.to_dict()
        d["share_of_noise"] = r.damage / total if total > 0 else 0.0
        ranking.append(d)
    worst = ranked[0]
    rest = total - worst.damage
    advice = (f"layer '{worst.layer}' ({worst.op}) alone brings the output SNR to {worst.snr_db:.1f} dB "
              f"({100 * ranking[0]['share_of_noise']:.0f}% of the predicted {candidate} noise); keeping it in "
              f"fp32 would raise the predicted SNR to {noise_to_db(rest):.1f} dB. Try a plan file with it in fp32, "
              f"--precision mixed, or a different calibration method (percentile/entropy/mse).")
    if verified:
        advice += (f" Measured: the whole {candidate} build gives {verified['measured_snr_db']:.1f} dB "
                   f"(predicted {noise_to_db(total):.1f} dB, within {verified['tolerance_db']:.0f} dB).")
    return {"candidate": candidate, "samples": table.samples, "ranking": ranking, "culprit": worst.layer,
            "predicted_snr_db_all": noise_to_db(total), "advice": advice, "verified": verified}


def _measured_report(table: SensitivityTable, candidate: str, top: int, verified: dict) -> dict:
    rows = [r for r in verified["leave_one_out"] if r["snr_db"] is not None]
    single = {r.layer: r for r in table.ranked(candidate)}
    ranking = [{"layer": r["layer"], "op": r["op"], "candidate": candidate, "snr_db": single[r["layer"]].snr_db,
                "loo_snr_db": r["snr_db"], "gain_db": r["gain_db"],
                "share_of_noise": max(0.0, 1.0 - 10 ** (-r["gain_db"] / 10.0))} for r in rows[:top]]
    best = rows[0]
    advice = (f"the additive prediction ({verified['predicted_snr_db']:.1f} dB) and the measured {candidate} build "
              f"({verified['measured_snr_db']:.1f} dB) disagree by more than {verified['tolerance_db']:.0f} dB: the "
              f"layers' errors do not add, so the layers are ranked by measurement (each left in fp32 in the whole "
              f"build). Keeping '{best['layer']}' ({best['op']}) in fp32 gives {best['snr_db']:.1f} dB "
              f"({best['gain_db']:+.1f} dB); try a plan file with it in fp32, or --precision mixed.")
    return {"candidate": candidate, "samples": table.samples, "ranking": ranking, "culprit": best["layer"],
            "predicted_snr_db_all": verified["predicted_snr_db"], "advice": advice, "verified": verified}


def noise_to_db(noise: float) -> float:
    return 200.0 if noise <= 1e-20 else float(min(200.0, -10.0 * np.log10(noise)))
