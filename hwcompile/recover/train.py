"""The distillation loop: the student graph trained to reproduce the FP32 teacher on the data.

Seeded and deterministic on the CPU (``torch.use_deterministic_algorithms`` while it runs, one
seeded generator for the sample order), Adam with cosine decay over the step budget (constant
learning rate with a time budget only), masks re-applied after every step. A held-out share of
the data (``val_fraction``, at most 128 samples; all the data when it is too small to split)
scores the untrained student and then every ``eval_every`` steps; the best-scoring parameters
are the ones kept, so recovery never returns a student the held-out loss says is worse than
the one it got. It stops at the step or time budget, whichever comes first.
"""
from __future__ import annotations

import contextlib
import math
import time
from typing import Callable

import numpy as np
import torch

from ..data import Dataset, as_feeds
from .losses import distill_loss, loss_kind, task_loss
from .module import GraphModule
from .settings import RecoverSettings

__all__ = ["distill", "Batches", "deterministic"]

Progress = Callable[[str], None]


@contextlib.contextmanager
def deterministic(seed: int):
    """Seeded torch with deterministic kernels for the duration; the global settings come back after."""
    was = torch.are_deterministic_algorithms_enabled()
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was)
        torch.random.set_rng_state(state)


class Batches:
    """The data as torch tensors, the teacher's outputs on it, and the train / held-out split."""

    def __init__(self, student: GraphModule, teacher: GraphModule, data: Dataset, settings: RecoverSettings):
        feeds = as_feeds(data.inputs, student.graph)
        self.inputs = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feeds.items()}
        self.labels = (torch.from_numpy(np.asarray(data.labels)) if data.labels is not None
                       and np.issubdtype(np.asarray(data.labels).dtype, np.integer) else None)
        n = len(data)
        perm = np.random.default_rng(settings.seed).permutation(n)
        n_val = min(128, int(round(n * settings.val_fraction)))
        if n_val < 1 or n - n_val < 1:
            self.val, self.train = perm, perm
        else:
            self.val, self.train = perm[:n_val], perm[n_val:]
        self.batch_size = settings.batch_size
        # a model exported with a fixed batch (e.g. Reshape to [1, -1]) runs in micro-batches of that size
        self.micro = min(student.graph.fixed_batch() or settings.batch_size, settings.batch_size)
        mask_name = _token_mask(settings, self.inputs)
        self.mask = self.inputs[mask_name] if mask_name else None
        self.teacher = teacher_outputs(teacher, feeds, self.micro)
        self.kinds = {k: loss_kind(settings.loss, t) for k, t in self.teacher.items()}
        if not any(self.kinds.values()):
            from ..errors import UnsupportedError

            raise UnsupportedError("the model has no float output to distil", where="recovery")

    def feeds(self, idx) -> dict[str, torch.Tensor]:
        idx = torch.as_tensor(idx)
        return {k: v[idx] for k, v in self.inputs.items()}

    def chunks(self, idx: np.ndarray, size: int | None = None):
        size = size or self.micro
        for s in range(0, len(idx), size):
            yield idx[s:s + size]


def teacher_outputs(teacher: GraphModule, feeds: dict[str, np.ndarray], batch: int) -> dict[str, torch.Tensor]:
    """The teacher's outputs on all the data, computed once by onnxruntime (the interpreter agrees with
    it to float rounding; onnxruntime is many times faster at inference on the CPU)."""
    from ..ir import to_proto
    from ..quant.collect import in_memory_session

    sess = in_memory_session(to_proto(teacher.graph))
    n = len(next(iter(feeds.values())))
    outs = [sess.run(teacher.output_names, {k: v[s:s + batch] for k, v in feeds.items()}) for s in range(0, n, batch)]
    return {k: torch.from_numpy(np.concatenate([o[i] for o in outs])) for i, k in enumerate(teacher.output_names)}


def _token_mask(settings: RecoverSettings, inputs: dict[str, torch.Tensor]) -> str | None:
    if settings.token_mask == "auto":
        return "attention_mask" if "attention_mask" in inputs and inputs["attention_mask"].dim() == 2 else None
    if not settings.token_mask:
        return None
    if settings.token_mask not in inputs:
        from ..errors import ConfigError

        raise ConfigError(f"no model input named {settings.token_mask!r} (inputs: {sorted(inputs)})",
                          where="recover token_mask")
    return settings.token_mask


def batch_loss(student: GraphModule, b: Batches, idx, settings: RecoverSettings) -> torch.Tensor:
    out = student(b.feeds(idx))
    it = torch.as_tensor(idx)
    mask = b.mask[it] if b.mask is not None else None
    terms = [distill_loss(kind, out[k], b.teacher[k][it], temperature=settings.temperature, mask=mask)
             for k, kind in b.kinds.items() if kind]
    loss = sum(terms) / len(terms)
    first = student.output_names[0]
    if b.labels is not None and settings.task_weight > 0 and b.kinds.get(first) == "kl":
        loss = loss + settings.task_weight * task_loss(out[first], b.labels[it])
    return loss


@torch.no_grad()
def held_out_loss(student: GraphModule, b: Batches, settings: RecoverSettings) -> float:
    total = 0.0
    for idx in b.chunks(b.val):
        total += float(batch_loss(student, b, idx, settings)) * len(idx)
    return total / len(b.val)


def distill(student: GraphModule, b: Batches, settings: RecoverSettings, progress: Progress = lambda s: None,
            deadline: float | None = None) -> dict:
    """Train ``student`` in place (the best checkpoint loaded at the end); returns what happened."""
    t0 = time.perf_counter()
    params = list(student.params.values())
    if not params:
        return {"steps": 0, "reason": "no trainable weights"}
    gen = torch.Generator().manual_seed(settings.seed)
    opt = torch.optim.Adam(params, lr=settings.lr)
    steps = settings.steps
    sched = (torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1 + math.cos(math.pi * min(i, steps) / steps)))
             if steps else None)
    start = held_out_loss(student, b, settings)
    best = (start, 0, student.state())
    history = [(0, start)]
    order: list[int] = []
    step = 0
    train_loss = float("nan")
    while True:
        if steps and step >= steps or deadline is not None and time.perf_counter() >= deadline:
            break
        if len(order) < settings.batch_size:
            order += b.train[torch.randperm(len(b.train), generator=gen).numpy()].tolist()
        idx, order = order[:settings.batch_size], order[settings.batch_size:]
        opt.zero_grad(set_to_none=True)
        loss = 0.0
        for part in b.chunks(np.asarray(idx)):        # gradient accumulation over micro-batches
            part_loss = batch_loss(student, b, part, settings) * (len(part) / len(idx))
            part_loss.backward()
            loss += part_loss.detach()
        for name, mask in student.masks.items():
            g = student.params[student.key[name]].grad
            if g is not None:
                g.mul_(mask)
        opt.step()
        student.apply_masks()
        if sched is not None:
            sched.step()
        step += 1
        train_loss = float(loss)
        progress(f"recover step {step}{'/' + str(steps) if steps else ''}: loss {train_loss:.4g} "
                 f"(held-out best {best[0]:.4g})")
        if step % settings.eval_every == 0:
            v = held_out_loss(student, b, settings)
            history.append((step, v))
            if v < best[0]:
                best = (v, step, student.state())
    if not history or history[-1][0] != step:
        v = held_out_loss(student, b, settings)
        history.append((step, v))
        if v < best[0]:
            best = (v, step, student.state())
    student.load_state(best[2])
    return {"steps": step, "loss_start": start, "loss_best": best[0], "best_step": best[1],
            "last_train_loss": train_loss, "held_out": history, "seconds": round(time.perf_counter() - t0, 2)}
