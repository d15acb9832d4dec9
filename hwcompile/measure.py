"""Measurement: build a candidate plan through a backend, evaluate it, make profiling feeds.

The pipeline, the search and the analysis all measure through these functions; nothing here
imports them. ``build`` applies the plan's passes to a copy of the graph and lowers it;
``evaluate`` runs a dataset through an artifact and scores it against labels and/or reference
outputs; ``profile_feeds`` makes the one input latency is measured on; ``measure`` profiles and
evaluates an artifact into a plain record.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from .contract import Artifact, Backend, PrecisionPlan, Profile
from .data import Dataset, as_feeds, input_specs
from .errors import ConfigError, DataError
from .ir import Graph
from .metrics import output_weights, snr_db, spearman, topk
from .passes.plan import apply_plan
from .recover.settings import RecoverSettings
from .targets import Target

__all__ = ["build", "evaluate", "profile_feeds", "measure", "Measurement", "needs_calibration", "METRICS"]

Progress = Callable[[str], None]

METRICS = ("top1", "top5", "snr", "spearman")


def needs_calibration(plan: PrecisionPlan, graph: Graph) -> bool:
    """Whether applying ``plan`` needs calibration data (static INT8, GPTQ, channel pruning)."""
    choices = [plan.choice(n.name) for n in graph.layers()] + [plan.default]
    return any(c.activation == "int8" or (c.weight in ("int8", "int4") and plan.quant.compensation == "gptq")
               or c.sparsity_kind == "channels" for c in choices)


def build(graph: Graph, plan: PrecisionPlan, target: Target, backend: Backend, out_dir: Path,
          calib: Dataset | None, progress: Progress = lambda s: None, cache: dict | None = None,
          recovery: tuple[RecoverSettings, Dataset] | None = None) -> tuple[Graph, Artifact]:
    """Apply the plan's pruning and quantization passes to a copy of ``graph``, train it back toward
    ``graph`` when ``recovery`` = (settings, data) is given, and lower it.

    Without recovery, inside a compile, a build already in the content-addressed build cache
    (``hwcompile.build_cache``) is copied instead. With ``cache`` (the search's per-compile state:
    its callers keep the artifact only) the returned graph is then None; without it (a compile's
    final build) the cached compiled graph is returned with its ``meta``."""
    from .build_cache import build_key, load_build, save_build

    with_graph = cache is None
    key = build_key(graph, plan, backend.qdq_style(target), calib, backend, target, with_graph) \
        if recovery is None or not recovery[0].enabled else None
    hit = load_build(key, Path(out_dir), backend.name, target.name, with_graph)
    if hit is not None:
        return hit
    progress("apply plan")
    g = apply_plan(graph.clone(), plan, backend.qdq_style(target), calib, cache=cache)
    if recovery is not None and recovery[0].enabled:
        from .recover import recover_compiled

        g = recover_compiled(g, graph, plan, recovery[0], recovery[1], progress)
    progress(f"lower ({backend.name})")
    artifact = backend.lower(g, plan, target, out_dir)
    save_build(key, artifact, g if with_graph else None)
    return g, artifact


def evaluate(backend: Backend, artifact: Artifact, target: Target, data: Dataset, graph: Graph,
             reference: list[np.ndarray] | None = None, metric: str | None = None) -> tuple[dict, list[np.ndarray]]:
    """Run ``data`` through the artifact; metrics against labels and/or reference outputs."""
    run = backend.load(artifact, target)
    outs: list[list[np.ndarray]] = []
    for batch in data.batches(batch_size=graph.fixed_batch() or 64):  # a fixed-batch export takes its own
        outs.append(run(as_feeds(batch, graph)))
    merged = [np.concatenate([o[i] for o in outs]) for i in range(len(outs[0]))]
    metrics: dict[str, float] = {}
    if data.labels is not None and metric == "spearman":
        # one score per sample (e.g. a similarity head): rank correlation with the labels
        metrics["spearman"] = spearman(merged[0].reshape(len(data.labels), -1)[:, 0], data.labels)
    elif data.labels is not None and metric != "snr":
        metrics["top1"] = topk(merged[0], data.labels, 1)
        if merged[0].reshape(len(data.labels), -1).shape[1] >= 5:
            metrics["top5"] = topk(merged[0], data.labels, 5)
    if reference is not None:
        n = len(merged[0])
        metrics["snr_db"] = snr_db(reference, merged, output_weights({k: v[:n] for k, v in data.inputs.items()}, merged))
    return metrics, merged


def profile_feeds(graph: Graph, data: Dataset | None,
                  shapes: Mapping[str, Any] | None = None) -> dict[str, np.ndarray]:
    """One input for latency measurement: a real sample (batch 1) when there is data, else seeded random
    data of the given ``shapes``. Without either, a dynamic first (batch) dimension is 1 and any other
    dynamic dimension is a ConfigError naming the input, the dimension and ``--shape``."""
    if data is not None:
        return as_feeds(next(data.batches(1)), graph)
    rng = np.random.default_rng(0)
    feeds = {}
    specs = input_specs(graph)
    shapes = shapes or {}
    for name in shapes:
        if name not in specs:
            raise ConfigError(f"model has no input {name!r} (inputs: {sorted(specs)})", where="--shape")
    for name, (dims, dtype) in specs.items():
        if dims is None and name not in shapes:
            raise DataError(f"input '{name}' has unknown rank; give --shape or --eval/--calib data", where="profile")
        if name not in shapes:
            _check_resolvable(name, dims)
        shape = list(shapes.get(name) or [d if isinstance(d, int) and d > 0 else 1 for d in dims])
        if dims is not None and (len(shape) != len(dims) or any(isinstance(d, int) and d >= 0 and d != s
                                                               for d, s in zip(dims, shape))):
            raise ConfigError(f"shape {shape} does not fit input '{name}' {dims}", where="--shape")
        feeds[name] = (rng.standard_normal(shape) if np.issubdtype(dtype, np.floating)
                       else np.zeros(shape)).astype(dtype)
    return feeds


def _check_resolvable(name: str, dims: list) -> None:
    known = lambda d: isinstance(d, int) and d > 0  # noqa: E731
    free = [i for i, d in enumerate(dims) if i > 0 and not known(d)]
    if free:
        i = free[0]
        text = [str(d) if known(d) else (getattr(d, "value", None) or "?") for d in dims]
        example = ",".join(str(d) if known(d) else ("1" if j == 0 else "N") for j, d in enumerate(dims))
        raise ConfigError(f"input '{name}' dimension {i} ({text[i]}) of [{', '.join(text)}] is dynamic and no data "
                          "fixes it", where="--shape",
                          hint=f"pass --shape {name}={example} with N the size to measure, or --eval/--calib data")


@dataclass
class Measurement:
    """One artifact measured: its latency profile, size and metrics (and, when evaluated, its outputs)."""

    profile: Profile
    size_bytes: int
    metrics: dict[str, float] = field(default_factory=dict)
    outputs: list[np.ndarray] | None = None

    def to_dict(self) -> dict[str, Any]:
        t = self.profile.timing
        return {"latency_ms": t.latency_ms, "latency_ms_spread": t.latency_ms_spread, "timing": t.to_dict(),
                "size_bytes": self.size_bytes, "metrics": dict(self.metrics)}


def measure(backend: Backend, artifact: Artifact, target: Target, graph: Graph, feeds: Mapping[str, np.ndarray],
            eval_set: Dataset | None, reference: list[np.ndarray] | None, *, repeats: int, warmup: int,
            per_layer: bool = True, metric: str | None = None, progress: Progress = lambda s: None) -> Measurement:
    """Profile ``artifact`` on ``feeds`` and, with ``eval_set``, evaluate it against labels/``reference``."""
    progress(f"profile {artifact.directory.name}")
    prof = backend.profile(artifact, target, feeds, repeats=repeats, warmup=warmup, per_layer=per_layer)
    out = Measurement(profile=prof, size_bytes=artifact.size_bytes())
    if eval_set is not None:
        progress(f"evaluate {artifact.directory.name}")
        out.metrics, out.outputs = evaluate(backend, artifact, target, eval_set, graph, reference, metric)
    return out
