"""Keep onnxruntime from fusing a residual Add into SkipLayerNormalization where that is slower.

onnxruntime's graph optimizer rewrites ``LayerNormalization(Add(a, b))`` into its contrib
``SkipLayerNormalization`` whenever both Add inputs are 3-D with static dims (its
``SkipLayerNormFusion``; batch may be a shared symbolic dim). The fusion is meant to save a pass
over memory, but on onnxruntime 1.32's CPU provider the fused kernel measured 330 us for a
[1, 128, 384] input where Add (34 us) and LayerNormalization (54 us) took 88 us together: on
MiniLM's dynamic-INT8 build, 12 such fusions cost 2.9 ms of 33 ms (kernel time, one thread).
The FP32 export escapes the fusion only because its shapes are symbolic; quantized builds, whose
residual Adds read fixed-shape outputs, do not.

The fusion matches the op type ``Add`` only. ``Sum`` of two inputs is the same computation (with
the same broadcasting) and any runtime runs it, so where a measurement on this machine says the
fused kernel is slower, ``sum_for_slow_skip_layernorm`` writes those Adds as Sum. The decision is
measured, never assumed: two two-node models of the real shape, timed alternately in the target's
session settings (``skip_layernorm_is_slower``), once per shape, thread count and onnxruntime
version in a process.
"""
from __future__ import annotations

import contextlib
import functools
import statistics
import time
from typing import Iterator

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from onnx import TensorProto, helper

from ..ir import Graph, is_constant

__all__ = ["residual_adds_into_layernorm", "skip_layernorm_is_slower", "sum_for_slow_skip_layernorm"]

SLOWER_BY = 1.10      # the fused kernel must be this much slower before the rewrite is worth it


def residual_adds_into_layernorm(graph: Graph) -> list[tuple[ir.Node, tuple[int, ...]]]:
    """Every ``Add`` of two non-constant inputs whose only use is a LayerNormalization's input 0,
    with its static shape (the fusion needs 3-D static dims; the first may be symbolic: 1 here)."""
    out = []
    for add in graph.main:
        if add.op_type != "Add" or add.domain != "" or len(add.inputs) != 2:
            continue
        if any(v is None or is_constant(v) for v in add.inputs):
            continue
        y = add.outputs[0]
        users = graph.consumers(y)
        if y.is_graph_output() or len(users) != 1 or users[0].op_type != "LayerNormalization" \
                or users[0].inputs[0] is not y:
            continue
        shape = _static_3d(add.inputs[0]) or _static_3d(add.inputs[1]) or _static_3d(y)
        if shape is not None:
            out.append((add, shape))
    return out


@contextlib.contextmanager
def sum_for_slow_skip_layernorm(graph: Graph, threads: int, level: ort.GraphOptimizationLevel) -> Iterator[dict]:
    """Within the block, the residual Adds feeding a LayerNormalization are Sum where the measured
    fused kernel is slower; the graph is restored on exit. Yields ``{"rewritten": n, "measured":
    {shape: {"fused_us", "unfused_us"}}}`` for the artifact's record."""
    found = residual_adds_into_layernorm(graph) if level != ort.GraphOptimizationLevel.ORT_DISABLE_ALL else []
    record: dict = {"rewritten": 0, "measured": {}}
    changed = []
    try:
        for add, shape in found:
            slower, fused, unfused = skip_layernorm_is_slower(shape, threads)
            record["measured"]["x".join(map(str, shape))] = {"fused_us": round(fused, 1), "unfused_us": round(unfused, 1)}
            if slower:
                add.op_type = "Sum"
                changed.append(add)
        record["rewritten"] = len(changed)
        yield record
    finally:
        for add in changed:
            add.op_type = "Add"


@functools.lru_cache(maxsize=32)
def skip_layernorm_is_slower(shape: tuple[int, ...], threads: int, rounds: int = 5,
                             runs: int = 40) -> tuple[bool, float, float]:
    """(fused slower by more than ``SLOWER_BY``, fused us, unfused us): ``LayerNormalization(Add)``,
    which onnxruntime fuses, against ``LayerNormalization(Sum)``, which it leaves apart, timed in
    alternating rounds (median per run). ``ort.__version__`` is part of the process, hence the key."""
    rng = np.random.default_rng(0)
    feeds = {"a": rng.standard_normal(shape).astype(np.float32), "b": rng.standard_normal(shape).astype(np.float32)}
    times: dict[str, list[float]] = {"Add": [], "Sum": []}
    sessions = {op: _session(_model(op, shape), threads) for op in times}
    for s in sessions.values():
        for _ in range(3):
            s.run(None, feeds)
    for _ in range(rounds):
        for op, s in sessions.items():
            t0 = time.perf_counter()
            for _ in range(runs):
                s.run(None, feeds)
            times[op].append((time.perf_counter() - t0) / runs * 1e6)
    fused, unfused = statistics.median(times["Add"]), statistics.median(times["Sum"])
    return fused > SLOWER_BY * unfused, fused, unfused


def _model(op: str, shape: tuple[int, ...]) -> bytes:
    h = shape[-1]
    node = helper.make_node(op, ["a", "b"], ["s"])
    ln = helper.make_node("LayerNormalization", ["s", "g", "beta"], ["y"], axis=-1, epsilon=1e-12)
    inits = [helper.make_tensor("g", TensorProto.FLOAT, [h], np.ones(h, np.float32)),
             helper.make_tensor("beta", TensorProto.FLOAT, [h], np.zeros(h, np.float32))]
    vi = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, list(shape))
    g = helper.make_graph([node, ln], "skipln", [vi("a"), vi("b")], [vi("y")], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def _session(model: bytes, threads: int) -> ort.InferenceSession:
    from .onnxruntime import session_options   # spinning off: the two sessions are timed alternately

    return ort.InferenceSession(model, session_options({"intra_op_num_threads": threads}),
                                providers=["CPUExecutionProvider"])


def _static_3d(value: ir.Value | None) -> tuple[int, ...] | None:
    shape = getattr(value, "shape", None)
    if shape is None or len(shape) != 3:
        return None
    dims = [d if isinstance(d, int) else None for d in shape]
    if dims[1] is None or dims[2] is None:
        return None
    return (dims[0] or 1, dims[1], dims[2])
