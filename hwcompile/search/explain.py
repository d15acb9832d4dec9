"""Why the search chose what it chose: per-layer reasons, the Pareto front, prediction checks."""
from __future__ import annotations

from typing import Any

from .milp import Problem, pareto_front, predict, snr_from_noise
from .points import Point, summary

__all__ = ["layer_reasons", "pareto", "prediction_check"]


def layer_reasons(problem: Problem, ids: list[str], assignment: dict[str, str]) -> dict[str, str]:
    """Layer id -> why it takes its candidate: the time it saves and the SNR it costs, or for an FP32
    layer what the fastest alternative would have saved and cost. ``problem`` carries the corrections."""
    noise = predict(problem, assignment).predicted_noise
    fp = problem.candidates.index("fp32")
    out = {}
    for i, lid in enumerate(ids):
        j = problem.candidates.index(assignment[lid])
        alone = lambda c: snr_from_noise(problem.damage[i, c])
        if j != fp:
            saved = problem.latency[i, fp] - problem.latency[i, j]
            cost = snr_from_noise(noise - problem.damage_scale * problem.damage[i, j]) - snr_from_noise(noise)
            verb = "saves" if saved >= 0 else "adds"
            out[lid] = (f"{assignment[lid]}: {verb} {abs(saved):.4f} ms, SNR cost {cost:.2f} dB "
                        f"(layer alone {alone(j):.1f} dB)")
            continue
        alts = [c for c in range(len(problem.candidates)) if c != fp and problem.allowed[i, c]
                and problem.latency[i, c] < problem.latency[i, fp]]
        if not alts:
            out[lid] = "fp32: no candidate measured faster for this layer"
            continue
        c = min(alts, key=lambda c: problem.latency[i, c])
        cost = snr_from_noise(noise) - snr_from_noise(noise + problem.damage_scale * problem.damage[i, c])
        out[lid] = (f"fp32: {problem.candidates[c]} would save {problem.latency[i, fp] - problem.latency[i, c]:.4f} ms "
                    f"but cost {cost:.2f} dB SNR (layer alone {alone(c):.1f} dB)")
    return out


def pareto(points: list[Point], metric: str) -> list[dict[str, Any]]:
    """The measured front (lower latency, better ``metric``), as report records."""
    front = pareto_front(points, x=lambda p: p.latency_ms, y=lambda p: p.metrics.get(metric))
    return [{"latency_ms": p.latency_ms, "size_bytes": p.size_bytes, "metrics": p.metrics,
             "plan_summary": summary(p.assignment), "source": p.source, "assignment": dict(p.assignment)}
            for p in front]


def prediction_check(points: list[Point]) -> dict[str, Any]:
    """Predicted latency (made before the plan was measured) vs its measurement, per plan."""
    rows = []
    for p in points:
        if p.predicted is None:
            continue
        pred, meas = p.predicted["predicted_latency_ms"], p.latency_ms_at_measurement
        rows.append({"source": p.source, "predicted_latency_ms": pred, "measured_latency_ms": meas,
                     "error_pct": 100.0 * (pred / meas - 1.0), "mixed_points_in_fit": p.mixed_points_in_fit})
    after = [r for r in rows if r["mixed_points_in_fit"] > 0]
    worst = max((abs(r["error_pct"]) for r in after), default=None)
    return {"before_feedback": [r for r in rows if r["mixed_points_in_fit"] == 0], "after_feedback": after,
            "after_feedback_max_abs_error_pct": worst,
            "after_feedback_within_10pct": None if worst is None else worst <= 10.0}
