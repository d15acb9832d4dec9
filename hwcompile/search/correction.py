"""Corrections of the latency, noise and size model, fitted from measured plans.

Per-layer figures miss conversions at precision boundaries and fusion changes, so

    measured - predicted = L0 + t*b + m*[mixed]

with ``b`` the summed weight of the layer-to-layer edges whose endpoints take different candidates
(an edge weighs the size of the tensor crossing it relative to the mean edge), ``[mixed]`` 1 for a
plan with any boundary, and ``t, m >= 0`` fitted by non-negative least squares over the measured
mixed plans. With one mixed plan its residual is split by the minimum-norm solution
``t = r b / (b^2 + 1)``, ``m = r / (b^2 + 1)``, so a plan that is mixed only because a candidate
does not apply everywhere (b ~ 0) goes to ``m``. ``L0`` is the mean residual of the uniform plans
(~0 by construction). Predicted noise is scaled by ``k``, the geometric mean of measured/predicted
noise (clipped to [1/100, 100]); the size offset is the mean measured artifact size minus the
predicted weight bytes.
"""
from __future__ import annotations

import dataclasses

import numpy as np
from scipy.optimize import nnls

from .milp import Problem, predict
from .points import Point

__all__ = ["NO_CORRECTION", "fit_corrections"]

NO_CORRECTION = {"latency_offset_ms": 0.0, "boundary_ms": 0.0, "mixed_ms": 0.0, "damage_scale": 1.0,
                 "size_offset_bytes": 0.0}


def fit_corrections(problem: Problem, points: list[Point]) -> dict[str, float]:
    """The corrections (module docstring) fitted on ``points``, for ``dataclasses.replace(problem, **them)``."""
    raw = dataclasses.replace(problem, **NO_CORRECTION)
    preds = [predict(raw, p.assignment) for p in points]
    r = np.array([p.latency_ms - s.predicted_latency_ms for p, s in zip(points, preds)])
    b = np.array([s.boundary_weight for s in preds], dtype=float)
    mixed = np.array([s.boundaries > 0 for s in preds])
    c0 = float(np.mean(r[~mixed])) if (~mixed).any() else 0.0
    t = m = 0.0
    rm, bm = r[mixed] - c0, b[mixed]
    if mixed.sum() >= 2 and np.ptp(bm) > 0:
        (t, m), _ = nnls(np.stack([bm, np.ones_like(bm)], 1), rm)
    elif mixed.any():   # one mixed plan: the minimum-norm split of its residual between t and m
        t = max(0.0, float(bm[0] * rm[0]) / float(bm[0] ** 2 + 1.0))
        m = max(0.0, float(rm[0]) / float(bm[0] ** 2 + 1.0))
    ratios = [np.log(10 ** (-p.metrics["snr_db"] / 10) / s.predicted_noise) for p, s in zip(points, preds)
              if s.predicted_noise > 1e-18 and p.metrics.get("snr_db", 200.0) < 199.0]
    k = float(np.exp(np.clip(np.mean(ratios), -np.log(100), np.log(100)))) if ratios else 1.0
    size_off = float(np.mean([p.size_bytes - s.predicted_size_bytes for p, s in zip(points, preds)])) if points else 0.0
    return {"latency_offset_ms": float(c0), "boundary_ms": float(t), "mixed_ms": float(m), "damage_scale": k,
            "size_offset_bytes": size_off}
