"""Accuracy metrics: top-k against labels, SNR against reference outputs, Spearman on scores."""
from __future__ import annotations

import numpy as np
from scipy.stats import spearmanr

__all__ = ["topk", "snr_db", "spearman", "METRICS"]

METRICS = ("top1", "top5", "snr", "spearman")


def topk(logits: np.ndarray, labels: np.ndarray, k: int = 1) -> float:
    logits = logits.reshape(len(labels), -1)
    top = np.argsort(-logits, axis=1)[:, :k]
    return float(np.mean([labels[i] in top[i] for i in range(len(labels))]))


def snr_db(reference: list[np.ndarray], test: list[np.ndarray]) -> float:
    """10*log10(sum ref^2 / sum (ref-test)^2) over all outputs; capped at 200 dB for exact equality."""
    sig = sum(float(np.sum(np.square(r.astype(np.float64)))) for r in reference)
    err = sum(float(np.sum(np.square(r.astype(np.float64) - t.astype(np.float64)))) for r, t in zip(reference, test))
    if err == 0:
        return 200.0
    return float(min(200.0, 10 * np.log10(max(sig, 1e-30) / err)))


def spearman(scores: np.ndarray, labels: np.ndarray) -> float:
    return float(spearmanr(np.asarray(scores).reshape(-1), np.asarray(labels).reshape(-1)).statistic)
