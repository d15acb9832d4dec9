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
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from ..errors import ConfigError, DataError
from ..ir import SERVES, Graph, save
from ..plan import PrecisionPlan, write_text_atomic
from ..targets import Target
from .base import Artifact, Backend, Feeds, Profile, QDQStyle, Runner, time_runs
from .ort_layernorm import sum_for_slow_skip_layernorm

__all__ = ["OnnxRuntimeBackend", "session_options", "layer_map_from_model"]

_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def session_options(settings: dict) -> ort.SessionOptions:
    """The session the artifact's ``session.json`` describes; profiling measures exactly this session.

    ``allow_spinning`` (default off): onnxruntime's intra-op workers spin-wait after each run, and a
    session that ran last keeps its workers spinning while another session runs. On a 2-core host,
    EfficientNet-Lite0 FP32 at 2 threads took 6.5 ms alone, 12.0 ms when two spinning sessions
    alternated, 6.6 ms alternated with spinning off (IQR 0.2 ms, vs 6-8 ms spinning). Measurements
    that alternate builds (the search against FP32, the benchmarks) are only fair without it, and a
    deployment process that hosts more than one model sees the same contention."""
    so = ort.SessionOptions()
    so.graph_optimization_level = _LEVELS[settings.get("graph_optimization_level", "all")]
    so.intra_op_num_threads = int(settings.get("intra_op_num_threads", 0))
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if settings.get("allow_spinning") else "0")
    return so


def _session_settings(target: Target) -> dict:
    """The target's session settings, checked: what ``session.json`` records."""
    ts = target.settings
    where = f"{target.path or target.name} [backend_settings]"
    settings = {"execution_provider": ts.get("execution_provider", "CPUExecutionProvider"),
                "graph_optimization_level": ts.get("graph_optimization_level", "all"),
                "intra_op_num_threads": ts.get("intra_op_num_threads", 0),
                "allow_spinning": ts.get("allow_spinning", False)}
    if settings["graph_optimization_level"] not in _LEVELS:
        raise ConfigError(f"graph_optimization_level {settings['graph_optimization_level']!r} is not one of "
                          f"{sorted(_LEVELS)}", where=f"{where} graph_optimization_level")
    n = settings["intra_op_num_threads"]
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ConfigError(f"intra_op_num_threads {n!r} is not an integer >= 0 (0: onnxruntime's default)",
                          where=f"{where} intra_op_num_threads")
    if not isinstance(settings["allow_spinning"], bool):
        raise ConfigError(f"allow_spinning {settings['allow_spinning']!r} is not true or false",
                          where=f"{where} allow_spinning")
    return settings


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

    def status(self, target: Target) -> tuple[bool, str]:
        ep = target.settings.get("execution_provider", "CPUExecutionProvider")
        if ep not in ort.get_available_providers():
            return False, f"onnxruntime {ort.__version__} has no {ep} (available: {ort.get_available_providers()})"
        return True, ""

    def qdq_style(self, target: Target) -> QDQStyle:
        s = target.settings
        act = s.get("activation_dtype", "uint8")
        gemm = s.get("gemm_weight_dtype", "auto")
        if gemm == "auto":
            gemm = "int8" if cpu_has_int8_dot() else "uint8"
        rr = s.get("reduce_range_conv", "auto")
        if rr == "auto":
            rr = not cpu_has_int8_dot()
        return QDQStyle(activation_dtype=act, weight_dtype=s.get("weight_dtype", "int8"), gemm_weight_dtype=gemm,
                        reduce_range_conv=bool(rr), symmetric_activations=act == "int8")

    def versions(self) -> dict[str, str]:
        return {"onnxruntime": ort.__version__}

    def lower(self, graph: Graph, plan: PrecisionPlan, target: Target, out_dir: Path) -> Artifact:
        out_dir.mkdir(parents=True, exist_ok=True)
        settings = _session_settings(target)
        info: dict = {"session": settings}
        if settings["execution_provider"] == "CPUExecutionProvider" and target.settings.get("unfuse_slow_skip_layernorm", True):
            with sum_for_slow_skip_layernorm(graph, settings["intra_op_num_threads"],
                                             _LEVELS[settings["graph_optimization_level"]]) as record:
                save(graph, out_dir / "model.onnx")
            if record["candidates"]:
                info["skip_layernorm"] = record
        else:
            save(graph, out_dir / "model.onnx")
        write_text_atomic(out_dir / "session.json", json.dumps(settings, indent=2) + "\n")
        return Artifact(directory=out_dir, backend=self.name, target=target.name,
                        files={"model": "model.onnx", "session": "session.json"}, info=info)

    def graph_runner(self, graph: Graph, target: Target):
        from ..analysis.sensitivity import InMemoryRunner

        return InMemoryRunner(graph, target.settings)

    def _session(self, artifact: Artifact, target: Target, so: ort.SessionOptions | None = None) -> ort.InferenceSession:
        settings = artifact.info.get("session") or json.loads(artifact.path("session").read_text())
        so = so or session_options(settings)
        sess = ort.InferenceSession(str(artifact.path("model")), so, providers=[settings["execution_provider"]])
        if sess.get_providers()[0] != settings["execution_provider"]:
            raise DataError(f"session fell back to {sess.get_providers()[0]}", where="execution_provider")
        return sess

    def load(self, artifact: Artifact, target: Target) -> Runner:
        sess = self._session(artifact, target)
        names = [i.name for i in sess.get_inputs()]

        def run(feeds: Feeds) -> list[np.ndarray]:
            return sess.run(None, {k: feeds[k] for k in names})

        return run

    def profile(self, artifact: Artifact, target: Target, feeds: Feeds, *, repeats: int = 50,
                warmup: int = 10, per_layer: bool = True) -> Profile:
        sess = self._session(artifact, target)
        names = [i.name for i in sess.get_inputs()]
        feed = {k: feeds[k] for k in names}
        so = sess.get_session_options()
        threads = so.intra_op_num_threads or (os.cpu_count() or 1)
        timing = time_runs(lambda: sess.run(None, feed), repeats=repeats, warmup=warmup, threads=threads)
        prof = Profile(timing=timing)
        if per_layer:
            layers, unmapped, kernels = self._per_layer(artifact, target, feed, runs=max(5, repeats // 5))
            prof.layers_ms, prof.unmapped_ms = layers, unmapped
            prof.info["kernels"] = kernels
        return prof

    def _per_layer(self, artifact: Artifact, target: Target, feed: Feeds, runs: int):
        settings = artifact.info.get("session") or json.loads(artifact.path("session").read_text())
        with tempfile.TemporaryDirectory(prefix="hwc-prof-") as tmp:
            so = session_options(settings)
            so.enable_profiling = True
            so.profile_file_prefix = os.path.join(tmp, "ort")
            so.optimized_model_filepath = os.path.join(tmp, "optimized.onnx")
            sess = ort.InferenceSession(str(artifact.path("model")), so, providers=[settings["execution_provider"]])
            sess.run(None, feed)  # warm-up (its events are dropped below)
            for _ in range(runs):
                sess.run(None, feed)
            trace = json.loads(Path(sess.end_profiling()).read_text())
            optimized = onnx.load(os.path.join(tmp, "optimized.onnx"), load_external_data=False)
        original = onnx.load(str(artifact.path("model")), load_external_data=False)
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
