"""Distillation losses between the student's and the FP32 teacher's outputs, in torch.

- ``kl``: KL(teacher || student) of the softmax at temperature T over the last axis, times T^2
  (Hinton et al.), averaged over the batch: for logits.
- ``mse``: squared error relative to the teacher's power, ``sum m (s - t)^2 / sum m t^2``: scale
  free, so outputs of different magnitude weigh alike; for embeddings and feature maps.
- ``cosine``: ``1 - cos(s, t)`` along the last axis, averaged: for embeddings compared by angle.

``m`` is an optional position mask (e.g. ``attention_mask`` [N, S] for a [N, S, H] output) so
padding positions do not count.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["loss_kind", "distill_loss", "task_loss"]


def loss_kind(setting: str, teacher: torch.Tensor) -> str | None:
    """The loss for one output: the setting, or with ``auto`` KL for [N, C>1] and relative MSE otherwise;
    None for outputs that are not float."""
    if not teacher.is_floating_point():
        return None
    if setting != "auto":
        return setting
    return "kl" if teacher.dim() == 2 and teacher.shape[1] > 1 else "mse"


def _mask_like(mask: torch.Tensor | None, t: torch.Tensor) -> torch.Tensor | None:
    if mask is None or tuple(mask.shape) != tuple(t.shape[:mask.dim()]) or mask.dim() >= t.dim():
        return None
    return mask.to(t.dtype).reshape(tuple(mask.shape) + (1,) * (t.dim() - mask.dim()))


def distill_loss(kind: str, s: torch.Tensor, t: torch.Tensor, *, temperature: float = 1.0,
                 mask: torch.Tensor | None = None) -> torch.Tensor:
    if kind == "kl":
        s2, t2 = s.reshape(-1, s.shape[-1]), t.reshape(-1, t.shape[-1])
        return F.kl_div(F.log_softmax(s2 / temperature, -1), F.log_softmax(t2 / temperature, -1),
                        log_target=True, reduction="batchmean") * temperature ** 2
    m = _mask_like(mask, t)
    if kind == "mse":
        err, power = (s - t) ** 2, t ** 2
        if m is not None:
            err, power = err * m, power * m
        return err.sum() / power.sum().clamp_min(1e-12)
    cos = 1.0 - F.cosine_similarity(s, t, dim=-1, eps=1e-8)
    if m is not None:
        mm = m.reshape(cos.shape) if m.numel() == cos.numel() else m.squeeze(-1)
        return (cos * mm).sum() / mm.sum().clamp_min(1.0)
    return cos.mean()


def task_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of [N, C] logits against integer class labels [N]."""
    return F.cross_entropy(logits.reshape(len(labels), -1), labels.long())
