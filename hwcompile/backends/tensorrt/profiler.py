"""Timing a TensorRT engine: end-to-end with CUDA events, per engine layer with an ``IProfiler``.

End-to-end latency is the device time of ``execute_async_v3`` between two CUDA events on the
engine's stream (``with_copies_ms`` adds the host<->device copies). Per-layer times come from an
``IProfiler`` attached to the same execution context after the timed runs, so its per-layer
synchronisation does not perturb the end-to-end numbers. ``map_layer_times`` charges each engine
layer's time to the hwcompile layer ids among the ONNX nodes TensorRT fused into it, split evenly
when it fused several; an engine layer holding no layer's node (a reformat, a pooling, a Softmax)
is returned unmapped under its engine name.
"""
from __future__ import annotations

import os
import statistics
from typing import Any, Mapping

import numpy as np

from .inspector import summarize_layers
from .runtime import Session, cuda_call

__all__ = ["profile_engine", "map_layer_times"]


def profile_engine(plan_path: str | os.PathLike, feeds: Mapping[str, np.ndarray], repeats: int = 50, *,
                   warmup: int = 10, per_layer: bool = True) -> dict[str, Any]:
    """End-to-end latency from CUDA events and mean per-engine-layer time from an IProfiler, in ms."""
    s = Session(plan_path)
    rt, trt = s.cudart, s.trt
    s.bind(feeds)
    for _ in range(warmup):
        s.copy_in()
        s.enqueue()
        s.copy_out()
    s.sync()
    ev = [cuda_call(rt, rt.cudaEventCreate()) for _ in range(4)]
    compute, total = [], []
    for _ in range(max(1, repeats)):
        cuda_call(rt, rt.cudaEventRecord(ev[0], s.stream))
        s.copy_in()
        cuda_call(rt, rt.cudaEventRecord(ev[1], s.stream))
        s.enqueue()
        cuda_call(rt, rt.cudaEventRecord(ev[2], s.stream))
        s.copy_out()
        cuda_call(rt, rt.cudaEventRecord(ev[3], s.stream))
        cuda_call(rt, rt.cudaEventSynchronize(ev[3]))
        compute.append(cuda_call(rt, rt.cudaEventElapsedTime(ev[1], ev[2])))
        total.append(cuda_call(rt, rt.cudaEventElapsedTime(ev[0], ev[3])))
    for e in ev:
        cuda_call(rt, rt.cudaEventDestroy(e))

    times: dict[str, list[float]] = {}
    if per_layer:
        class _Profiler(trt.IProfiler):
            def __init__(self) -> None:
                trt.IProfiler.__init__(self)

            def report_layer_time(self, layer_name: str, ms: float) -> None:
                times.setdefault(layer_name, []).append(ms)

        profiler = _Profiler()  # a reference kept here: the context holds only a raw pointer to it
        s.context.profiler = profiler
        for _ in range(max(1, repeats // 5)):
            s.enqueue()
            s.sync()
        s.context.profiler = None
    q = np.percentile(compute, [10, 25, 75, 90])
    return {
        "latency_ms": float(statistics.median(compute)), "latency_ms_spread": float(q[2] - q[1]),
        "p10_ms": float(q[0]), "p90_ms": float(q[3]), "with_copies_ms": float(statistics.median(total)),
        "samples_ms": [float(x) for x in compute], "repeats": repeats, "warmup": warmup,
        "layers_ms": {k: float(np.median(v)) for k, v in times.items()},
        "layer_nodes": {lay["name"]: lay["onnx_nodes"] for lay in summarize_layers(s.engine_information())},
        "timer": "CUDA events around execute_async_v3 (device time); IProfiler per engine layer (median)",
        "tensorrt_version": trt.__version__,
    }


def map_layer_times(layers_ms: Mapping[str, float], layer_nodes: Mapping[str, list[str]],
                    node_layer: Mapping[str, str]) -> tuple[dict[str, float], dict[str, float]]:
    """(layer id -> ms, unmapped engine layer -> ms) from per-engine-layer times (module docstring)."""
    layers: dict[str, float] = {}
    unmapped: dict[str, float] = {}
    for name, ms in layers_ms.items():
        ids = sorted({node_layer[n] for n in layer_nodes.get(name, []) if n in node_layer})
        if not ids:
            unmapped[name] = unmapped.get(name, 0.0) + float(ms)
            continue
        for lid in ids:
            layers[lid] = layers.get(lid, 0.0) + float(ms) / len(ids)
    return layers, unmapped
