"""Block-wise reconstruction (BRECQ-style): each block of the student fit to the teacher's output.

The student's nodes are cut, in order, into blocks: a block closes once it holds a trained weight
and every float value it leaves live for later nodes also exists in the teacher with the same
shape (so a block never ends between a channel-pruned producer and its readers, or between a
QuantizeLinear and its DequantizeLinear). Blocks are fit one after another: block k's inputs are
the values the already reconstructed blocks before it produce (the quantization error upstream is
what block k learns to absorb), its target the teacher's values of the same names, the loss their
relative squared error, only block k's weights free. Each block gets an equal share of the step
or time budget, is scored on a held-out share before and after, and keeps the better weights.
At most ``block_samples`` samples are used (their live values are held in memory).
"""
from __future__ import annotations

import time

import numpy as np
import torch

from .losses import distill_loss
from .module import GraphModule

__all__ = ["reconstruct_blocks", "cut_blocks"]

BLOCK_SAMPLES = 256


def cut_blocks(student: GraphModule, teacher: GraphModule) -> list[tuple[list, list[str]]]:
    """[(nodes, matched live-out value names)] covering the student's nodes in order."""
    nodes = student.nodes
    last_use: dict[str, int] = {}
    for i, n in enumerate(nodes):
        for v in n.inputs:
            if v is not None:
                last_use[v.name] = i
    for v in student.graph.main.outputs:
        last_use[v.name] = len(nodes)
    shapes = {v.name: tuple(v.shape.dims) if v.shape is not None else None for v in teacher.graph.iter_values()}
    trained = set(student.key)
    blocks, cur, produced, has_weight = [], [], [], False
    for i, n in enumerate(nodes):
        cur.append(n)
        produced += [o for o in n.outputs]
        has_weight |= any(v is not None and v.name in trained for v in n.inputs)
        live = [o for o in produced if last_use.get(o.name, -1) > i]
        floats = [o for o in live if o.dtype is not None and o.dtype.name in ("FLOAT", "FLOAT16")]
        ok = bool(floats) and all(o.name in shapes and o.shape is not None and shapes[o.name] is not None
                                  and len(shapes[o.name]) == len(o.shape) and all(
                                      a == b for a, b in zip(shapes[o.name], o.shape.dims)
                                      if isinstance(a, int) and isinstance(b, int)) for o in floats)
        if has_weight and (ok or i == len(nodes) - 1):
            blocks.append((cur, [o.name for o in floats] if ok else []))
            cur, produced, has_weight = [], [], False
    if cur:                                    # trailing nodes without weights join the last block
        if blocks:
            blocks[-1] = (blocks[-1][0] + cur, blocks[-1][1])
        else:
            blocks.append((cur, []))
    return blocks


def _block_params(student: GraphModule, nodes) -> list[str]:
    names = []
    for n in nodes:
        for v in n.inputs:
            if v is not None and v.name in student.key and v.name not in names:
                names.append(v.name)
    return names


def reconstruct_blocks(student: GraphModule, teacher: GraphModule, b, settings, progress, deadline) -> dict:
    t0 = time.perf_counter()
    blocks = cut_blocks(student, teacher)
    idx = np.concatenate([b.val, b.train])[:BLOCK_SAMPLES] if len(b.train) != len(b.val) or \
        not np.array_equal(b.train, b.val) else b.train[:BLOCK_SAMPLES]
    n_val = min(len(b.val), max(1, len(idx) // 8)) if not np.array_equal(b.train, b.val) else 0
    val = np.arange(n_val) if n_val else np.arange(len(idx))
    train = np.arange(n_val, len(idx)) if n_val else np.arange(len(idx))
    env = b.feeds(idx)                         # the student's live values on the cached samples
    fit = [(nodes, outs) for nodes, outs in blocks if outs and _block_params(student, nodes)]
    per_block_steps = max(1, settings.steps // max(len(fit), 1)) if settings.steps else 0
    gen = torch.Generator().manual_seed(settings.seed)
    bs = b.micro
    report, total_steps = [], 0
    for k, (nodes, outs) in enumerate(blocks):
        names = _block_params(student, nodes)
        if outs and names:
            with torch.no_grad():
                target = {}
                for s in range(0, len(idx), bs):
                    part = teacher.run({n: t[s:s + bs] for n, t in b.feeds(idx).items()},
                                       teacher.nodes, outs)
                    for name, t in part.items():
                        target.setdefault(name, []).append(t)
                target = {n: torch.cat(ts) for n, ts in target.items()}
            share = None if deadline is None else (deadline - time.perf_counter()) / max(len(fit) - len(report), 1)
            entry = _fit_block(student, nodes, outs, names, env, target, train, val, settings, per_block_steps,
                               share, gen, bs, settings.batch_size)
            entry.update(block=k, nodes=len(nodes), last=nodes[-1].name)
            report.append(entry)
            total_steps += entry["steps"]
            progress(f"recover block {len(report)}/{len(fit)}: loss {entry['loss_start']:.4g} -> {entry['loss_best']:.4g}")
        with torch.no_grad():                  # advance the live values through the (fit) block
            new = {}
            for s in range(0, len(idx), bs):
                part = student.run({n: t[s:s + bs] for n, t in env.items()}, nodes,
                                   [o.name for n in nodes for o in n.outputs])
                for name, t in part.items():
                    new.setdefault(name, []).append(t)
            env.update({n: torch.cat(ts) for n, ts in new.items()})
            needed = {v.name for i, n in enumerate(student.nodes) if n not in nodes for v in n.inputs if v is not None}
            needed |= set(student.output_names)
            env = {n: t for n, t in env.items() if n in needed or n in student.input_names}
    start = sum(e["loss_start"] for e in report)
    best = sum(e["loss_best"] for e in report)
    return {"steps": total_steps, "blocks": report, "loss_start": start, "loss_best": best,
            "samples_block": int(len(idx)), "seconds": round(time.perf_counter() - t0, 2)}


def _fit_block(student, nodes, outs, names, env, target, train, val, settings, steps, seconds, gen, bs,
               batch) -> dict:
    """Fit one block's weights ``names``; ``bs`` is the largest batch the graph runs, ``batch`` the step's."""
    params = [student.params[student.key[n]] for n in names]
    opt = torch.optim.Adam(params, lr=settings.lr)
    want = list(outs)

    def loss_of(rows) -> torch.Tensor:
        rows_t = torch.as_tensor(rows)
        got = student.run({n: t[rows_t] for n, t in env.items()}, nodes, want)
        return sum(distill_loss("mse", got[o], target[o][rows_t]) for o in want) / len(want)

    def held_out() -> float:
        with torch.no_grad():
            return float(sum(float(loss_of(val[s:s + bs])) * len(val[s:s + bs]) for s in range(0, len(val), bs))
                         / len(val))

    start = held_out()
    keep = {n: student.params[student.key[n]].detach().clone() for n in names}
    t_end = None if seconds is None else time.perf_counter() + max(seconds, 0.0)
    step = 0
    while (not steps or step < steps) and (t_end is None or time.perf_counter() < t_end):
        rows = train[torch.randint(len(train), (min(batch, len(train)),), generator=gen).numpy()]
        opt.zero_grad(set_to_none=True)
        for s in range(0, len(rows), bs):
            (loss_of(rows[s:s + bs]) * (len(rows[s:s + bs]) / len(rows))).backward()
        for n in names:
            if n in student.masks and params[names.index(n)].grad is not None:
                params[names.index(n)].grad.mul_(student.masks[n])
        opt.step()
        student.apply_masks()
        step += 1
        if not steps and t_end is None:
            break
    end = held_out()
    if end > start:
        with torch.no_grad():
            for n, t in keep.items():
                student.params[student.key[n]].copy_(t)
    return {"steps": step, "loss_start": start, "loss_best": min(start, end), "weights": len(names)}
