"""TensorRT backend (NVIDIA Ampere and later): explicit Q/DQ ONNX, validated, then an engine.

Lowering always writes ``model.onnx``, the TensorRT-ready ONNX: symmetric INT8 Q/DQ (zero points
0), activation scales per tensor, weight scales per output channel, weights as
``initializer -> DequantizeLinear -> op``, float biases, no QLinear*/Integer/contrib ops, 2:4
sparse weights where the plan prunes and the weights are 2:4. The rules in ``rules.py`` are
checked on that file before anything else; a violation is a compiler bug and stops the build
naming node and rule. Golden inputs and outputs (onnxruntime on the CPU) are saved beside it.
Where TensorRT and a GPU of the target's compute capability exist the engine is built
(``model.plan``, ``build.py``) with the persisted timing cache; elsewhere ``tensorrt.json`` says
exactly why not, and running or profiling falls back to the model on the CPU (``cpu.py``),
labelled as such in the profile. An engine's profile charges each engine layer's time to the
layer ids of the ONNX nodes TensorRT fused into it (``profiler.map_layer_times``).

Modules: ``settings`` (the target's typed settings), ``rules`` (the validator), ``build``
(engine build), ``timing_cache``, ``shapes`` (optimization profiles), ``inspector`` (what
TensorRT built), ``profiler`` (timing), ``runtime`` (TensorRT/CUDA plumbing), ``engines`` (the
GPU service the backend calls), ``cpu`` (the CPU fallback), ``reference`` (numpy fake-quant).
"""
from __future__ import annotations

import json
from pathlib import Path

import onnx

from ...errors import BackendUnavailable, PassError
from ...ir import WEIGHTED_OPS, Graph, is_constant, save, to_proto
from ...atomic import write_text_atomic
from ...contract import (Artifact, Backend, Capabilities, Feeds, PrecisionPlan, Profile, QDQStyle, Runner, Timing,
                         parse_sparsity)
from ...ort_session import InMemoryRunner
from ...targets import Target
from .cpu import FAKE_QUANT_SESSION, cpu_profile, cpu_runner, fake_quant_session_options, write_golden
from .engines import EngineService, TensorRTEngines
from .inspector import engine_summary, node_layers
from .profiler import map_layer_times
from .rules import check_model, render, weights_not_2_4
from .settings import TensorRTSettings

__all__ = ["TensorRTBackend", "TensorRTSettings", "fake_quant_session_options"]


class TensorRTBackend(Backend):
    name = "tensorrt"

    def __init__(self, engines: EngineService | None = None):
        self.engines: EngineService = engines or TensorRTEngines()

    Settings = TensorRTSettings

    def capabilities(self, target: Target) -> Capabilities:
        settings = self.settings(target)
        ok, why = self.engines.status()
        reasons = {} if ok else {"build": why, "run": f"onnxruntime CPU emulation: {why}",
                                 "profile": f"onnxruntime CPU emulation: {why}"}
        qdq = QDQStyle(activation_dtype="int8", weight_dtype="int8", symmetric_activations=True, quantize_bias=False,
                       int8_embeddings=False, allow_dynamic=False, allow_contrib_ops=False)
        return Capabilities(backend=self.name, precisions=("fp32", "fp16", "int8", "int4w"),
                            sparsity=("2:4", "unstructured", "channels"),
                            sparse_kernels=("2:4",) if settings.sparse_weights else (), qdq=qdq,
                            can_build=ok, reasons=reasons)

    def check_deployment(self, model, *, sparsity: str | None = None) -> list:
        return check_model(model, sparsity=sparsity)

    def graph_runner(self, graph: Graph, target: Target) -> InMemoryRunner:
        """The graph in memory with the CPU fallback's numerics: Q/DQ as float fake-quantization."""
        return InMemoryRunner(graph, FAKE_QUANT_SESSION)

    def versions(self) -> dict[str, str]:
        ok, msg = self.engines.status()
        return {"tensorrt": msg if ok else "unavailable"}

    def lower(self, graph: Graph, plan: PrecisionPlan, target: Target, out_dir: Path) -> Artifact:
        settings = self.settings(target)  # before anything is written
        proto = to_proto(graph)
        sparse, dense = _sparse_layers(proto, graph, plan)
        violations = check_model(proto, sparsity="2:4" if sparse else None, sparse_nodes=sparse)
        if violations:
            raise PassError("the TensorRT-ready ONNX breaks TensorRT's explicit-quantization rules:\n"
                            + render(violations), where="tensorrt lower")
        out_dir.mkdir(parents=True, exist_ok=True)
        save(proto, out_dir / "model.onnx")
        files = {"model": "model.onnx", "golden": "golden.npz"}
        write_golden(proto, out_dir / "golden.npz")
        node_layer = node_layers(proto, _layer_ids(graph))
        info: dict = {"tensorrt_ready_onnx": True, "rules_checked": True, "sparse_layers": sorted(sparse),
                      "dense_despite_plan": dense, "node_layers": node_layer}
        ok, why = self.engines.status()
        if ok:
            try:
                result = self.engines.build(out_dir / "model.onnx", out_dir / "model.plan", settings, bool(sparse))
            except BackendUnavailable as e:  # e.g. a GPU outside the target's compute capabilities
                ok, why = False, e.render()
            else:
                files["engine"] = "model.plan"
                info.update(engine_built=True, engine_summary=engine_summary(result.layers, node_layer),
                            engine=result.to_dict())
        if not ok:
            info.update(engine_built=False, engine_reason=why)
        write_text_atomic(out_dir / "tensorrt.json", json.dumps(info, indent=2, default=str) + "\n")
        files["info"] = "tensorrt.json"
        return Artifact(directory=out_dir, backend=self.name, target=target.name, files=files, info=info)

    def load(self, artifact: Artifact, target: Target) -> Runner:
        if "engine" in artifact.files:
            return self.engines.load(artifact.path("engine"))
        return cpu_runner(artifact.path("model"))

    def profile(self, artifact: Artifact, target: Target, feeds: Feeds, *, repeats: int = 50, warmup: int = 10,
                per_layer: bool = True) -> Profile:
        if "engine" not in artifact.files:
            return cpu_profile(artifact.path("model"), feeds, repeats=repeats, warmup=warmup, per_layer=per_layer,
                               why=artifact.info.get("engine_reason", "unknown"))
        res = self.engines.profile(artifact.path("engine"), feeds, repeats, warmup, per_layer)
        timing = Timing(latency_ms=res["latency_ms"], latency_ms_spread=res.get("latency_ms_spread", 0.0),
                        p10_ms=res.get("p10_ms", 0.0), p90_ms=res.get("p90_ms", 0.0), repeats=repeats,
                        warmup=warmup, threads=1)
        layers, unmapped = map_layer_times(res.get("layers_ms", {}), res.get("layer_nodes", {}),
                                           artifact.info.get("node_layers", {}))
        return Profile(timing=timing, layers_ms=layers, unmapped_ms=unmapped,
                       info={"device": "gpu", "timer": res.get("timer", ""),
                             "with_copies_ms": res.get("with_copies_ms"), "engine_layers_ms": res.get("layers_ms", {})})


def _sparse_layers(proto: onnx.ModelProto, graph: Graph, plan: PrecisionPlan) -> tuple[set[str], dict[str, str]]:
    """(layers the plan makes 2:4 whose weights are 2:4, {layer: why dense} for the other N:M layers).

    Read from the weights themselves: a layer the pruning pass declined keeps dense weights, and
    TensorRT's SPARSE_WEIGHTS uses dense kernels there, so it is no error, only reported.
    """
    wanted, dense = set(), {}
    for name in _layer_ids(graph):
        kind, nm = parse_sparsity(plan.choice(name).sparsity)
        if kind == "nm" and nm == (2, 4):
            wanted.add(name)
        elif kind == "nm":
            dense[name] = f"{nm[0]}:{nm[1]} is not a TensorRT sparsity pattern (2:4 only)"
    dense.update(weights_not_2_4(proto, wanted))
    return wanted - set(dense), dense


def _layer_ids(graph: Graph) -> list[str]:
    """Layer ids in the lowered graph: Conv/Gemm/MatMul nodes whose weight is a constant or a DQ of one."""
    out = []
    for n in graph.main:
        if n.op_type not in WEIGHTED_OPS or n.domain != "" or len(n.inputs) < 2:
            continue
        w = n.inputs[1]
        p = w.producer() if w is not None else None
        if is_constant(w) or (p is not None and p.op_type == "DequantizeLinear" and is_constant(p.inputs[0])):
            out.append(n.name)
    return out
