"""Recovery training: the compiled graph fine-tuned against the FP32 model, weights written back.

``recover(student, teacher, data, settings, masked_layers)`` runs both graphs in torch (the
interpreter in ``module``/``ops``), trains the student's weights by distillation (``train``) or
block by block (``block``), with sparsity masks held fixed and quantizers as straight-through fake
quantization, and writes the trained weights into ``student``'s initializers in place: every node,
layer id and value name stays. torch is imported only here, lazily: without it, recovery is refused
naming the extra to install.
"""
from __future__ import annotations

import time
from typing import Callable, Iterable

from ..data import Dataset, check_feeds
from ..errors import BackendUnavailable
from ..ir import Graph
from .settings import LOSSES, MODES, RecoverSettings

__all__ = ["RecoverSettings", "MODES", "LOSSES", "recover", "recover_compiled", "require_torch"]


def require_torch():
    """The torch module, or BackendUnavailable naming the extra that installs it."""
    try:
        import torch
    except ImportError:
        raise BackendUnavailable("recovery training needs PyTorch, which is not installed", where="--recover-steps",
                                 hint="pip install 'hwcompile[train]'") from None
    return torch


def recover(student: Graph, teacher: Graph, data: Dataset, settings: RecoverSettings,
            masked_layers: Iterable[str] = (), progress: Callable[[str], None] = lambda s: None,
            field: str = "--recover-data") -> dict:
    """Train ``student`` (in place) toward ``teacher`` on ``data``; returns a JSON-able report."""
    require_torch()
    check_feeds(data.inputs, student, field=field, batched=True)
    from .module import GraphModule, check_ops
    from .train import Batches, deterministic, distill

    check_ops(student)
    check_ops(teacher)
    t0 = time.perf_counter()
    deadline = t0 + settings.minutes * 60 if settings.minutes else None
    with deterministic(settings.seed):
        progress("recovery: teacher outputs")
        s_mod = GraphModule(student, masked_layers=masked_layers)
        t_mod = GraphModule(teacher, trainable=False)
        batches = Batches(s_mod, t_mod, data, settings)
        if settings.mode == "block":
            from .block import reconstruct_blocks

            info = reconstruct_blocks(s_mod, t_mod, batches, settings, progress, deadline)
        else:
            info = distill(s_mod, batches, settings, progress, deadline)
        written = s_mod.write_back()
    return {"mode": settings.mode, "budget_steps": settings.steps, "budget_minutes": settings.minutes,
            "lr": settings.lr, "batch_size": settings.batch_size, "seed": settings.seed,
            "samples_train": int(len(batches.train)), "samples_held_out": int(len(batches.val)),
            "losses": {k: v for k, v in batches.kinds.items() if v}, "task_loss": batches.labels is not None,
            "masked_layers": len(s_mod.masks), "weights_trained": len(written),
            "seconds_total": round(time.perf_counter() - t0, 2), **info}


def recover_compiled(compiled: Graph, teacher: Graph, plan, settings: RecoverSettings, data: Dataset,
                     progress: Callable[[str], None] = lambda s: None) -> Graph:
    """The pipeline's hook: recover ``compiled`` (the plan's passes applied) in place against the FP32
    ``teacher``, with the plan's weight sparsity (N:M, unstructured) held fixed; the report goes to
    ``compiled.meta['recovery']``."""
    from ..plan import parse_sparsity

    skipped = compiled.meta.get("prune_skipped") or {}
    masked = [n.name for n in teacher.layers() if n.name not in skipped
              and parse_sparsity(plan.choice(n.name).sparsity)[0] in ("nm", "unstructured")]
    compiled.meta["recovery"] = recover(compiled, teacher, data, settings, masked, progress)
    return compiled
