"""Gradient-based weight importance (Fisher, SNIP, GraSP), computed by the recovery engine.

The gradients are of the task loss on the calibration data: cross-entropy against the labels when
the data has integer labels, otherwise the *true-Fisher* objective with targets sampled from the
model itself (seeded): a class drawn from the softmax for logits [N, C], and ``y + e`` with
``e ~ N(0, var(y))`` for other float outputs (a Gaussian likelihood). With ``g_b`` the gradient of
batch b's mean loss, B batches:

- ``snip``:   ``|w * sum_b g_b| / B``                      (Lee et al. 2019, connection sensitivity)
- ``fisher``: ``w^2 * sum_b g_b^2 / B``                    (diagonal Fisher saliency, OBD-style; twice
                                                            the loss change the Fisher predicts)
- ``grasp``:  ``w * (H g)`` with g, H the full-data gradient and Hessian (Wang et al. 2020 prune the
              largest ``-w * Hg``; kept here as the importance, higher = keep), H g by a
              Hessian-vector product averaged over batches.

Higher scores are kept. Returns one score array per layer id, shaped like the layer's weight.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np

from ..data import Dataset
from ..ir import Graph

__all__ = ["CRITERIA", "gradient_importance"]

CRITERIA = ("fisher", "snip", "grasp")


def gradient_importance(graph: Graph, layers: Iterable[str], data: Dataset, criterion: str, *,
                        batch_size: int = 8, limit: int = 256, seed: int = 0) -> dict[str, np.ndarray]:
    from . import require_torch

    torch = require_torch()
    from .module import GraphModule
    from .train import deterministic

    if criterion not in CRITERIA:
        from ..errors import ConfigError

        raise ConfigError(f"unknown gradient criterion {criterion!r}", where="--prune-criterion", hint=f"one of {CRITERIA}")
    with deterministic(seed):
        mod = GraphModule(graph)
        names = {lid: mod._weight_initializer(lid) for lid in layers}
        names = {lid: n for lid, n in names.items() if n in mod.key}
        params = {lid: mod.params[mod.key[n]] for lid, n in names.items()}
        gen = torch.Generator().manual_seed(seed)
        micro = min(graph.fixed_batch() or batch_size, batch_size)
        n = min(len(data), limit)
        from ..data import as_feeds

        feeds = {k: torch.from_numpy(np.ascontiguousarray(v[:n])) for k, v in as_feeds(data.inputs, graph).items()}
        labels = None
        if data.labels is not None and np.issubdtype(np.asarray(data.labels).dtype, np.integer):
            labels = torch.from_numpy(np.asarray(data.labels)[:n])
        acc = {lid: torch.zeros_like(p) for lid, p in params.items()}
        grads, batches = [], []
        for s in range(0, n, micro):
            idx = torch.arange(s, min(s + micro, n))
            batch = {k: v[idx] for k, v in feeds.items()}
            loss = _loss(mod, batch, None if labels is None else labels[idx], gen)
            gs = torch.autograd.grad(loss, list(params.values()))
            for (lid, a), g in zip(acc.items(), gs):
                a += g * g if criterion == "fisher" else g
            batches.append((batch, idx))
            grads.append(len(idx))
        count = len(grads)
        if criterion == "fisher":
            return {lid: (params[lid].detach() ** 2 * a / count).numpy() for lid, a in acc.items()}
        if criterion == "snip":
            return {lid: (params[lid].detach() * a / count).abs().numpy() for lid, a in acc.items()}
        g_full = {lid: a / count for lid, a in acc.items()}
        hg = {lid: torch.zeros_like(p) for lid, p in params.items()}
        gen = torch.Generator().manual_seed(seed)       # the same sampled targets as for the gradient
        for batch, idx in batches:
            loss = _loss(mod, batch, None if labels is None else labels[idx], gen)
            gs = torch.autograd.grad(loss, list(params.values()), create_graph=True)
            dot = sum((g * g_full[lid]).sum() for lid, g in zip(params, gs))
            for lid, h in zip(params, torch.autograd.grad(dot, list(params.values()))):
                hg[lid] += h / count
        return {lid: (params[lid].detach() * hg[lid]).numpy() for lid in params}


def _loss(mod, batch, labels, gen):
    import torch
    import torch.nn.functional as F

    out = mod(batch)
    terms = []
    for i, name in enumerate(mod.output_names):
        y = out[name]
        if not y.is_floating_point():
            continue
        if y.dim() == 2 and y.shape[1] > 1:
            if labels is not None and i == 0:
                target = labels.long()
            else:
                target = torch.multinomial(torch.softmax(y.detach(), -1), 1, generator=gen).reshape(-1)
            terms.append(F.cross_entropy(y, target))
        else:
            noise = torch.randn(y.shape, generator=gen) * y.detach().std().clamp_min(1e-12)
            terms.append(0.5 * ((y - (y.detach() + noise)) ** 2).mean())
    return sum(terms)
