"""Keep onnxruntime from fusing a residual Add into SkipLayerNormalization where that is slower.

onnxruntime's graph optimizer rewrites ``LayerNormalization(Add(a, b))`` into its contrib
``SkipLayerNormalization`` whenever both Add inputs are 3-D with static dims (its
``SkipLayerNormFusion``; batch may be a shared symbolic dim). The fusion is meant to save a pass
over memory, but the fused CPU kernel can be slower than Add + LayerNormalization
(``benchmarks/SEARCH_NOTES.md`` has the measurements). An export with symbolic shapes escapes the
fusion; quantized builds, whose residual Adds read fixed-shape outputs, do not.

The fusion matches the op type ``Add`` only. ``Sum`` of two inputs is the same computation (with
the same broadcasting) and any runtime runs it, so ``sum_for_slow_skip_layernorm`` writes those Adds
as Sum when the whole model measures faster that way on this machine: the model with the fused
residual Adds and the model with Sums, built in the target's session settings and timed in
alternating rounds on the same synthetic inputs (``whole_model_fused_is_slower``). The decision is
end to end: the fused kernel's cost depends on what runs around it, which the two-node
micro-benchmark (``skip_layernorm_is_slower``, kept for inspection) does not see. Decisions are
cached per model content and thread count in a process.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import statistics
import time
from typing import Iterator

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from onnx import TensorProto, helper

from ..ir import Graph, is_constant, to_bytes
from ..ort_session import cpu_session

__all__ = ["residual_adds_into_layernorm", "whole_model_fused_is_slower", "skip_layernorm_is_slower",
           "sum_for_slow_skip_layernorm"]

SLOWER_BY = 1.10      # skip_layernorm_is_slower's threshold (the micro-benchmark; not what lowering decides by)


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
    """Within the block, the residual Adds feeding a LayerNormalization are Sum if the whole model
    measured faster so; the graph is restored on exit. Yields ``{"rewritten": n, "candidates": n,
    "end_to_end": {"fused_ms", "unfused_ms", "rounds"}}`` for the artifact's record."""
    found = residual_adds_into_layernorm(graph) if level != ort.GraphOptimizationLevel.ORT_DISABLE_ALL else []
    record: dict = {"rewritten": 0, "candidates": len(found)}
    adds = [add for add, _ in found]
    try:
        if adds:
            fused = to_bytes(graph)
            for add in adds:
                add.op_type = "Sum"
            slower, fused_ms, unfused_ms = whole_model_fused_is_slower(fused, to_bytes(graph), threads)
            record["end_to_end"] = {"fused_ms": round(fused_ms, 3), "unfused_ms": round(unfused_ms, 3)}
            if not slower:
                for add in adds:
                    add.op_type = "Add"
                adds = []
        record["rewritten"] = len(adds)
        yield record
    finally:
        for add in adds:
            add.op_type = "Add"


def whole_model_fused_is_slower(fused: bytes, unfused: bytes, threads: int, rounds: int = 7,
                                runs: int = 10) -> tuple[bool, float, float]:
    """(the fused model's median per-run time is the larger, fused ms, unfused ms): both models in
    the target's session settings, timed in alternating rounds on the same synthetic inputs."""
    key = (hashlib.sha256(fused).hexdigest(), hashlib.sha256(unfused).hexdigest(), threads, rounds, runs)
    if key not in _DECISIONS:
        sessions = [_session(m, threads) for m in (fused, unfused)]
        feeds = _synthetic_feeds(sessions[0])
        times: list[list[float]] = [[], []]
        for s in sessions:
            for _ in range(3):
                s.run(None, feeds)
        for _ in range(rounds):
            for i, s in enumerate(sessions):
                t0 = time.perf_counter()
                for _ in range(runs):
                    s.run(None, feeds)
                times[i].append((time.perf_counter() - t0) / runs * 1e3)
        f, u = statistics.median(times[0]), statistics.median(times[1])
        _DECISIONS[key] = (f > u, f, u)
    return _DECISIONS[key]


_DECISIONS: dict[tuple, tuple[bool, float, float]] = {}


def _synthetic_feeds(sess: ort.InferenceSession) -> dict[str, np.ndarray]:
    """Inputs of the session's shapes (dynamic dims 1): floats standard normal, integers ones
    (valid token ids and a mask that keeps every token)."""
    rng = np.random.default_rng(0)
    kinds = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
             "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_}
    feeds = {}
    for i in sess.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in i.shape]
        dtype = kinds.get(i.type, np.float32)
        feeds[i.name] = (rng.standard_normal(shape).astype(dtype) if np.issubdtype(dtype, np.floating)
                         else np.ones(shape, dtype))
    return feeds


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
    return cpu_session(model, {"intra_op_num_threads": threads})   # spinning off: the two are timed alternately


def _static_3d(value: ir.Value | None) -> tuple[int, ...] | None:
    shape = getattr(value, "shape", None)
    if shape is None or len(shape) != 3:
        return None
    dims = [d if isinstance(d, int) else None for d in shape]
    if dims[1] is None or dims[2] is None:
        return None
    return (dims[0] or 1, dims[1], dims[2])
