"""Pruning pass: applies the plan's sparsity. Preserves names and graph outputs; changes numerics.

Per layer (``plan.choice(layer).sparsity``): 'N:M' and 'unstructured=R' zero weights in place
(``prune.semistructured``); 'channels=R' physically removes Conv output channels and what reads
them (``prune.channels``). Channel pruning runs first, so N:M groups are formed on the final input
channels. With calibration data each pruned layer (or, for channels, each layer reading removed
channels) is refit by least squares to reproduce the dense model's outputs
(``prune.reconstruct``); masks are kept exactly, so refit N:M weights stay N:M.

Options come from ``plan.prune`` (``PruneSettings``: schedule one-shot | gradual | iterative,
global, importance, ...). Declines are recorded with a
reason: ``graph.meta['prune_skipped'][layer]`` and ``graph.meta['channel_prune_skipped'][layer]``;
what was done goes to ``graph.meta['prune']``. Results are cached in ``cache`` by graph content,
pruning options and calibration data, so a planner trying many plans prunes each variant once.
"""
from __future__ import annotations

import hashlib
import json

import numpy as np
import onnx

from ..data import Dataset
from ..ir import Graph, from_proto, to_bytes
from ..contract import PrecisionPlan, parse_sparsity
from ..contract import PruneSettings
from ..prune.schedule import prune_channels, prune_weights
from ..prune.semistructured import WeightTarget, parse_target, skip_reason
from .base import BoundPass, PassResult, run_passes

__all__ = ["prune", "prune_pass"]

_META = ("prune", "prune_skipped", "channel_prune_skipped")


def prune(graph: Graph, plan: PrecisionPlan, calib: Dataset | None, cache: dict | None = None) -> Graph:
    """Apply the plan's sparsity to ``graph`` in place (through the pass runner, so linted) and return it."""
    return run_passes(graph, [BoundPass("prune", prune_pass, (plan, calib), {"cache": cache})], max_rounds=1)


def prune_pass(graph: Graph, plan: PrecisionPlan, calib: Dataset | None, cache: dict | None = None) -> PassResult:
    """The pass form of :func:`prune`. Run it once: with reconstruction it is not idempotent (a second
    run refits the already pruned weights again, toward the pruned model)."""
    config = plan.prune
    skipped = graph.meta.setdefault("prune_skipped", {})
    ch_skipped = graph.meta.setdefault("channel_prune_skipped", {})
    weights: dict[str, WeightTarget] = {}
    channels: dict[str, float] = {}
    for node in graph.layers():
        kind, param = parse_sparsity(plan.choice(node.name).sparsity)
        if kind == "channels":
            if node.op_type == "Conv":
                channels[node.name] = float(param)
            else:
                ch_skipped[node.name] = f"channel pruning removes Conv output channels; this is a {node.op_type}"
        elif kind != "dense":
            weights[node.name] = parse_target(plan.choice(node.name).sparsity)
    if not weights and not channels:
        return PassResult(graph, False, {})
    key = _cache_key(graph, weights, channels, config, calib) if cache is not None and (
        calib is None or isinstance(calib, Dataset)) else None
    if key is not None and key in cache:
        data, meta, modified = cache[key]
        graph.model = from_proto(onnx.ModelProto.FromString(data), source=graph.source, normalize=False).model
        graph.meta.update(json.loads(meta))
        return PassResult(graph, modified, {"cached": 1}, _declined(graph))
    before = to_bytes(graph)
    report = graph.meta.setdefault("prune", {})
    report.update(schedule=config.schedule, reconstructed=calib is not None and config.reconstruct)
    if channels:
        report["channels"] = prune_channels(graph, channels, calib, config, ch_skipped)
        graph.lint()
    for name, target in list(weights.items()):     # after channel pruning: N:M needs the final channel counts
        why = skip_reason(graph, graph.node(name), target)
        if why:
            skipped[name] = why
            del weights[name]
    if weights:
        shifted: dict = {}
        report["layers"] = prune_weights(graph, weights, calib, config, shifted)
        if shifted:
            report["refit_unpruned"] = shifted
        graph.lint()
    graph.meta["prune"] = json.loads(json.dumps(report, default=_jsonable))
    after = to_bytes(graph)
    if key is not None:
        cache[key] = (after, json.dumps({k: graph.meta[k] for k in _META}), after != before)
    return PassResult(graph, after != before, {"layers_pruned": len(report.get("layers", {})),
                                               "channel_groups_pruned": len(report.get("channels", {}).get("groups", {}))},
                      _declined(graph))


def _declined(graph: Graph) -> dict[str, str]:
    return {**graph.meta.get("channel_prune_skipped", {}), **graph.meta.get("prune_skipped", {})}


prune_pass.name, prune_pass.in_place = "prune", True


def _jsonable(x):
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    raise TypeError(type(x).__name__)


def _cache_key(graph: Graph, weights, channels, config: PruneSettings, calib: Dataset | None) -> str:
    h = hashlib.sha256(to_bytes(graph))
    h.update(json.dumps([sorted((k, v.label) for k, v in weights.items()), sorted(channels.items()),
                         repr(config)]).encode())
    if calib is not None:
        for k in sorted(calib.inputs):
            h.update(k.encode())
            h.update(np.ascontiguousarray(calib.inputs[k][:config.calib_samples]).tobytes())
    return "prune:" + h.hexdigest()
