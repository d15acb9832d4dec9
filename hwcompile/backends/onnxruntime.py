"""onnxruntime backend: the host CPU, and the embedded default.

Lowering writes ``model.onnx`` (Q/DQ as the quantize pass placed them; onnxruntime's graph
optimizer fuses DQ -> op -> Q into integer kernels such as QLinearConv and MatMulIntegerToFloat)
and ``session.json`` with the session settings the target asks for. On the CPU provider, residual
Adds feeding a LayerNormalization are written as Sum where onnxruntime's fused SkipLayerNormalization
makes the whole model faster on this machine (``ort_layernorm``; target setting ``unfuse_slow_skip_layernorm``). Profiling times whole runs,
then runs onnxruntime's own profiler and maps its kernel events back to layer ids. onnxruntime
renames and fuses nodes, so mapping tries, in order: the exact node name; the node our passes
inserted it for (``hwcompile.serves``); the original producer of any output value of the
optimized node (optimized graphs keep value names); the longest layer id the name starts with.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
import onnxruntime as ort

from ..atomic import write_text_atomic
from ..contract import (CANDIDATES, Artifact, Backend, BackendSettings, Capabilities, Feeds, PrecisionPlan, Profile,
                        QDQStyle, Runner, time_runs)
from .. import ort_guard
from ..errors import DataError
from ..ir import SERVES, Graph, save
from ..ort_session import LEVELS, InMemoryRunner, session_options
from ..targets import Target
from .ort_layernorm import sum_for_slow_skip_layernorm

__all__ = ["OnnxRuntimeBackend", "OnnxRuntimeSettings", "session_options", "profile_model", "layer_map_from_model",
           "cpu_has_int8_dot"]

#: the prune pass writes every pattern as zeros (or removes channels); the CPU kernels are dense
_SPARSITY = ("2:4", "N:M", "unstructured", "channels")

@dataclass(frozen=True)
class OnnxRuntimeSettings(BackendSettings):
    """``[backend_settings]`` of an onnxruntime target."""

    execution_provider: str = "CPUExecutionProvider"
    graph_optimization_level: Literal["disable", "basic", "extended", "all"] = "all"
    intra_op_num_threads: int = 0                  # 0: onnxruntime's default (physical cores)
    allow_spinning: bool = False                   # see hwcompile.ort_session
    activation_dtype: Literal["uint8", "int8"] = "uint8"
    weight_dtype: Literal["int8", "uint8"] = "int8"
    gemm_weight_dtype: Literal["auto", "int8", "uint8"] = "auto"   # auto: int8 with int8 dot products, else uint8
    reduce_range_conv: bool | Literal["auto"] = "auto"             # auto: where the CPU lacks int8 dot products
    unfuse_slow_skip_layernorm: bool = True        # see ort_layernorm

    def check(self) -> tuple[str, str] | None:
        if self.intra_op_num_threads < 0:
            return "intra_op_num_threads", (f"intra_op_num_threads {self.intra_op_num_threads} is not an integer "
                                            ">= 0 (0: onnxruntime's default)")
        return None

    def session(self) -> dict:
        """What ``session.json`` records and ``session_options`` reads."""
        return {"execution_provider": self.execution_provider, "graph_optimization_level": self.graph_optimization_level,
                "intra_op_num_threads": self.intra_op_num_threads, "allow_spinning": self.allow_spinning}

    def qdq_style(self) -> QDQStyle:
        gemm = self.gemm_weight_dtype
        if gemm == "auto":
            gemm = "int8" if cpu_has_int8_dot() else "uint8"
        rr = self.reduce_range_conv
        if rr == "auto":
            rr = not cpu_has_int8_dot()
        return QDQStyle(activation_dtype=self.activation_dtype, weight_dtype=self.weight_dtype, gemm_weight_dtype=gemm,
                        reduce_range_conv=bool(rr), symmetric_activations=self.activation_dtype == "int8")


def cpu_has_int8_dot() -> bool:
    """True where u8*s8 dot products do not saturate: x86 VNNI/AMX, or ARM (sdot/udot)."""
    import platform

    if platform.machine().lower() in ("aarch64", "arm64"):
        return True
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return any(f in flags for f in ("avx512_vnni", "avx_vnni", "amx_int8"))


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    Settings = OnnxRuntimeSettings

    def capabilities(self, target: Target) -> Capabilities:
        s = self.settings(target)
        reasons = {}
        if s.execution_provider not in ort.get_available_providers():
            why = (f"onnxruntime {ort.__version__} has no {s.execution_provider} "
                   f"(available: {ort.get_available_providers()})")
            reasons = {"build": why, "run": why, "profile": why}
        ok = not reasons
        return Capabilities(backend=self.name, precisions=tuple(CANDIDATES), sparsity=_SPARSITY, qdq=s.qdq_style(),
                            can_build=ok, can_run=ok, can_profile=ok, reasons=reasons)

    def versions(self) -> dict[str, str]:
        return {"onnxruntime": ort.__version__}

    def lower(self, graph: Graph, plan: PrecisionPlan, target: Target, out_dir: Path) -> Artifact:
        out_dir.mkdir(parents=True, exist_ok=True)
        s = self.settings(target)
        settings = s.session()
        info: dict = {"session": settings}
        if s.execution_provider == "CPUExecutionProvider" and s.unfuse_slow_skip_layernorm:
            with sum_for_slow_skip_layernorm(graph, s.intra_op_num_threads, LEVELS[s.graph_optimization_level]) as record:
                save(graph, out_dir / "model.onnx")
            if record["candidates"]:
                info["skip_layernorm"] = record
        else:
            save(graph, out_dir / "model.onnx")
        write_text_atomic(out_dir / "session.json", json.dumps(settings, indent=2) + "\n")
        return Artifact(directory=out_dir, backend=self.name, target=target.name,
                        files={"model": "model.onnx", "session": "session.json"}, info=info)

    def graph_runner(self, graph: Graph, target: Target) -> InMemoryRunner:
        return InMemoryRunner(graph, self.settings(target).session())

    def _session(self, artifact: Artifact, target: Target) -> ort.InferenceSession:
        return _session(artifact.path("model"), _artifact_settings(artifact))

    def load(self, artifact: Artifact, target: Target) -> Runner:
        sess = self._session(artifact, target)
        names = [i.name for i in sess.get_inputs()]

        def run(feeds: Feeds) -> list[np.ndarray]:
            return ort_guard.run(sess, None, {k: feeds[k] for k in names}, where=str(artifact.path("model")))

        return run

    def profile(self, artifact: Artifact, target: Target, feeds: Feeds, *, repeats: int = 50,
                warmup: int = 10, per_layer: bool = True) -> Profile:
        return profile_model(artifact.path("model"), _artifact_settings(artifact), feeds, repeats=repeats,
                             warmup=warmup, per_layer=per_layer)


def _artifact_settings(artifact: Artifact) -> dict:
    return artifact.info.get("session") or json.loads(artifact.path("session").read_text())


def _session(model: Path, settings: dict, so: ort.SessionOptions | None = None) -> ort.InferenceSession:
    sess = ort_guard.session(str(model), so or session_options(settings), [settings["execution_provider"]],
                             where=str(model))
    if sess.get_providers()[0] != settings["execution_provider"]:
        raise DataError(f"session fell back to {sess.get_providers()[0]}", where="execution_provider")
    return sess


def profile_model(model: Path, settings: dict, feeds: Feeds, *, repeats: int = 50, warmup: int = 10,
                  per_layer: bool = True) -> Profile:
    """Time whole runs of ``model`` in the session ``settings`` describe, then (``per_layer``) run
    onnxruntime's profiler and map its kernel events to layer ids (module docstring)."""
    sess = _session(model, settings)
    names = [i.name for i in sess.get_inputs()]
    feed = {k: feeds[k] for k in names}
    so = sess.get_session_options()
    threads = so.intra_op_num_threads or (os.cpu_count() or 1)
    with ort_guard.deadline(str(model)) as ro:
        timing = time_runs(lambda: sess.run(None, feed, ro), repeats=repeats, warmup=warmup, threads=threads)
    prof = Profile(timing=timing, info={"timer": "perf_counter around InferenceSession.run",
                                        "per_layer_timer": "onnxruntime profiler"})
    if per_layer:
        layers, unmapped, kernels = _per_layer(model, settings, feed, runs=max(5, repeats // 5))
        prof.layers_ms, prof.unmapped_ms = layers, unmapped
        prof.info["kernels"] = kernels
    return prof


def _per_layer(model: Path, settings: dict, feed: Feeds, runs: int):
    with tempfile.TemporaryDirectory(prefix="hwc-prof-") as tmp:
        so = session_options(settings)
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(tmp, "ort")
        so.optimized_model_filepath = os.path.join(tmp, "optimized.onnx")
        where = str(model)
        sess = ort_guard.session(str(model), so, [settings["execution_provider"]], where=where)
        with ort_guard.deadline(where) as ro:
            sess.run(None, feed, ro)  # warm-up (its events are dropped below)
            for _ in range(runs):
                sess.run(None, feed, ro)
        with ort_guard.failures(where):
            trace = json.loads(Path(sess.end_profiling()).read_text())
        optimized = onnx.load(os.path.join(tmp, "optimized.onnx"), load_external_data=False)
    original = onnx.load(str(model), load_external_data=False)
    mapping = layer_map_from_model(original, optimized)
    per_kernel: dict[str, list[float]] = defaultdict(list)
    ops: dict[str, str] = {}
    for ev in trace:
        if ev.get("cat") != "Node" or not ev.get("name", "").endswith("_kernel_time"):
            continue
        node = ev["name"][: -len("_kernel_time")]
        per_kernel[node].append(ev["dur"] / 1e3)
        ops[node] = ev.get("args", {}).get("op_name", "")
    layers: dict[str, float] = defaultdict(float)
    unmapped: dict[str, float] = {}
    kernels = []
    for node, durs in per_kernel.items():
        durs = durs[1:] if len(durs) > runs else durs  # drop the warm-up run
        ms = float(np.median(durs))  # robust to a preempted run
        lid = mapping.get(node)
        kernels.append({"kernel": node, "op": ops[node], "layer": lid, "ms": ms})
        if lid is None:
            unmapped[node] = ms
        else:
            layers[lid] += ms
    return dict(layers), unmapped, sorted(kernels, key=lambda k: -k["ms"])


_FUSED_TAILS = ("Cast", "Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Add",
                "BatchNormalization", "QuantizeLinear", "DequantizeLinear")
_HEADS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def layer_map_from_model(original: onnx.ModelProto, optimized: onnx.ModelProto) -> dict[str, str]:
    """Map every node name of onnxruntime's optimized graph to a layer id of ``original``.

    onnxruntime fuses an op with the activation (and residual Add) after it and names the fused
    kernel after the chain's last value (e.g. NCHWc ``<value>_nchwc``); such time is charged to the
    chain's head, the Conv/Gemm/MatMul.
    """
    nodes = {n.name: n for n in original.graph.node}
    producer = {o: n for n in original.graph.node for o in n.output}
    uses: dict[str, int] = defaultdict(int)
    for n in original.graph.node:
        for i in n.input:
            uses[i] += 1

    def layer(n: onnx.NodeProto) -> str:
        props = {p.key: p.value for p in n.metadata_props}
        return props.get(SERVES, n.name)

    def head(n: onnx.NodeProto) -> str:
        seen = 0
        while n.op_type in _FUSED_TAILS and seen < 8:
            prev = [producer[i] for i in n.input if i in producer]
            cand = [p for p in prev if p.op_type in _HEADS + _FUSED_TAILS and uses[p.output[0]] == 1]
            if not cand:
                break
            n, seen = cand[0], seen + 1
        return layer(n)

    ids = sorted({layer(n) for n in original.graph.node}, key=len, reverse=True)
    mapping: dict[str, str] = {}
    for n in optimized.graph.node:
        if n.name in nodes:
            mapping[n.name] = layer(nodes[n.name])
            continue
        stem = n.name[: -len("_nchwc")] if n.name.endswith("_nchwc") else None
        hit = None
        if stem is not None and stem in producer:
            hit = head(producer[stem])
        if hit is None:
            hit = next((head(producer[o]) for o in n.output if o in producer), None)
        if hit is None:
            hit = next((i for i in ids if n.name.startswith(i)), None)
        if hit is not None:
            mapping[n.name] = hit
    return mapping
